package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/internal/tmpfs"
)

// TestDiskFull runs a frontend and a middletier as processes, with devices
// streaming through the device client, and fills the disk under one tier's
// WAL (a small tmpfs) for a while, then frees it. A full disk is
// backpressure: the tier stays healthy, the frontend's devices are told
// overloaded (its own disk) or the frontend is answered busy and keeps the
// entries (the middletier's), and both go on by themselves once there is
// room. At the end every message a device saw acknowledged is in the
// middletier's WAL exactly once.
func TestDiskFull(t *testing.T) {
	for _, full := range []string{"frontend", "middletier"} {
		t.Run(full, func(t *testing.T) { testDiskFull(t, full) })
	}
}

func testDiskFull(t *testing.T, full string) {
	mount := tmpfs.Mount(t, 24<<20)
	mtDir, feDir := t.TempDir(), t.TempDir()
	if full == "middletier" {
		mtDir = filepath.Join(mount, "mt")
	} else {
		feDir = filepath.Join(mount, "fe")
	}
	// A durable consumer that never commits: the WAL keeps every record
	// for the check at the end.
	mt := middletierProc(t, "mt-0", mtDir, "--wal.segment-bytes", "262144", "--consumers", "audit")
	feAddr := loopback(t)
	fe := frontendProc(t, "fe-0", feAddr, feDir, writeSecret(t),
		"--uplink.middletiers", mt.ingest, "--uplink.flush-timeout", "1s", "--wal.segment-bytes", "262144")
	mt.start()
	fe.start()
	logsOnFailure(t, 40, mt.tierProc, fe)
	feURL, mtURL := "http://"+feAddr, "http://"+mt.http
	tierURL := map[string]string{"frontend": feURL, "middletier": mtURL}[full]

	const devices = 16
	ids := deviceIDs("dev", devices)
	acked := newAcks(ids)
	clients := dialDevices(t, acked, ids, func(int, string) client.Options {
		return client.Options{URL: "ws://" + feAddr + "/v1/ingest", Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	})
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	pad := strings.Repeat("x", 200)
	for d, c := range clients {
		senders.Go(func() {
			sendUntil(ctx, c, 10*time.Millisecond, func(i int) []byte { return fmt.Appendf(nil, `{"id":%d,"v":%d,"pad":%q}`, i, d, pad) })
		})
	}
	defer func() {
		stopSending()
		senders.Wait()
	}()
	testkit.WaitFor(t, "devices acknowledged", 30*time.Second, func() bool { return acked.count() > 500 })

	fillFor(t, mount, full, tierURL, func() { refusedWhileFull(t, full, feURL, mtURL, devices) })
	before := acked.count()
	t.Logf("%d messages acknowledged when the disk was freed", before)
	testkit.WaitFor(t, "acknowledgements again", 60*time.Second, func() bool { return acked.count() > before+1000 })
	testkit.WaitFor(t, "the no-space gauge cleared", 60*time.Second, func() bool {
		return metricOf(tierURL, "ingest_wal_no_space", `hop="`+full+`"`) == 0
	})
	stopSending()
	senders.Wait()

	flushAll(t, clients, func(int) string { return "" })
	testkit.WaitFor(t, "the frontend's WAL forwarded", 60*time.Second, func() bool { return queueDepth(t, feAddr) == 0 })
	overloaded := metricOf(feURL, "ingest_frontend_messages_rejected_total", `code="overloaded"`)
	busy := metricOf(mtURL, "ingest_middletier_busy_total", "")
	stopAll(t, fe, mt.tierProc)

	stored := map[string]map[uint64]bool{}
	n := storedOnce(t, mt, stored)
	nAcked := checkAckedStored(t, acked.snapshot(), stored, "the middletier")
	if n != nAcked {
		t.Fatalf("%d records in the middletier, %d messages acknowledged: each must be there once", n, nAcked)
	}
	t.Logf("%d messages acknowledged, each in the middletier once; %v messages answered overloaded, %v batches busy", nAcked, overloaded, busy)
}

// refusedWhileFull waits, while the disk under tier's WAL is full, until
// devices (or the frontend) have been refused, retried after the hint and
// been refused again, more than once; and checks that neither tier is
// unhealthy: a full disk is not a failure.
func refusedWhileFull(t *testing.T, tier, feURL, mtURL string, devices int) {
	t.Helper()
	if tier == "frontend" {
		testkit.WaitFor(t, "devices answered overloaded, again and again", 60*time.Second, func() bool {
			return metricOf(feURL, "ingest_frontend_messages_rejected_total", `code="overloaded"`) > float64(3*devices)
		})
	} else {
		testkit.WaitFor(t, "the frontend answered busy, again and again", 60*time.Second, func() bool {
			return metricOf(mtURL, "ingest_middletier_busy_total", "") > 20
		})
	}
	for _, u := range []string{feURL, mtURL} {
		if s := httpStatus(t, u+"/healthz"); s != http.StatusOK {
			t.Fatalf("%s/healthz %d on a full disk, want 200", u, s)
		}
	}
}

// fillFor fills the disk at mount until the WAL of tier (its metrics at
// tierURL) is out of room, keeps it full while during runs (the WAL's own
// truncation, or a spare given up, may free a little), checks that the WAL
// did not fail, and frees the disk.
func fillFor(t *testing.T, mount, tier, tierURL string, during func()) {
	t.Helper()
	filler := tmpfs.Fill(t, mount)
	stopFill := make(chan struct{})
	var filling sync.WaitGroup
	filling.Go(func() {
		for {
			select {
			case <-stopFill:
				return
			case <-time.After(50 * time.Millisecond):
				tmpfs.Fill(t, mount)
			}
		}
	})
	hop := `hop="` + tier + `"`
	testkit.WaitFor(t, "the "+tier+" WAL out of room", 60*time.Second, func() bool {
		return metricOf(tierURL, "ingest_wal_no_space", hop) == 1
	})
	during()
	if metricOf(tierURL, "ingest_wal_failed", hop) != 0 {
		t.Fatal("the WAL failed on a full disk")
	}
	close(stopFill)
	filling.Wait()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
}

// metricOf returns the value of the first sample of name whose labels
// contain label (any, if empty) at base/metrics, or -1.
func metricOf(base, name, label string) float64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllSubmatch(b, -1) {
		if label != "" && !strings.Contains(string(m[1]), label) {
			continue
		}
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		return v
	}
	return -1
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDiskFullCommands: a middletier with a command home, its volume full
// (as when its own WAL fills it). A command submitted meanwhile finds no
// room for the home's log: the home waits for room, the middletier stays
// up and healthy, and the same submit (its idempotency key) is accepted
// once the disk is freed. Before, the home's append failed and stopped the
// whole middletier process.
func TestDiskFullCommands(t *testing.T) {
	mount := tmpfs.Mount(t, 24<<20)
	// Without preallocation every append needs new room.
	mt, fe, addr := commandPair(t, filepath.Join(mount, "mt"), 40, "--wal.no-preallocate")
	defer stopAll(t, fe, mt.tierProc)
	a := newCommandAPI(t, []string{addr})
	mtURL := "http://" + mt.http
	body := func(key string) map[string]any {
		return map[string]any{"name": "set", "payload": map[string]any{"pad": strings.Repeat("x", 4<<10)}, "idempotency_key": key}
	}
	if st := a.do(0, "POST", "/v1/devices/d1/commands", body("before"), nil); st != http.StatusAccepted {
		t.Fatalf("submit before the disk filled: HTTP %d", st)
	}
	filler := tmpfs.Fill(t, mount)
	st := a.do(0, "POST", "/v1/devices/d1/commands", body("during"), nil)
	t.Logf("a submit on the full disk: HTTP %d", st)
	testkit.WaitFor(t, "the command log out of room", 20*time.Second, func() bool {
		return metricOf(mtURL, "ingest_wal_no_space", `hop="command"`) == 1
	})
	time.Sleep(2 * time.Second) // a while full
	if s := httpStatus(t, mtURL+"/healthz"); s != http.StatusOK {
		t.Fatalf("middletier /healthz %d on a full disk, want 200", s)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	var c downlink.CommandJSON
	testkit.WaitFor(t, "the submit accepted once there is room", 30*time.Second, func() bool {
		return a.do(0, "POST", "/v1/devices/d1/commands", body("during"), &c) == http.StatusAccepted
	})
	var list struct{ Commands []downlink.CommandJSON }
	if st := a.do(0, "GET", "/v1/devices/d1/commands", nil, &list); st != http.StatusOK || len(list.Commands) != 2 {
		t.Fatalf("list: HTTP %d, %d commands, want 2", st, len(list.Commands))
	}
}
