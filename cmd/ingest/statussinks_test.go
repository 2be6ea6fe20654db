//go:build !nostorage

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// TestStatusStoredWithSeveralSinks runs ingest all with two sinks, the
// embedded TSDB and remote-write to a store that takes every request, and
// sends n messages: once both sinks have taken all n, the status page's
// stored total is n, the messages stored, not n for every sink.
func TestStatusStoredWithSeveralSinks(t *testing.T) {
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer store.Close()
	e := startAll(t, nil, "--sink", "embedded", "--sink", "remotewrite+"+store.URL+"/api/v1/write#name=rw")

	const n = 50
	base := time.Now().UnixMilli() - n
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		msgs = append(msgs, fmt.Appendf(nil, `{"n":%d,"ts":%d}`, i, base+int64(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sendAcked(t, ctx, client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=dev-1"}, msgs)
	for _, sink := range []string{"embedded", "rw"} {
		series := `ingest_storage_points_written_total{sink="` + sink + `"}`
		testkit.Eventually(t, 30*time.Second, fmt.Sprintf("sink %s has taken %d points", sink, n), func() (bool, string) {
			v := scrape(t, e.queryAddr, series)
			return v == n, fmt.Sprint(v)
		})
	}

	resp, err := http.Get("http://" + e.feedAddr + "/status/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Received, Stored struct{ Total float64 }
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.Received.Total != n || s.Stored.Total != n {
		t.Errorf("status snapshot: received %v, stored %v; want %d stored, as received (each of the 2 sinks has taken %d)", s.Received.Total, s.Stored.Total, n, n)
	}
	stopOrFail(t, e.tierProc)
}
