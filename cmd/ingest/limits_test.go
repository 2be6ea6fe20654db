package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// TestAllLimits: ingest all takes the field limits from its environment
// (INGEST_MAX_FIELDS) and the series bound from its flags: a device is
// told which messages break a field limit, and of the rest the store keeps
// the device's first series up to the bound, counting the fields it drops.
func TestAllLimits(t *testing.T) {
	e := startAll(t, []string{"INGEST_MAX_FIELDS=3"}, "--storage.max-series-per-device", "4")
	base := time.Now().Add(-time.Minute).UnixMilli()
	msgs := []string{
		`{"id":1,"a":1,"b":2,"c":3,"d":4}`, // four fields: over INGEST_MAX_FIELDS
		`{"id":2,"__name__":1}`,
	}
	for i := 3; i <= 10; i++ { // each a new field: the store keeps four series
		msgs = append(msgs, fmt.Sprintf(`{"id":%d,"ts":%d,"temp":1,"f%02d":1}`, i, base+int64(i), i))
	}
	codes := resultCodes(t, "ws://"+e.addr+"/v1/ingest?device=dev-1", msgs)
	for i, got := range codes {
		want := map[int]string{0: "too_many_fields", 1: "invalid_field"}[i]
		if got != want {
			t.Errorf("message %d: result %q, want %q", i+1, got, want)
		}
	}

	// temp, f03, f04, f05 are stored; f06 to f10 are dropped.
	q := "http://" + e.queryAddr + "/api/v1/query?query=" + url.QueryEscape(`count({device="dev-1"})`)
	drops := `ingest_storage_dropped_fields_total{reason="series_limit",sink="embedded"}`
	testkit.Eventually(t, 30*time.Second, "series_limit drops and series 5 and 4", func() (bool, string) {
		d, n := scrape(t, e.addr, drops), queryValue(t, q)
		return d == 5 && n == "4", fmt.Sprintf("%v and %q", d, n)
	})
	for rule, want := range map[string]float64{"too_many_fields": 1, "name_reserved": 1, "string_too_long": 0} {
		if got := scrape(t, e.addr, `ingest_frontend_field_rejections_total{rule="`+rule+`"}`); got != want {
			t.Errorf("field_rejections{rule=%q} = %v, want %v", rule, got, want)
		}
	}
	stopOrFail(t, e.tierProc)
}

// resultCodes sends msgs from a device client at url and returns the
// result of each, in order: "" for an acknowledgement, the error code the
// server answered with, or the error.
func resultCodes(t *testing.T, url string, msgs []string) []string {
	t.Helper()
	var (
		mu    sync.Mutex
		codes = map[uint64]string{}
	)
	c, err := client.Dial(context.Background(), client.Options{URL: url,
		OnResult: func(r client.Result) {
			mu.Lock()
			defer mu.Unlock()
			var se *client.ServerError
			switch {
			case r.Err == nil:
				codes[r.N] = ""
			case errors.As(r.Err, &se):
				codes[r.N] = se.Code
			default:
				codes[r.N] = r.Err.Error()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ns []uint64
	for _, m := range msgs {
		n, err := c.Send(context.Background(), []byte(m))
		if err != nil {
			t.Fatal(err)
		}
		ns = append(ns, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	out := make([]string, len(ns))
	for i, n := range ns {
		got, ok := codes[n]
		if !ok {
			got = "no result"
		}
		out[i] = got
	}
	return out
}
