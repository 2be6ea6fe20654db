package command_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/internal/tmpfs"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// snapshot copies the home's WAL directory as a crash (SIGKILL) would leave
// it: the home is idle (its last reply came after its last append), and the
// release mark is whatever the WAL's releaser has made durable so far.
func snapshot(t *testing.T, src, dst string) bool {
	for range 5 {
		os.RemoveAll(dst)
		if err := os.CopyFS(dst, os.DirFS(src)); err == nil {
			return true
		}
	}
	return false
}

// TestCrashAfterCompaction: a home whose process dies within a
// MarkInterval (1 s) of a round's compaction restarts with every entry
// released since the last durable mark unreleased again, and its log may
// hold more than its bound; the home then compacts into that log (its
// append supersedes what it releases: wal.Log.AppendReplacing). The home
// never stops on a log it filled itself: a restart on the fullest of the
// crash states taken serves. Before, the compaction found the log full and
// the home stopped at every restart.
func TestCrashAfterCompaction(t *testing.T) {
	const bound = 1 << 20
	wo := wal.Options{MaxBytes: bound, SegmentBytes: 32 << 10}
	th := startHome(t, command.Options{Retain: time.Nanosecond, MaxInFlight: 64}, wo)
	fe := dialFrontend(t, th, "fe#1")
	fe.submit(t, wire.Submit{Device: "parked", Name: "waits"}) // a device not connected: one command kept open
	fe.place(t, "d1", 1)
	payload := []byte(`"` + strings.Repeat("x", 16<<10-2) + `"`)
	snaps := t.TempDir()
	var dirs []string
	deadline := time.Now().Add(4 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		var ids []string
		for {
			r := fe.ask(t, &wire.Submit{Device: "d1", Name: "big", Payload: payload})
			if r.Code == wire.CodeFull {
				break
			}
			if r.Code != "" {
				t.Fatalf("submit: %+v", r)
			}
			ids = append(ids, r.Commands[0].ID)
		}
		for range ids {
			c := fe.deliverFor(t, "d1")
			fe.p.Send(t, &wire.Result{Device: "d1", CID: c.ID, Status: "ok"})
		}
		fe.get(t, "nothing") // its reply follows the answers' append
		d := filepath.Join(snaps, "s"+string(rune('a'+i%26))+strings.Repeat("z", i/26))
		if snapshot(t, th.Dir, d) {
			dirs = append(dirs, d)
		}
	}
	th.Stop(t)
	// The crash state that holds the most.
	worst, most := "", int64(0)
	for _, d := range dirs {
		l, err := wal.Open(d, wal.Options{Hop: "check", MaxBytes: bound, SegmentBytes: 32 << 10}, nil, nil)
		if err != nil {
			continue
		}
		if _, b := l.Depth(); b > most {
			worst, most = d, b
		}
		l.Close()
	}
	t.Logf("%d crash states; the fullest holds %d unreleased bytes of a bound of %d", len(dirs), most, bound)
	wo.Hop = "command"
	l, err := wal.Open(worst, wo, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	h, err := command.New(command.Options{ID: "home-2", Addr: "tcp://127.0.0.1:0", Retain: time.Nanosecond}, l, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := h.Run(ctx); err != nil {
		t.Fatalf("home restarted after a crash stopped on its own log: %v", err)
	}
}

// runHomeOn runs a home over the WAL in dir with bound maxBytes until the
// returned stop is called.
func runHomeOn(t *testing.T, dir string, maxBytes int64) (addr string, reg *prometheus.Registry, l *wal.Log, stop func()) {
	t.Helper()
	reg = prometheus.NewRegistry()
	l, err := wal.Open(dir, wal.Options{Hop: "command", MaxBytes: maxBytes, SegmentBytes: 64 << 10}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := command.New(command.Options{ID: "home-1", Addr: "tcp://127.0.0.1:0", Redeliver: time.Minute, PresenceTimeout: time.Minute}, l, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.Run(ctx) }()
	return h.Addr(), reg, l, func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("home: %v", err)
		}
		h.Close()
		l.Close()
	}
}

// TestLoweredBound: a home with 0.9 MiB kept, restarted with its bound
// lowered from 4 MiB to 1.5 MiB (its kept commands half the new bound or
// more), serves: its compaction supersedes what it releases. Before, the
// compaction (the kept commands again, on top of what the log held) did not
// fit, and the first round stopped the home, at every restart.
func TestLoweredBound(t *testing.T) {
	dir := t.TempDir()
	addr, _, _, stop := runHomeOn(t, dir, 4<<20)
	fe := &frontend{p: testkit.Dealer(t, addr, "fe#1")}
	fe.place(t, "d1", 1)
	result := []byte(`"` + strings.Repeat("r", 15<<10) + `"`)
	for i := range 60 {
		c := fe.submit(t, wire.Submit{Device: "d1", Name: "n", Key: fmt.Sprint(i)})
		if d := fe.deliverFor(t, "d1"); d.ID != c.ID {
			t.Fatalf("delivered %+v", d)
		}
		fe.p.Send(t, &wire.Result{Device: "d1", CID: c.ID, Status: "ok", Payload: result})
		fe.waitState(t, c.ID, wire.StateAcknowledged)
	}
	var open []string
	for i := range 4 {
		open = append(open, fe.submit(t, wire.Submit{Device: "d2", Name: "later", Key: fmt.Sprint(i)}).ID)
	}
	stop()

	// The bound lowered, still above what the log holds.
	addr, reg, l, stop := runHomeOn(t, dir, 3<<19)
	defer stop()
	_, held := l.Depth()
	t.Logf("the log holds %d bytes of a bound of %d", held, 3<<19)
	fe = &frontend{p: testkit.Dealer(t, addr, "fe#2")}
	time.Sleep(300 * time.Millisecond)
	before := testkit.Metric(t, reg, "ingest_command_compactions_total")
	fe.place(t, "d2", 1)
	for _, id := range open {
		if d := fe.deliverFor(t, "d2"); d.ID != id {
			t.Fatalf("delivered %+v", d)
		}
		fe.p.Send(t, &wire.Result{Device: "d2", CID: id, Status: "ok", Payload: result})
		fe.waitState(t, id, wire.StateAcknowledged)
	}
	_, after := l.Depth()
	if n := testkit.Metric(t, reg, "ingest_command_compactions_total") - before; n > 1 {
		t.Fatalf("%v compactions, each rewriting every kept command (%d bytes held after), for 4 answers", n, after)
	}
}

// TestDiskFull: a home whose log's disk is full (the middletier's WAL, on
// the same volume, filled it) holds its round until there is room, and
// then answers every submit sent meanwhile: a full disk is backpressure,
// as for the middletier's own WAL, and the home never stops on it (its Run
// returning stops the whole middletier).
func TestDiskFull(t *testing.T) {
	mount := tmpfs.Mount(t, 4<<20)
	dir := filepath.Join(mount, "commands")
	addr, reg, _, stop := runHomeOn(t, dir, 64<<20)
	defer stop()
	fe := &frontend{p: testkit.Dealer(t, addr, "fe#1")}
	fe.submit(t, wire.Submit{Device: "d1", Name: "before"})
	filler := tmpfs.Fill(t, mount)
	// More than the log's segment and its spare: the append needs room.
	payload := []byte(`"` + strings.Repeat("x", 2<<10) + `"`)
	const n = 100
	for i := range n {
		fe.p.Send(t, &wire.Submit{Req: uint64(i + 1), Device: "d1", Name: "during", Payload: payload, Key: fmt.Sprint(i)})
	}
	testkit.WaitFor(t, "the home's log out of room", 10*time.Second, func() bool {
		return testkit.Metric(t, reg, "ingest_wal_no_space", "hop", "command") == 1
	})
	time.Sleep(1500 * time.Millisecond) // a while full: the WAL tries again after a second
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for answered := 0; answered < n; {
		switch m := fe.next(t).(type) {
		case *wire.Reply:
			if m.Code != "" || len(m.Commands) != 1 {
				t.Fatalf("submit %d answered %+v", m.Req, m)
			}
			answered++
		}
	}
	if ids := fe.list(t, "d1", 0); len(ids) != n+1 {
		t.Fatalf("%d commands kept, want %d", len(ids), n+1)
	}
}
