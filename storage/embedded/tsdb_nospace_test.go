package embedded_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/internal/tmpfs"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// TestTSDBDiskFull fills the disk under the embedded TSDB while it is
// written, in order and out of order (the write-behind log's case, which
// the TSDB itself only logs). The write that meets the full disk fails,
// and so does every later one, also once there is room again: nothing more
// is reported stored, so the writer commits nothing and the middletiers
// keep the records. /healthz's Failed and the metrics say so. Reopened with
// room, the TSDB holds every sample a Write reported stored.
func TestTSDBDiskFull(t *testing.T) {
	for _, ooo := range []bool{false, true} {
		t.Run(fmt.Sprintf("out_of_order=%v", ooo), func(t *testing.T) { testTSDBDiskFull(t, ooo) })
	}
}

func testTSDBDiskFull(t *testing.T, ooo bool) {
	mount := tmpfs.Mount(t, 8<<20)
	dir := filepath.Join(mount, "tsdb")
	reg := prometheus.NewRegistry()
	db, err := embedded.Open(embedded.Options{Dir: dir}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const devices = 20
	want := map[string]map[int64]bool{}
	write := func(ts int64) error {
		var points []storage.Point
		for d := range devices {
			points = append(points, storage.Point{Device: fmt.Sprintf("dev-%02d", d), Time: time.UnixMilli(ts),
				Numbers: map[string]float64{"v": float64(ts)}})
		}
		err := db.Write(context.Background(), points)
		if err == nil {
			for _, p := range points {
				if want[p.Device] == nil {
					want[p.Device] = map[int64]bool{}
				}
				want[p.Device][ts] = true
			}
		}
		return err
	}
	// Fewer than 120 samples a series, so that the head cuts no chunk
	// file (which it preallocates at 128 MiB).
	base := time.Now().Add(-time.Hour).Truncate(time.Second).UnixMilli()
	for i := range 40 {
		if err := write(base + int64(i)*1000); err != nil {
			t.Fatal(err)
		}
	}
	filler := tmpfs.Fill(t, mount)
	var werr error
	n := 0
	for i := 40; i < 110 && werr == nil; i++ {
		ts := base + int64(i)*1000
		if ooo {
			ts = base - int64(i)*1000 // behind the newest sample
		}
		werr = write(ts)
		n++
	}
	if werr == nil {
		t.Fatalf("%d writes on a full disk, none failed", n)
	}
	wbl := testutil.ToFloat64(gathered(t, reg, "prometheus_tsdb_out_of_order_wbl_writes_failed_total"))
	t.Logf("write %d on the full disk failed: %v (write-behind log failures %v)", n, werr, wbl)
	if db.Failed() == nil {
		t.Fatal("Failed is nil after a write to the write logs failed")
	}
	for _, name := range []string{"ingest_storage_tsdb_failed", "ingest_storage_tsdb_no_space"} {
		if got := testutil.ToFloat64(gathered(t, reg, name)); got != 1 {
			t.Fatalf("%s %v, want 1", name, got)
		}
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := write(base + 3600_000); err == nil {
		t.Fatal("a write reported stored after the TSDB stopped")
	}
	// What a SIGKILL now would leave (the files as the OS has them), and
	// a clean close: either holds every sample reported stored.
	crashed := filepath.Join(t.TempDir(), "tsdb")
	if out, err := exec.Command("cp", "-a", dir, crashed).CombinedOutput(); err != nil {
		t.Fatalf("copy the tsdb: %v: %s", err, out)
	}
	checkTSDBHolds(t, crashed, 0, want)
	db.Close()
	checkTSDBHolds(t, dir, 1, want)
}

// gathered returns the collector of the one metric called name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	ms := testkit.Series(t, reg, name)
	if len(ms) != 1 {
		t.Fatalf("no metric %s", name)
	}
	v := ms[0].GetGauge().GetValue()
	if ms[0].Counter != nil {
		v = ms[0].GetCounter().GetValue()
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: "copy"}, func() float64 { return v })
}
