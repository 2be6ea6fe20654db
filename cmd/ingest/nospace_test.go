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
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	mtDir, feDir := t.TempDir(), t.TempDir()
	if full == "middletier" {
		mtDir = filepath.Join(mount, "mt")
	} else {
		feDir = filepath.Join(mount, "fe")
	}
	mtIngest := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	mtHTTP := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	feAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	mt := &tierProc{t: t, name: "mt", ready: regexp.MustCompile(`msg="middletier listening"`),
		args: []string{"middletier", "--id", "mt-0", "--data.dir", mtDir, "--ingest.addr", mtIngest,
			"--consumer.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			"--stream.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			"--http.listen", mtHTTP, "--wal.segment-bytes", "262144",
			// A durable consumer that never commits: the WAL keeps every
			// record for the check at the end.
			"--consumers", "audit"}}
	fe := &tierProc{t: t, name: "fe", ready: regexp.MustCompile(`msg="frontend listening"`),
		args: []string{"frontend", "--listen", feAddr, "--id", "fe-0", "--drain-window", "200ms",
			"--uplink.middletiers", mtIngest, "--uplink.flush-timeout", "1s", "--wal.segment-bytes", "262144"},
		env: []string{"INGEST_WAL_DIR=" + feDir, "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile}}
	mt.start()
	fe.start()
	defer func() {
		if t.Failed() {
			for _, p := range []*tierProc{mt, fe} {
				t.Logf("logs of %s (tail):\n%s", p.name, tail(p.logs.String(), 40))
			}
		}
	}()
	feURL, mtURL := "http://"+feAddr, "http://"+mtHTTP
	tierURL := feURL
	if full == "middletier" {
		tierURL = mtURL
	}

	const devices = 16
	var (
		mu     sync.Mutex
		acked  = map[string]map[uint64]bool{}
		nAcked int
	)
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return nAcked
	}
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	var clients []*client.Client
	for d := range devices {
		acked[fmt.Sprintf("dev-%02d", d)] = map[uint64]bool{}
	}
	for d := range devices {
		dev := fmt.Sprintf("dev-%02d", d)
		c, err := client.Dial(context.Background(), client.Options{
			URL: "ws://" + feAddr + "/v1/ingest", Token: token(t, dev), Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnResult: func(r client.Result) {
				if r.Err == nil {
					mu.Lock()
					acked[dev][r.N] = true
					nAcked++
					mu.Unlock()
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		senders.Go(func() {
			pad := strings.Repeat("x", 200)
			for i := 1; ctx.Err() == nil; i++ {
				if _, err := c.Send(ctx, fmt.Appendf(nil, `{"id":%d,"v":%d,"pad":%q}`, i, d, pad)); err != nil {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	defer func() {
		stopSending()
		senders.Wait()
		for _, c := range clients {
			c.Close()
		}
	}()
	testkit.WaitFor(t, "devices acknowledged", 30*time.Second, func() bool { return ackedCount() > 500 })

	// Fill the disk, and keep it full: the WAL's own truncation, or a
	// spare given up, may free a little.
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
	hop := `hop="` + full + `"`
	testkit.WaitFor(t, "the "+full+" WAL out of room", 60*time.Second, func() bool {
		return metricOf(tierURL, "ingest_wal_no_space", hop) == 1
	})
	// Full for a while: devices (or the frontend) are refused, retry after
	// the hint and are refused again, more than once.
	if full == "frontend" {
		testkit.WaitFor(t, "devices answered overloaded, again and again", 60*time.Second, func() bool {
			return metricOf(feURL, "ingest_frontend_messages_rejected_total", `code="overloaded"`) > 3*devices
		})
	} else {
		testkit.WaitFor(t, "the frontend answered busy, again and again", 60*time.Second, func() bool {
			return metricOf(mtURL, "ingest_middletier_busy_total", "") > 20
		})
	}
	// A full disk is not a failure.
	for _, u := range []string{feURL, mtURL} {
		if s := httpStatus(t, u+"/healthz"); s != http.StatusOK {
			t.Fatalf("%s/healthz %d on a full disk, want 200", u, s)
		}
	}
	if metricOf(tierURL, "ingest_wal_failed", hop) != 0 {
		t.Fatal("the WAL failed on a full disk")
	}
	close(stopFill)
	filling.Wait()
	before := ackedCount()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages acknowledged when the disk was freed", before)
	testkit.WaitFor(t, "acknowledgements again", 60*time.Second, func() bool { return ackedCount() > before+1000 })
	testkit.WaitFor(t, "the no-space gauge cleared", 60*time.Second, func() bool {
		return metricOf(tierURL, "ingest_wal_no_space", hop) == 0
	})
	stopSending()
	senders.Wait()

	for d, c := range clients {
		fctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := c.Flush(fctx); err != nil {
			t.Errorf("flush of dev-%02d: %v; %d messages without a result", d, err, c.Pending())
		}
		cancel()
	}
	testkit.WaitFor(t, "the frontend's WAL forwarded", 60*time.Second, func() bool { return queueDepth(t, feAddr) == 0 })
	overloaded := metricOf(feURL, "ingest_frontend_messages_rejected_total", `code="overloaded"`)
	busy := metricOf(mtURL, "ingest_middletier_busy_total", "")
	for _, p := range []*tierProc{fe, mt} {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}

	stored := map[string]map[uint64]bool{}
	n := 0
	for id, count := range readStream(t, filepath.Join(mtDir, "wal"), stored) {
		if count > 1 {
			t.Fatalf("the middletier holds %s %d times", id, count)
		}
		n++
	}
	mu.Lock()
	defer mu.Unlock()
	for dev, ids := range acked {
		for id := range ids {
			if !stored[dev][id] {
				t.Fatalf("%s message %d was acknowledged and is not in the middletier", dev, id)
			}
		}
	}
	if n != nAcked {
		t.Fatalf("%d records in the middletier, %d messages acknowledged: each must be there once", n, nAcked)
	}
	t.Logf("%d messages acknowledged, each in the middletier once; %v messages answered overloaded, %v batches busy", nAcked, overloaded, busy)
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
