package feed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
)

// BenchmarkDeviceToFeed measures device → live feed latency at a paced
// 10,000 messages/s: 20 devices (the Go device client, 500 messages/s each)
// send to a real frontend (WAL, fsync before ack), whose uplink forwards to a
// real middletier (WAL, fsync), whose feed socket a feed server follows; one
// dashboard subscribed to every device receives each message. Latency is
// from just before the device client's Send to the dashboard having read
// and decoded the message frame, on one clock (one process). Everything runs
// on the same cores. b.N is the number of messages (use -benchtime=50000x).
func BenchmarkDeviceToFeed(b *testing.B) {
	const devices, rate = 20, 10000
	tr := startTier(b, middletier.Options{})

	// The frontend and its uplink.
	flog := testkit.OpenWAL(b, filepath.Join(b.TempDir(), "wal"), wal.Options{Hop: "frontend", MaxBytes: 8 << 30, SegmentBytes: 4 << 20})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	fsrv, err := frontend.New(frontend.Options{Listener: ln, ID: "fe-0", InsecureNoAuth: true, Rate: 1e6, Burst: 2e6}, flog, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	link, err := uplink.New(uplink.Options{ID: "fe-0", Middletiers: []string{tr.addrs.Ingest}}, flog, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { fsrv.Run(ctx) })
	wg.Go(func() { link.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	fs := startFeed(b, feed.Options{
		Sources:     []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}},
		ClientQueue: 16384,
	})
	dash := dialReader(b, fs.url, token(b, "feed:read", nil), nil)
	dash.run(b)
	dash.subscribe(b, `{"type":"subscribe"}`)

	var clients []*client.Client
	for d := range devices {
		c, err := client.Dial(context.Background(), client.Options{
			URL: fmt.Sprintf("ws://%s/v1/ingest?device=dev-%02d", ln.Addr(), d), Window: 64})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	// Warm up until the feed's subscription has reached the middletier.
	deadline := time.Now().Add(10 * time.Second)
warm:
	for {
		if err := clients[0].SendWait(context.Background(), []byte(`{"warm":1}`)); err != nil {
			b.Fatal(err)
		}
		select {
		case <-dash.frames:
			break warm
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatal("no message reached the dashboard")
		}
	}
	for len(dash.frames) > 0 {
		<-dash.frames
	}

	collect := collectLatency(b, dash)
	b.ResetTimer()
	start := time.Now()
	var senders sync.WaitGroup
	for d, c := range clients {
		n := b.N / devices
		if d < b.N%devices {
			n++
		}
		senders.Go(func() {
			// Device d sends its k-th message at start + (k*devices+d)/rate.
			var buf []byte
			for k := range n {
				at := start.Add(time.Duration(k*devices+d) * time.Second / rate)
				if w := time.Until(at); w > 0 {
					time.Sleep(w)
				}
				buf = fmt.Appendf(buf[:0], `{"sent":%d,"temp":21.5,"n":%d}`, time.Now().UnixNano(), k)
				if _, err := c.Send(context.Background(), buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	senders.Wait()
	collect(start)
}

// collectLatency reads b.N message frames carrying {"sent":<unix ns>} on
// dash in the background; the function it returns waits for them (30 s at
// most) and reports the latency percentiles and the rate since start.
func collectLatency(b *testing.B, dash *reader) func(start time.Time) {
	type payload struct {
		Sent int64 `json:"sent"`
	}
	lat := make([]time.Duration, 0, b.N)
	got := make(chan struct{})
	go func() {
		defer close(got)
		for len(lat) < b.N {
			f, ok := <-dash.frames
			if !ok {
				return
			}
			if f.Type != "message" {
				continue // a missed notice shows as a count short
			}
			var p payload
			if json.Unmarshal(f.Payload, &p) != nil || p.Sent == 0 {
				continue
			}
			lat = append(lat, time.Since(time.Unix(0, p.Sent)))
		}
	}()
	return func(start time.Time) {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
		}
		elapsed := time.Since(start)
		b.StopTimer()
		if len(lat) < b.N {
			b.Fatalf("dashboard received %d of %d messages", len(lat), b.N)
		}
		slices.Sort(lat)
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		b.ReportMetric(pct(0.50), "p50_µs")
		b.ReportMetric(pct(0.99), "p99_µs")
		b.ReportMetric(pct(0.999), "p99.9_µs")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max_µs")
		b.ReportMetric(0, "ns/op")
	}
}

// BenchmarkMiddletierToFeed isolates the last hops: batches of 10 messages
// sent every millisecond (10,000 messages/s) straight to a real middletier
// (WAL, fsync) by a DEALER that does not wait for acks; the feed follows its
// feed socket; one dashboard receives every message. Latency is from just
// before the batch is sent to the dashboard having decoded the message.
func BenchmarkMiddletierToFeed(b *testing.B) {
	tr := startTier(b, middletier.Options{})
	fs := startFeed(b, feed.Options{
		Sources:     []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}},
		ClientQueue: 16384,
	})
	fe := newSender(b, tr.addrs.Ingest, "fe-bench.0000000000000001")
	dash := dialReader(b, fs.url, token(b, "feed:read", nil), nil)
	dash.run(b)
	dash.subscribe(b, `{"type":"subscribe"}`)
	warm(b, fe, dash)
	for len(dash.frames) > 0 {
		<-dash.frames
	}

	const per = 10
	collect := collectLatency(b, dash)
	b.ResetTimer()
	start := time.Now()
	for k := 0; k*per < b.N; k++ {
		at := start.Add(time.Duration(k) * time.Millisecond)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		n := min(per, b.N-k*per)
		msgs := make([]msg, n)
		now := time.Now().UnixNano()
		for i := range msgs {
			msgs[i] = msg{device: "dev", payload: fmt.Sprintf(`{"sent":%d,"temp":21.5}`, now)}
		}
		fe.sendAsync(b, msgs...)
	}
	collect(start)
}
