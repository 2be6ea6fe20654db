package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// TestStorageSyncsTSDBBeforeCommit runs a storage writer process under
// strace against a real middletier and proves, from its system calls, that
// every write to the embedded TSDB's write logs (the WAL and the
// write-behind log of out-of-order samples) is fsynced before the writer
// sends the commit that lets the middletier release the records behind it:
// between the write and the send of every later commit on the consumer
// socket there is an fsync (or fdatasync) of the same segment file; and a
// segment file created before a commit has its directory fsynced in
// between too. A power loss after the middletier has released records then
// loses none of their samples.
func TestStorageSyncsTSDBBeforeCommit(t *testing.T) {
	strace := testkit.Tool(t, "strace", "strace")
	mt, st, ingest, httpAddr := storageTiers(t)
	mt.start()
	t.Cleanup(func() {
		if err := mt.stop(); err != nil {
			t.Error(err)
		}
	})
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s\n%s", tail(mt.logs.String(), 30), tail(st.logs.String(), 30))
		}
	}()
	dataDir := flagValue(t, st.args, "--data.dir")
	consumer := strings.TrimPrefix(envValue(t, st.env, "INGEST_MIDDLETIERS_CONSUMER"), "tcp://")
	trace := filepath.Join(t.TempDir(), "trace")

	// The writer, traced: only the calls that matter, filtered in the
	// kernel (--seccomp-bpf) so that the writer runs at a useful speed.
	st.wrap = []string{strace, "-f", "-qq", "--seccomp-bpf", "-yy", "-x", "-s", "16", "-o", trace,
		"-e", "trace=openat,fsync,fdatasync,sync_file_range,write,writev,pwrite64,sendto,sendmsg"}
	st.start()
	cmd, done := st.cmd, st.done
	stopped := false
	defer func() {
		if !stopped {
			st.kill() // strace, which kills the writer it started
		}
	}()

	// Rounds of messages with pauses, so that the writer commits many
	// times; the second half goes 10 minutes back in device time, so that
	// its samples go in out of order, into the write-behind log.
	feeder := newMTFeeder(t, ingest)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	const n = 2000
	for i := 1; i <= n; i += 200 {
		b := base
		if i > n/2 {
			b = base.Add(-10 * time.Minute)
		}
		feeder.send(i, i+200, b)
		time.Sleep(30 * time.Millisecond)
	}
	deadline := time.Now().Add(60 * time.Second)
	for promQuery(httpAddr, `sum(count_over_time(n[2h]))`, base.Add(time.Minute)) != strconv.Itoa(n) {
		if time.Now().After(deadline) {
			t.Fatalf("store holds %q samples of n, want %d", promQuery(httpAddr, `sum(count_over_time(n[2h]))`, base.Add(time.Minute)), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// SIGTERM to the writer itself (strace's child): it sends its last
	// commit and closes.
	writer := traceeOf(t, cmd.Process.Pid)
	if err := syscall.Kill(writer, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("traced storage writer did not stop on SIGTERM")
	}
	stopped = true
	if !cmd.ProcessState.Success() {
		t.Errorf("traced storage writer exited with %v", cmd.ProcessState)
	}

	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	calls := parseStrace(string(b))
	if err := checkSyncedBeforeCommit(calls, dataDir, consumer, t.Logf); err != nil {
		t.Fatal(err)
	}
}

// checkSyncedBeforeCommit checks a trace of a storage writer whose TSDB is
// in dataDir and whose middletier's consumer socket is at consumer
// (host:port): before each commit sent there, every write-log write that
// ended before it has an fsync of its file that began after the write
// ended and ended before the send began, and every write-log segment
// created before it has its directory fsynced in between.
func checkSyncedBeforeCommit(calls []straceCall, dataDir, consumer string, logf func(string, ...any)) error {
	wal, wbl := filepath.Join(dataDir, "wal"), filepath.Join(dataDir, "wbl")
	isSegment := func(path string) bool {
		dir, name := filepath.Split(path)
		dir = filepath.Clean(dir)
		return (dir == wal || dir == wbl) && regexp.MustCompile(`^\d{8}$`).MatchString(name)
	}
	// A commit: a send to the consumer socket of a message of kind 7
	// (wire: magic 0xD7, version 1, kind).
	isCommit := func(c straceCall) bool {
		return (c.name == "write" || c.name == "writev" || c.name == "sendto" || c.name == "sendmsg") &&
			strings.HasPrefix(c.fd, "TCP:[") && strings.HasSuffix(c.fd, "->"+consumer+"]") &&
			strings.Contains(c.args, `\xd7\x01\x07`)
	}
	isSync := func(c straceCall) bool { return c.name == "fsync" || c.name == "fdatasync" }
	var (
		writes, creates, syncs []straceCall
		commits, checked       int
		walWrites, wblWrites   int
	)
	for _, c := range calls {
		switch {
		case c.name == "openat" && isSegment(c.path) && strings.Contains(c.args, "O_CREAT") && !strings.HasPrefix(c.ret, "-"):
			creates = append(creates, c)
		case (c.name == "write" || c.name == "writev" || c.name == "pwrite64") && isSegment(c.fd) && c.ret != "0" && !strings.HasPrefix(c.ret, "-"):
			writes = append(writes, c)
		case isSync(c) && c.ret == "0":
			syncs = append(syncs, c)
		case isCommit(c):
			commits++
			// Every write that ended before this send began.
			for _, w := range writes {
				if w.end > c.start {
					continue
				}
				covered := false
				for _, s := range syncs {
					if s.fd == w.fd && s.start > w.end && s.end < c.start {
						covered = true
						break
					}
				}
				if !covered {
					return fmt.Errorf("commit sent (trace line %d) after a write to %s (line %d) with no fsync of it in between", c.start, w.fd, w.end)
				}
				checked++
				if filepath.Dir(w.fd) == wal {
					walWrites++
				} else {
					wblWrites++
				}
			}
			for _, cr := range creates {
				dir := filepath.Dir(cr.path)
				covered := false
				for _, s := range syncs {
					if s.fd == dir && s.start > cr.end && s.end < c.start {
						covered = true
						break
					}
				}
				if !covered {
					return fmt.Errorf("commit sent (trace line %d) after %s was created (line %d) with no fsync of %s in between", c.start, cr.path, cr.end, dir)
				}
			}
			// Those are proven for this commit; the next needs only newer ones.
			writes, creates = writes[:0], creates[:0]
		}
	}
	logf("%d commits sent; %d write-log writes (%d WAL, %d out-of-order WBL) each fsynced before the next commit", commits, checked, walWrites, wblWrites)
	switch {
	case commits == 0:
		return fmt.Errorf("no commit to %s in the trace", consumer)
	case walWrites == 0:
		return fmt.Errorf("no write to %s before a commit in the trace", wal)
	case wblWrites == 0:
		return fmt.Errorf("no write to %s before a commit in the trace: the out-of-order samples were not exercised", wbl)
	}
	return nil
}

// straceCall is one system call in an strace -f -yy trace; start and end
// are the lines (in trace order) where it began and returned.
type straceCall struct {
	name       string
	fd         string // the first argument's path, with -yy ("" if none)
	path       string // openat's path
	args, ret  string
	start, end int
}

var (
	straceStart   = regexp.MustCompile(`^(\d+) +(\w+)\((.*)$`)
	straceResumed = regexp.MustCompile(`^(\d+) +<\.\.\. (\w+) resumed>(.*)$`)
	straceRet     = regexp.MustCompile(`\) += (-?\d+)`)
	straceFD      = regexp.MustCompile(`^-?\d+<(TCP:\[[^\]]*\]|UDP:\[[^\]]*\]|[^>]*)>`)
	straceOpenat  = regexp.MustCompile(`^[^,]*, "((?:[^"\\]|\\.)*)"`)
)

// parseStrace reads strace -f output, pairing unfinished and resumed calls
// by thread.
func parseStrace(s string) []straceCall {
	var calls []straceCall
	pending := map[string]*straceCall{}
	finish := func(c *straceCall, rest string, line int) {
		c.end = line
		if m := straceRet.FindStringSubmatch(rest); m != nil {
			c.ret = m[1]
		} else {
			c.ret = "?"
		}
		calls = append(calls, *c)
	}
	for i, line := range strings.Split(s, "\n") {
		if m := straceResumed.FindStringSubmatch(line); m != nil {
			if c := pending[m[1]]; c != nil && c.name == m[2] {
				delete(pending, m[1])
				c.args += m[3]
				finish(c, m[3], i)
			}
			continue
		}
		m := straceStart.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		c := &straceCall{name: m[2], args: m[3], start: i}
		if fm := straceFD.FindStringSubmatch(c.args); fm != nil {
			c.fd = fm[1]
		}
		if c.name == "openat" {
			if om := straceOpenat.FindStringSubmatch(c.args); om != nil {
				c.path = unescapeStrace(om[1])
			}
		}
		if strings.HasSuffix(line, "<unfinished ...>") {
			pending[m[1]] = c
			continue
		}
		finish(c, c.args, i)
	}
	return calls
}

// unescapeStrace decodes the \xNN escapes strace -x prints in a string
// that is not all printable.
func unescapeStrace(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// traceeOf returns the process strace (pid) started.
func traceeOf(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			child, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatal(err)
			}
			return child
		}
		if time.Now().After(deadline) {
			t.Fatalf("strace (pid %d) has no child", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	t.Fatalf("no %s in %q", name, args)
	return ""
}

func envValue(t *testing.T, env []string, name string) string {
	t.Helper()
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, name+"="); ok {
			return v
		}
	}
	t.Fatalf("no %s in %q", name, env)
	return ""
}
