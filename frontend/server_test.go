package frontend

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/wal"
)

func TestAckedMessagesAreInWAL(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: ts.url(), Token: hsToken(t, "dev-1", nil)})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		if _, err := c.Send(ctx, []byte(payload("dev-1", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SendWait(ctx, []byte(`{"id":"last","ts":1748736000000}`)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := testutil.ToFloat64(ts.srv.m.acked); got != n+1 {
		t.Fatalf("acked metric %v, want %d", got, n+1)
	}
	ts.stop(t)
	envs := walEnvelopes(t, ts.dir)
	if len(envs) != n+1 {
		t.Fatalf("%d envelopes in the WAL, want %d", len(envs), n+1)
	}
	for i, e := range envs[:n] {
		var p struct{ ID int }
		if err := json.Unmarshal(e.Payload, &p); err != nil || p.ID != i {
			t.Fatalf("entry %d: payload %s out of order (%v)", i, e.Payload, err)
		}
		if e.Device != "dev-1" || e.Frontend != "fe-test" || e.HasDeviceTime || e.Received == 0 {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
	if last := envs[n]; !last.HasDeviceTime || last.DeviceTime != 1748736000000*1e6 {
		t.Fatalf("device time not kept: %+v", last)
	}
	_ = fmt.Sprint
	_ = time.Second
}
