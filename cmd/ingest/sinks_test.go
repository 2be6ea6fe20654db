//go:build !nostorage

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// TestSinksEndToEnd starts ingest storage with five sinks at once, given
// through INGEST_SINK: the embedded TSDB, remote-write to a real Prometheus
// and to a real VictoriaMetrics, InfluxDB line protocol to a real InfluxDB
// (the 1.x API, basic auth) and to VictoriaMetrics (the 2.x API, a token).
// Every message sent to the middletier arrives in each store, each sink
// keeps its own checkpoint, and the writer's metrics carry the sink's name.
func TestSinksEndToEnd(t *testing.T) {
	prom, influxdb, vm := testkit.Prometheus(t), testkit.InfluxDB(t), testkit.VictoriaMetrics(t)
	testkit.StorePost(t, influxdb.URL+"/query", map[string][]string{"q": {"CREATE DATABASE sinks_e2e"}})
	dir := t.TempDir()
	secret := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sinks := []string{
		"embedded",
		"remotewrite+" + prom.URL + "/api/v1/write#name=prom,header=X-Scope-OrgID:e2e",
		"remotewrite+" + vm.URL + "/api/v1/write#name=vm,bearer-file=" + secret("vm-token", "vm-secret"),
		"influx+" + influxdb.URL + "#db=sinks_e2e,name=influx1,user=ingest,password-file=" + secret("influx-password", "pw"),
		"influx+" + vm.URL + "#org=acme,bucket=e2e,token-file=" + secret("influx-token", "tok") + ",measurement=v2e2e,name=influx2",
	}
	names := []string{"embedded", "prom", "vm", "influx1", "influx2"}
	var consumers []string
	for _, n := range names {
		consumers = append(consumers, "storage-"+n)
	}
	mt, st, ingest, httpAddr := storageTiers(t)
	setFlag(mt, "--consumers", strings.Join(consumers, ","))
	st.env = append(st.env, "INGEST_SINK="+strings.Join(sinks, "\n  "))
	mt.start()
	st.start()
	logsOnFailure(t, 60, mt, st)
	if !regexp.MustCompile(`sinks="embedded=storage-embedded,prom=storage-prom,vm=storage-vm,influx1=storage-influx1,influx2=storage-influx2"`).MatchString(st.logs.String()) {
		t.Errorf("the writer does not name its sinks and their consumers:\n%s", st.logs.String())
	}

	const n = 2000
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	newMTFeeder(t, ingest).send(1, n+1, base)
	checkEveryStoreHolds(t, httpAddr, prom, influxdb, vm, n, base.Add(time.Minute))
	// Each sink committed every record under its own consumer name.
	for _, name := range names {
		testkit.Eventually(t, 60*time.Second, "sink "+name+" checkpointed", func() (bool, string) {
			v := scrape(t, httpAddr, fmt.Sprintf(`ingest_storage_checkpoint{middletier="mt-0",sink=%q}`, name))
			return v == n, fmt.Sprint(v)
		})
		if v := scrape(t, httpAddr, fmt.Sprintf(`ingest_storage_points_written_total{sink=%q}`, name)); v != n {
			t.Errorf("sink %s: %v points written, want %d", name, v, n)
		}
	}
	stopAll(t, st, mt)
}

// setFlag gives flag the value v in p's arguments.
func setFlag(p *tierProc, flag, v string) {
	for i, a := range p.args {
		if a == flag {
			p.args[i+1] = v
		}
	}
}

// checkEveryStoreHolds waits until the embedded TSDB (its query API at
// httpAddr), Prometheus, VictoriaMetrics (through remote-write and the
// InfluxDB 2.x API) and InfluxDB (the 1.x API) each hold messages 1..n,
// by count and by sum, at at.
func checkEveryStoreHolds(t *testing.T, httpAddr string, prom, influxdb, vm *testkit.Store, n int, at time.Time) {
	t.Helper()
	sumN := fmt.Sprint(n * (n + 1) / 2)
	count := func(samples map[string][]testkit.Sample) (c int, sum int) {
		for _, ss := range samples {
			for _, s := range ss {
				v, _ := strconv.Atoi(s.V)
				c, sum = c+1, sum+v
			}
		}
		return c, sum
	}
	within := 60 * time.Second
	testkit.Eventually(t, within, "embedded TSDB holds every message", func() (bool, string) {
		c, s := promQuery(httpAddr, `sum(count_over_time(n[1h]))`, at), promQuery(httpAddr, `sum(sum_over_time(n[1h]))`, at)
		return c == fmt.Sprint(n) && s == sumN, c + " samples, sum " + s
	})
	testkit.Eventually(t, within, "Prometheus holds every message", func() (bool, string) {
		c, s := count(testkit.PromRaw(t, prom, `n`, at, time.Hour))
		return c == n && fmt.Sprint(s) == sumN, fmt.Sprintf("%d samples, sum %d", c, s)
	})
	testkit.Eventually(t, within, "VictoriaMetrics (remote-write) holds every message once", func() (bool, string) {
		c, s := count(testkit.VMExport(t, vm, `n`))
		return c == n && fmt.Sprint(s) == sumN, fmt.Sprintf("%d samples, sum %d", c, s)
	})
	testkit.Eventually(t, within, "VictoriaMetrics (InfluxDB 2.x API) holds every message once", func() (bool, string) {
		c, s := count(testkit.VMExport(t, vm, `v2e2e_n`))
		return c == n && fmt.Sprint(s) == sumN, fmt.Sprintf("%d samples, sum %d", c, s)
	})
	testkit.Eventually(t, within, "InfluxDB (1.x API) holds every message", func() (bool, string) {
		rows := testkit.InfluxQuery(t, influxdb, "sinks_e2e", `SELECT count("n"), sum("n") FROM "ingest"`)
		if len(rows) != 1 {
			return false, fmt.Sprint(rows)
		}
		return fmt.Sprint(rows[0]["count"]) == fmt.Sprint(n) && fmt.Sprint(rows[0]["sum"]) == sumN, fmt.Sprint(rows[0])
	})
}

// TestDeadSinkHoldsNoOther: a sink whose store is down keeps its own
// checkpoint where it is, while the embedded TSDB beside it takes every
// message; the middletier keeps the entries for the one that is behind.
func TestDeadSinkHoldsNoOther(t *testing.T) {
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
	mt, st, ingest, httpAddr := storageTiers(t)
	setFlag(mt, "--consumers", "storage-embedded,storage-dead")
	st.args = append(st.args, "--sink", "embedded", "--sink", "remotewrite+http://"+dead+"/api/v1/write#name=dead")
	mt.start()
	st.start()
	logsOnFailure(t, 60, mt, st)
	const n = 500
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	newMTFeeder(t, ingest).send(1, n+1, base)
	testkit.Eventually(t, 60*time.Second, "embedded TSDB holds every message", func() (bool, string) {
		c := promQuery(httpAddr, `sum(count_over_time(n[1h]))`, base.Add(time.Minute))
		return c == fmt.Sprint(n), c
	})
	testkit.Eventually(t, 30*time.Second, "the embedded sink checkpointed everything", func() (bool, string) {
		v := scrape(t, httpAddr, `ingest_storage_checkpoint{middletier="mt-0",sink="embedded"}`)
		return v == n, fmt.Sprint(v)
	})
	if v := scrape(t, httpAddr, `ingest_storage_points_written_total{sink="dead"}`); v != 0 {
		t.Errorf("the dead sink wrote %v points", v)
	}
	if v := scrape(t, httpAddr, `ingest_storage_lag_records{middletier="mt-0",sink="dead"}`); v <= 0 {
		t.Errorf("the dead sink's lag is %v, want the records it has not stored", v)
	}
	stopAll(t, st, mt)
}
