package downlink_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// TestOversizeAnswerFailsNoMessage: a command answer over the
// frontend's frame limit makes it close with 1009. The client learns the
// limit and finds no message in flight over it: it must blame none (an old
// client marked the largest message in flight as the culprit, and a small,
// valid message was reported ErrTooLarge), and the repeats of the command
// are answered without the payload, which would close the connection again.
func TestOversizeAnswerFailsNoMessage(t *testing.T) {
	h := startHome(t, "home-1", command.Options{Redeliver: 300 * time.Millisecond})
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	link, err := downlink.New(downlink.Options{Frontend: "fe-1", Homes: []string{h.Addr}, RequestTimeout: 200 * time.Millisecond, PresenceInterval: 200 * time.Millisecond}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := testkit.Listen(t)
	srv, err := frontend.New(frontend.Options{ID: "fe-1", Listener: ln, Downlink: link, DrainWindow: 100 * time.Millisecond,
		InsecureNoAuth: true, MaxFrameBytes: 4096, MaxMessageBytes: 4096}, l, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tf := &testFrontend{addr: ln.Addr().String(), reg: reg, srv: srv, link: link, log: l}
	ctx, cancel := context.WithCancel(context.Background())
	tf.wg.Go(func() { link.Run(ctx) })
	tf.wg.Go(func() { srv.Run(ctx) })
	t.Cleanup(func() { cancel(); tf.wg.Wait(); srv.Close(); link.Close(); l.Close() })

	var mu sync.Mutex
	var failed []client.Result
	var c *client.Client
	big := `"` + strings.Repeat("a", 8000) + `"`
	c, err = client.Dial(context.Background(), client.Options{
		URL: "ws://" + tf.addr + "/v1/ingest?device=dev-1",
		OnCommand: func(_ context.Context, cmd client.Command) client.Answer {
			for i := range 300 {
				c.Send(context.Background(), fmt.Appendf(nil, `{"id":%d}`, i))
			}
			return client.Answer{Status: "ok", Payload: []byte(big)}
		},
		OnResult: func(r client.Result) {
			if r.Err != nil {
				mu.Lock()
				failed = append(failed, r)
				mu.Unlock()
			}
		},
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitPlaced(t, 1, h)
	submit(t, tf, "dev-1", "n", nil)
	time.Sleep(3 * time.Second)
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	c.Flush(fctx)
	mu.Lock()
	defer mu.Unlock()
	for _, r := range failed {
		if errors.Is(r.Err, client.ErrTooLarge) {
			t.Fatalf("message %d (a few bytes) failed: %v; %d messages failed in all", r.N, r.Err, len(failed))
		}
	}
}
