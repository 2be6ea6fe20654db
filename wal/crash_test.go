package wal_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testchild"
	"github.com/ingest-io/ingest/wal"
)

const crashChildEnv = "INGEST_WAL_CRASH_CHILD"

// crashPayload is the content the child appends for (round, writer, seq).
// Its length varies so that batches straddle segment boundaries unevenly.
func crashPayload(round, writer, seq int) []byte {
	head := fmt.Sprintf("r%d w%d s%d|", round, writer, seq)
	n := (round*7919 + writer*104729 + seq*31) % 400
	return append([]byte(head), bytes.Repeat([]byte{byte('a' + seq%26)}, n)...)
}

// crashChild runs in a child process: it appends from many goroutines and
// prints every acknowledged entry as "A round writer seq index" on stdout,
// and consumes and releases entries as "R upTo", until it is killed.
func crashChild(dir string) int {
	round, _ := strconv.Atoi(os.Getenv("INGEST_WAL_CRASH_ROUND"))
	l, err := wal.Open(dir, crashOptions, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format, args...) // unbuffered: acked lines reach the parent before a kill
	}
	say("ready\n")
	for w := range 16 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			for seq := 0; ; {
				n := 1
				if w%2 == 0 {
					n = 1 + rng.IntN(8) // half the writers append batches
				}
				batch := make([][]byte, n)
				for i := range batch {
					batch[i] = crashPayload(round, w, seq+i)
				}
				first, err := l.AppendBatch(context.Background(), batch)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
				for i := range batch {
					say("A %d %d %d %d\n", round, w, seq+i, first+uint64(i))
				}
				seq += n
			}
		}()
	}
	// A consumer that releases what it has read, every few hundred entries,
	// so that truncation runs while the process may die.
	c, err := l.Cursor(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for {
		es, err := c.NextBatch(context.Background(), nil, 300)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		upTo := es[len(es)-1].Index
		say("R %d\n", upTo) // before the release, so the parent never hears of it late
		if err := l.Release(upTo); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
	}
}

var crashOptions = wal.Options{Hop: "crash", SegmentBytes: 64 << 10}

type acked struct {
	round, writer, seq int
}

// TestCrash kills a process that appends from many goroutines at random
// moments, again and again, and checks after each kill that every entry it
// saw acknowledged is present, intact and in order.
func TestCrash(t *testing.T) {
	kills := 50
	if testing.Short() {
		kills = 10
	}
	dir := t.TempDir()
	byIndex := map[uint64]acked{}
	var maxReleased uint64
	var repairs float64
	total := 0
	for round := range kills {
		cmd, sc, stderr := testchild.Start(t, nil, fmt.Sprintf("round %d", round), "ready",
			crashChildEnv+"="+dir, "INGEST_WAL_CRASH_ROUND="+strconv.Itoa(round))
		timer := time.AfterFunc(time.Duration(5+rand.IntN(150))*time.Millisecond, func() { cmd.Process.Kill() })
		lastByWriter := map[int]uint64{}
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 5 && f[0] == "A":
				var a acked
				var idx uint64
				fmt.Sscanf(sc.Text(), "A %d %d %d %d", &a.round, &a.writer, &a.seq, &idx)
				if prev, ok := byIndex[idx]; ok {
					t.Fatalf("index %d acknowledged twice: %+v and %+v", idx, prev, a)
				}
				if idx <= lastByWriter[a.writer] {
					t.Fatalf("writer %d acknowledged %d after %d", a.writer, idx, lastByWriter[a.writer])
				}
				lastByWriter[a.writer] = idx
				byIndex[idx] = a
				total++
			case len(f) == 2 && f[0] == "R":
				n, _ := strconv.ParseUint(f[1], 10, 64)
				maxReleased = max(maxReleased, n)
			}
		}
		timer.Stop()
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
			t.Fatalf("round %d: child ended with %v, not by the kill: %s", round, err, stderr.String())
		}

		reg := prometheus.NewRegistry()
		l, err := wal.Open(dir, crashOptions, reg, nil)
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		repairs += metricValue(t, reg, "ingest_wal_repairs_total", "crash")
		first := l.FirstIndex()
		if first > maxReleased+1 {
			t.Fatalf("round %d: first entry %d, but only %d was ever released", round, first, maxReleased)
		}
		if l.Released() > maxReleased {
			t.Fatalf("round %d: release mark %d beyond what was released (%d)", round, l.Released(), maxReleased)
		}
		present := map[uint64][]byte{}
		for _, e := range readAll(t, l, first) {
			present[e.Index] = e.Data
		}
		for idx, a := range byIndex {
			if idx < first {
				continue // released and truncated
			}
			got, ok := present[idx]
			if !ok {
				t.Fatalf("round %d: acknowledged entry %d (%+v) missing; log holds %d..%d", round, idx, a, first, l.LastIndex())
			}
			if want := crashPayload(a.round, a.writer, a.seq); !bytes.Equal(got, want) {
				t.Fatalf("round %d: entry %d holds %q, want %q", round, idx, got, want)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		for idx := range byIndex {
			if idx < first {
				delete(byIndex, idx)
			}
		}
	}
	if total < kills*10 {
		t.Fatalf("only %d entries acknowledged over %d kills", total, kills)
	}
	t.Logf("%d kills, %d acknowledged entries checked, %v torn tails repaired", kills, total, repairs)
}
