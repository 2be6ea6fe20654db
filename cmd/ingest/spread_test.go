package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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
	window := 8 * time.Second
	if testing.Short() {
		window = 4 * time.Second
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	var (
		mts                      []*tierProc
		mtIngest, mtHTTP, mtDirs []string
		fes                      []*tierProc
		feIDs, feAddrs           []string
		byFirst                  = map[string][]int{} // frontends by first choice
	)
	for i := range 3 {
		dir := t.TempDir()
		ing := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		web := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		mtIngest, mtHTTP, mtDirs = append(mtIngest, ing), append(mtHTTP, web), append(mtDirs, dir)
		mts = append(mts, &tierProc{t: t, name: fmt.Sprintf("mt-%d", i), ready: regexp.MustCompile(`msg="middletier listening"`),
			args: []string{"middletier", "--id", fmt.Sprintf("mt-%d", i), "--data.dir", dir,
				"--ingest.addr", ing,
				"--consumer.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
				"--stream.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
				"--http.listen", web,
				// A durable consumer that never commits: the WAL keeps every
				// record for the check at the end.
				"--consumers", "audit"}})
	}
	// Six frontends, two whose first choice is each middletier. Rendezvous
	// hashing spreads many frontends evenly, but six given names over three
	// middletiers on random ports come out two on each only one time in
	// eight: the test takes names that do, so that what it measures is
	// where the uplinks send their traffic, not the luck of a draw.
	for i := 0; len(feIDs) < 6; i++ {
		id := fmt.Sprintf("fe-%d", i)
		first := uplink.Rank(id, mtIngest)[0]
		if len(byFirst[first]) == 2 {
			continue
		}
		byFirst[first] = append(byFirst[first], len(feIDs))
		feIDs = append(feIDs, id)
	}
	for i, id := range feIDs {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		feAddrs = append(feAddrs, addr)
		fes = append(fes, &tierProc{t: t, name: id, ready: regexp.MustCompile(`msg="frontend listening"`),
			args: []string{"frontend", "--listen", addr, "--id", id, "--drain-window", "200ms",
				"--uplink.middletiers", mtIngest[i%3] + "," + mtIngest[(i+1)%3] + "," + mtIngest[(i+2)%3],
				"--uplink.failover", "5s", "--uplink.return", "1s", "--uplink.flush-timeout", "1s"},
			env: []string{"INGEST_WAL_DIR=" + t.TempDir(), "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile}})
	}
	procs := append(append([]*tierProc{}, mts...), fes...)
	for _, p := range procs {
		p.start()
	}
	defer func() {
		if t.Failed() {
			for _, p := range procs {
				t.Logf("logs of %s (tail):\n%s", p.name, tail(p.logs.String(), 30))
			}
		}
	}()

	// Two devices per frontend, each sending every 10 ms.
	var (
		mu    sync.Mutex
		acked = map[string]map[uint64]bool{}
	)
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	var clients []*client.Client
	for d := range 2 * len(fes) {
		dev := fmt.Sprintf("dev-%02d", d)
		acked[dev] = map[uint64]bool{}
		c, err := client.Dial(context.Background(), client.Options{
			URL: "ws://" + feAddrs[d%len(fes)] + "/v1/ingest", Token: token(t, dev), Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
			OnResult: func(r client.Result) {
				if r.Err == nil {
					mu.Lock()
					acked[dev][r.N] = true
					mu.Unlock()
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		senders.Go(func() {
			for i := 1; ctx.Err() == nil; i++ {
				if _, err := c.Send(ctx, fmt.Appendf(nil, `{"id":%d,"v":%d}`, i, d)); err != nil {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}

	appended := func(i int) float64 {
		return scrape(t, mtHTTP[i], `ingest_wal_appended_entries_total{hop="middletier"}`)
	}
	connectedTo := func(fe int, ep string) bool {
		return scrape(t, feAddrs[fe], `ingest_uplink_connected{middletier="`+ep+`"}`) == 1
	}
	shares := func(what string) []float64 {
		var before, after [3]float64
		for i := range 3 {
			before[i] = appended(i)
		}
		time.Sleep(window)
		sum := 0.0
		for i := range 3 {
			after[i] = appended(i)
			sum += after[i] - before[i]
		}
		out := make([]float64, 3)
		for i := range 3 {
			out[i] = (after[i] - before[i]) / sum
		}
		t.Logf("%s: shares of the %.0f entries the middletiers took in %v: mt-0 %.3f, mt-1 %.3f, mt-2 %.3f", what, sum, window, out[0], out[1], out[2])
		return out
	}

	// Every frontend on its first choice; each middletier a third.
	for fe, id := range feIDs {
		first := uplink.Rank(id, mtIngest)[0]
		testkit.WaitFor(t, id+" on its first choice", 20*time.Second, func() bool { return connectedTo(fe, first) })
	}
	time.Sleep(time.Second) // past the first connections' catch-up
	for i, s := range shares("all three up") {
		if s < 0.8/3 || s > 1.2/3 {
			t.Errorf("mt-%d carried %.3f of the traffic, want 1/3 ±20 %%", i, s)
		}
	}

	// SIGKILL mt-0: its two frontends go to their second choices, the
	// others stay where they are.
	victim := mtIngest[0]
	mts[0].kill()
	for _, fe := range byFirst[victim] {
		second := uplink.Rank(feIDs[fe], mtIngest)[1]
		testkit.WaitFor(t, feIDs[fe]+" on its second choice", 30*time.Second, func() bool { return connectedTo(fe, second) })
	}
	for fe, id := range feIDs {
		if first := uplink.Rank(id, mtIngest)[0]; first != victim && !connectedTo(fe, first) {
			t.Errorf("%s left its first choice %s, which is up", id, first)
		}
	}
	got := shares("mt-0 down")
	if got[0] != 0 {
		t.Errorf("mt-0, killed, took %.3f of the traffic", got[0])
	}

	// Started again, mt-0 gets its frontends back.
	mts[0].start()
	for _, fe := range byFirst[victim] {
		testkit.WaitFor(t, feIDs[fe]+" back on its first choice", 30*time.Second, func() bool { return connectedTo(fe, victim) })
	}
	time.Sleep(time.Second)
	for i, s := range shares("mt-0 back") {
		if s < 0.8/3 || s > 1.2/3 {
			t.Errorf("after the restart mt-%d carried %.3f of the traffic, want 1/3 ±20 %%", i, s)
		}
	}

	stopSending()
	senders.Wait()
	for d, c := range clients {
		fctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := c.Flush(fctx); err != nil {
			t.Errorf("flush of dev-%02d: %v; %d messages without a result", d, err, c.Pending())
		}
		cancel()
		c.Close()
	}
	for i, addr := range feAddrs {
		testkit.WaitFor(t, feIDs[i]+" forwarded everything", 60*time.Second, func() bool { return queueDepth(t, addr) == 0 })
	}
	for _, p := range procs {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}

	stored := map[string]map[uint64]bool{}
	for i, dir := range mtDirs {
		for id, count := range readStream(t, filepath.Join(dir, "wal"), stored) {
			if count > 1 {
				t.Fatalf("mt-%d holds %s %d times", i, id, count)
			}
		}
	}
	nAcked := 0
	for dev, ids := range acked {
		for id := range ids {
			nAcked++
			if !stored[dev][id] {
				t.Fatalf("%s message %d was acknowledged and is in no middletier", dev, id)
			}
		}
	}
	t.Logf("%d messages acknowledged, all in a middletier's stream", nAcked)
	if nAcked < 1000 {
		t.Fatalf("only %d messages acknowledged", nAcked)
	}
}
