package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
)

// TestAllLimits: ingest all takes the field limits from its environment
// (INGEST_MAX_FIELDS) and the series bound from its flags: a device is
// told which messages break a field limit, and of the rest the store keeps
// the device's first series up to the bound, counting the fields it drops.
func TestAllLimits(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	queryAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`),
		env: []string{"INGEST_MAX_FIELDS=3"},
		args: []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", addr,
			"--feed.listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--storage.http.listen", queryAddr, "--storage.max-series-per-device", "4", "--mqtt.listen", "127.0.0.1:0"}}
	p.start()

	var (
		mu    sync.Mutex
		codes = map[uint64]string{}
	)
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + addr + "/v1/ingest?device=dev-1",
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
	base := time.Now().Add(-time.Minute).UnixMilli()
	msgs := []string{
		`{"id":1,"a":1,"b":2,"c":3,"d":4}`, // four fields: over INGEST_MAX_FIELDS
		`{"id":2,"__name__":1}`,
	}
	for i := 3; i <= 10; i++ { // each a new field: the store keeps four series
		msgs = append(msgs, fmt.Sprintf(`{"id":%d,"ts":%d,"temp":1,"f%02d":1}`, i, base+int64(i), i))
	}
	ns := map[uint64]string{}
	for i, m := range msgs {
		n, err := c.Send(context.Background(), []byte(m))
		if err != nil {
			t.Fatal(err)
		}
		want := ""
		switch i {
		case 0:
			want = "too_many_fields"
		case 1:
			want = "invalid_field"
		}
		ns[n] = want
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	mu.Lock()
	for n, want := range ns {
		if got, ok := codes[n]; !ok || got != want {
			t.Errorf("message %d: result %q, want %q", n, got, want)
		}
	}
	mu.Unlock()

	// temp, f03, f04, f05 are stored; f06 to f10 are dropped.
	q := "http://" + queryAddr + "/api/v1/query?query=" + url.QueryEscape(`count({device="dev-1"})`)
	deadline := time.Now().Add(30 * time.Second)
	for scrape(t, addr, `ingest_storage_dropped_fields_total{reason="series_limit",sink="embedded"}`) != 5 || queryValue(t, q) != "4" {
		if time.Now().After(deadline) {
			t.Fatalf("series_limit drops %v, series %q, want 5 and 4; logs:\n%s",
				scrape(t, addr, `ingest_storage_dropped_fields_total{reason="series_limit",sink="embedded"}`), queryValue(t, q), p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for rule, want := range map[string]float64{"too_many_fields": 1, "name_reserved": 1, "string_too_long": 0} {
		if got := scrape(t, addr, `ingest_frontend_field_rejections_total{rule="`+rule+`"}`); got != want {
			t.Errorf("field_rejections{rule=%q} = %v, want %v", rule, got, want)
		}
	}
	if err := p.stop(); err != nil {
		t.Fatalf("%v; logs:\n%s", err, p.logs.String())
	}
}
