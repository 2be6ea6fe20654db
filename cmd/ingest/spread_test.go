package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/uplink"
)

// TestSpreadOverMiddletiers runs three middletiers and six frontends as
// processes, with devices sending at one rate through the device client.
// Each frontend forwards to its first choice among the middletiers, ranked
// by its id: each middletier carries a third of the traffic. A middletier
// SIGKILLed sends its frontends to their second choices, and once it is
// started again they come back to it. Every message a device saw
// acknowledged is in a middletier's stream, and no stream holds an entry
// twice.
func TestSpreadOverMiddletiers(t *testing.T) {
	r := startSpread(t)
	a := newAcks(deviceIDs("dev", 2*len(r.fes)))
	devices := deviceIDs("dev", 2*len(r.fes))
	// Two devices per frontend, each sending every 10 ms.
	clients := dialDevices(t, a, devices, func(d int, _ string) client.Options {
		return client.Options{URL: "ws://" + r.feAddrs[d%len(r.fes)] + "/v1/ingest", Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}
	})
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	for d, c := range clients {
		senders.Go(func() {
			sendUntil(ctx, c, 10*time.Millisecond, func(i int) []byte { return fmt.Appendf(nil, `{"id":%d,"v":%d}`, i, d) })
		})
	}

	// Every frontend on its first choice; each middletier a third.
	for fe, id := range r.feIDs {
		first := uplink.Rank(id, r.mtIngest)[0]
		testkit.WaitFor(t, id+" on its first choice", 20*time.Second, func() bool { return r.connectedTo(fe, first) })
	}
	time.Sleep(time.Second) // past the first connections' catch-up
	r.checkThirds("all three up", "")
	r.killFirstAndReturn()

	stopSending()
	senders.Wait()
	flushAll(t, clients, func(int) string { return "" })
	for i, addr := range r.feAddrs {
		testkit.WaitFor(t, r.feIDs[i]+" forwarded everything", 60*time.Second, func() bool { return queueDepth(t, addr) == 0 })
	}
	stopAll(t, r.procs...)
	stored := map[string]map[uint64]bool{}
	for _, m := range r.mts {
		storedOnce(t, m, stored)
	}
	nAcked := checkAckedStored(t, a.snapshot(), stored, "any middletier")
	t.Logf("%d messages acknowledged, all in a middletier's stream", nAcked)
	if nAcked < 1000 {
		t.Fatalf("only %d messages acknowledged", nAcked)
	}
}

// spread is three middletiers and six frontends as processes, two of the
// frontends ranking each middletier first.
type spread struct {
	t              *testing.T
	window         time.Duration // how long a share is measured over
	mts            []*mtProc
	mtIngest       []string
	fes            []*tierProc
	feIDs, feAddrs []string
	byFirst        map[string][]int // frontends by first choice
	procs          []*tierProc
}

func startSpread(t *testing.T) *spread {
	r := &spread{t: t, window: 8 * time.Second, byFirst: map[string][]int{}}
	if testing.Short() {
		r.window = 4 * time.Second
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		// A durable consumer that never commits: the WAL keeps every
		// record for the check at the end.
		m := middletierProc(t, fmt.Sprintf("mt-%d", i), t.TempDir(), "--consumers", "audit")
		r.mts, r.mtIngest = append(r.mts, m), append(r.mtIngest, m.ingest)
		r.procs = append(r.procs, m.tierProc)
	}
	// Six frontends, two whose first choice is each middletier. Rendezvous
	// hashing spreads many frontends evenly, but six given names over three
	// middletiers on random ports come out two on each only one time in
	// eight: the test takes names that do, so that what it measures is
	// where the uplinks send their traffic, not the luck of a draw.
	for i := 0; len(r.feIDs) < 6; i++ {
		id := fmt.Sprintf("fe-%d", i)
		first := uplink.Rank(id, r.mtIngest)[0]
		if len(r.byFirst[first]) == 2 {
			continue
		}
		r.byFirst[first] = append(r.byFirst[first], len(r.feIDs))
		r.feIDs = append(r.feIDs, id)
	}
	for i, id := range r.feIDs {
		addr := loopback(t)
		r.feAddrs = append(r.feAddrs, addr)
		fe := frontendProc(t, id, addr, t.TempDir(), secretFile,
			"--uplink.middletiers", r.mtIngest[i%3]+","+r.mtIngest[(i+1)%3]+","+r.mtIngest[(i+2)%3],
			"--uplink.failover", "5s", "--uplink.return", "1s", "--uplink.flush-timeout", "1s")
		r.fes, r.procs = append(r.fes, fe), append(r.procs, fe)
	}
	for _, p := range r.procs {
		p.start()
	}
	logsOnFailure(t, 30, r.procs...)
	return r
}

// connectedTo says whether frontend fe's uplink is connected to ep.
func (r *spread) connectedTo(fe int, ep string) bool {
	return scrape(r.t, r.feAddrs[fe], `ingest_uplink_connected{middletier="`+ep+`"}`) == 1
}

// shares measures what part of the entries the middletiers appended over
// the window each one took.
func (r *spread) shares(what string) []float64 {
	appended := func(i int) float64 {
		return scrape(r.t, r.mts[i].http, `ingest_wal_appended_entries_total{hop="middletier"}`)
	}
	var before, after [3]float64
	for i := range 3 {
		before[i] = appended(i)
	}
	time.Sleep(r.window) // the span measured over, not a wait for a condition
	sum := 0.0
	for i := range 3 {
		after[i] = appended(i)
		sum += after[i] - before[i]
	}
	out := make([]float64, 3)
	for i := range 3 {
		out[i] = (after[i] - before[i]) / sum
	}
	r.t.Logf("%s: shares of the %.0f entries the middletiers took in %v: mt-0 %.3f, mt-1 %.3f, mt-2 %.3f", what, sum, r.window, out[0], out[1], out[2])
	return out
}

// checkThirds fails the test unless each middletier carries 1/3 ±20 % of
// the traffic.
func (r *spread) checkThirds(what, when string) {
	for i, s := range r.shares(what) {
		if s < 0.8/3 || s > 1.2/3 {
			r.t.Errorf("%smt-%d carried %.3f of the traffic, want 1/3 ±20 %%", when, i, s)
		}
	}
}

// killFirstAndReturn SIGKILLs mt-0: its two frontends go to their second
// choices, the others stay where they are; started again, it gets its
// frontends back and its third of the traffic.
func (r *spread) killFirstAndReturn() {
	t := r.t
	victim := r.mtIngest[0]
	r.mts[0].kill()
	for _, fe := range r.byFirst[victim] {
		second := uplink.Rank(r.feIDs[fe], r.mtIngest)[1]
		testkit.WaitFor(t, r.feIDs[fe]+" on its second choice", 30*time.Second, func() bool { return r.connectedTo(fe, second) })
	}
	for fe, id := range r.feIDs {
		if first := uplink.Rank(id, r.mtIngest)[0]; first != victim && !r.connectedTo(fe, first) {
			t.Errorf("%s left its first choice %s, which is up", id, first)
		}
	}
	if got := r.shares("mt-0 down"); got[0] != 0 {
		t.Errorf("mt-0, killed, took %.3f of the traffic", got[0])
	}
	r.mts[0].start()
	for _, fe := range r.byFirst[victim] {
		testkit.WaitFor(t, r.feIDs[fe]+" back on its first choice", 30*time.Second, func() bool { return r.connectedTo(fe, victim) })
	}
	time.Sleep(time.Second) // past the returned connections' catch-up
	r.checkThirds("mt-0 back", "after the restart ")
}
