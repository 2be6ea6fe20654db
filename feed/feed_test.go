package feed_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
)

const devicesYAML = `devices:
  - id: truck-7
    name: Truck 7
    group: north
    labels:
      driver: alice
  - id: sensor-1
    group: north
  - id: sensor-2
    group: south
`

func TestFilters(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{
		Sources:  []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}},
		Registry: writeRegistry(t, devicesYAML),
	})
	fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	tok := token(t, "feed:read", nil)

	subs := map[string]string{
		"all":     `{"type":"subscribe"}`,
		"ids":     `{"type":"subscribe","devices":["sensor-2","nobody"]}`,
		"prefix":  `{"type":"subscribe","prefixes":["truck-"]}`,
		"group":   `{"type":"subscribe","groups":["north"]}`,
		"mixed":   `{"type":"subscribe","devices":["lonely"],"groups":["south"]}`,
		"nothing": `{"type":"subscribe","devices":["nobody"]}`,
	}
	readers := map[string]*reader{}
	for name, sub := range subs {
		r := dialReader(t, fs.url, tok, nil)
		r.run(t)
		r.subscribe(t, sub)
		readers[name] = r
	}
	warm(t, fe, readers["all"])

	sent := []msg{
		{device: "truck-7", payload: `{"lat":52.5,"lon":13.4}`, ts: 1748736000123},
		{device: "sensor-1", payload: `{"temp":21.5}`},
		{device: "sensor-2", payload: `{"temp":19}`},
		{device: "lonely", payload: `{"x":"a\"b"}`},
		{device: "truck-8", payload: `{"lat":1}`},
	}
	fe.send(t, sent[:2]...)
	fe.send(t, sent[2:]...)
	fe.send(t, msg{device: "end", payload: `{}`})

	want := map[string][]string{
		"all":     {"truck-7", "sensor-1", "sensor-2", "lonely", "truck-8", "end"},
		"ids":     {"sensor-2"},
		"prefix":  {"truck-7", "truck-8"},
		"group":   {"truck-7", "sensor-1"},
		"mixed":   {"sensor-2", "lonely"},
		"nothing": nil,
	}
	var all []frame
	for name, devices := range want {
		r := readers[name]
		got := r.messages(t, len(devices), isWarm)
		var ids []string
		for _, f := range got {
			ids = append(ids, f.Device)
		}
		if !slices.Equal(ids, devices) {
			t.Errorf("%s: got %q, want %q", name, ids, devices)
		}
		if name == "all" {
			all = got
		}
	}
	// Nothing more arrives for the filtered readers: "end" reached "all"
	// after everything else was dispatched, and every reader's messages are
	// queued in dispatch order.
	for name, r := range readers {
		select {
		case f := <-r.frames:
			if name != "all" {
				t.Errorf("%s: extra frame %+v", name, f)
			}
		default:
		}
	}

	truck := all[0]
	if truck.Time != 1748736000123 || truck.Received < time.Now().Add(-time.Minute).UnixMilli() ||
		string(truck.Payload) != `{"lat":52.5,"lon":13.4}` || truck.Middletier != "mt-0" ||
		truck.Origin != "fe-1.0000000000000001" || truck.Index == 0 || truck.Seq == 0 {
		t.Errorf("truck-7 message %+v", truck)
	}
	if truck.Labels["name"] != "Truck 7" || truck.Labels["group"] != "north" || truck.Labels["driver"] != "alice" {
		t.Errorf("truck-7 labels %v", truck.Labels)
	}
	if all[1].Time != all[1].Received {
		t.Errorf("without a device time, time %d should be the receive time %d", all[1].Time, all[1].Received)
	}
	if all[3].Labels != nil || string(all[3].Payload) != `{"x":"a\"b"}` {
		t.Errorf("unregistered device: %+v", all[3])
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq != all[i-1].Seq+1 || all[i].Index != all[i-1].Index+1 {
			t.Fatalf("sequence %d/%d after %d/%d", all[i].Seq, all[i].Index, all[i-1].Seq, all[i-1].Index)
		}
	}
	if n := metric(t, fs, "ingest_feed_readers"); n != float64(len(readers)) {
		t.Errorf("ingest_feed_readers %v, want %d", n, len(readers))
	}
	if n := metric(t, fs, "ingest_feed_delivered_messages_total"); n < 6+2+2+1+2 {
		t.Errorf("ingest_feed_delivered_messages_total %v", n)
	}
	// Every record taken from the stream is timed once, however many
	// readers it went to: the warm-up messages and the six sent.
	if n := metric(t, fs, "ingest_feed_dispatch_latency_seconds"); n < 6 || n > metric(t, fs, "ingest_feed_received_records_total") {
		t.Errorf("ingest_feed_dispatch_latency_seconds counts %v records, want 6 to %v", n, metric(t, fs, "ingest_feed_received_records_total"))
	}
}

// Options.Handlers share the feed's listener (the status page's origin is
// then the feed's own) and leave the feed's paths alone. Run waits for
// them: a request still running when the feed stops has its context ended,
// and Run returns after its handler (it used to return before).
func TestHandlers(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	entered := make(chan struct{})
	var finished atomic.Bool
	fs := startFeed(t, feed.Options{
		Sources:        []feed.Source{{Feed: tr.addrs.Feed}},
		InsecureNoAuth: true,
		Handlers: map[string]http.Handler{"/page/": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "page at "+r.URL.Path)
		}), "/slow": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-r.Context().Done()
			time.Sleep(50 * time.Millisecond) // what it still does after
			finished.Store(true)
		})},
	})
	base := "http://" + strings.TrimSuffix(strings.TrimPrefix(fs.url, "ws://"), "/v1/feed")
	for path, want := range map[string]string{"/page/x": "page at /page/x", "/readyz": "ready\n"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("GET %s: %s %q, want %q", path, resp.Status, b, want)
		}
	}
	r := dialReader(t, fs.url, "", nil)
	r.run(t)
	r.subscribe(t, `{"type":"subscribe"}`)

	asked := make(chan struct{})
	go func() {
		defer close(asked)
		if resp, err := http.Get(base + "/slow"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	fs.stop()
	if !finished.Load() {
		t.Error("Run returned with the handler of a request still running")
	}
	<-asked
}

// TestResubscribeReplacesQueued: a reader that sends subscribe again gets,
// after the answer, only what its new filter takes (docs/protocol.md: the
// subscribe replaces the filters, and "live" says where the messages of the
// new subscription start). Before, the messages its queue held under the
// old filter were written after the answer: a reader that narrowed its
// filter to one device still got every other device's messages, and one
// that turned commands off still got command frames.
func TestResubscribeReplacesQueued(t *testing.T) {
	fs, fe, tok, fast := startFastReader(t, feed.Options{
		ClientQueue: 64,
		SlowGrace:   time.Minute,
		MaxMissed:   1 << 30,
	})
	// A reader of everything that reads nothing yet: its socket backs up,
	// then its queue fills and drops.
	r, st := backedUp(t, fs, fe, tok, fast)

	// Narrow the filter to device "other". The answer waits behind what the
	// reader has not read; the new filter holds once "dev" messages no
	// longer drop for the reader.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","devices":["other"]}`)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the new filter to hold", 5*time.Second, func() bool {
		before := metric(t, fs, "ingest_feed_dropped_messages_total")
		st.batch(t, 1, "")
		st.check(t)
		return metric(t, fs, "ingest_feed_dropped_messages_total") == before
	})

	// Read: what was written before the second answer is the old
	// subscription's; after it, only device "other" (and missed notices).
	r.run(t)
	var live uint64
	for answers := 0; answers < 2; {
		if f := r.next(t); f.Type == "subscribed" {
			answers++
			live = f.Live["mt-0"]
		}
	}
	testkit.WaitFor(t, "a message of device \"other\"", 10*time.Second, func() bool {
		fe.send(t, msg{device: "other", payload: `{"end":true}`})
		for {
			select {
			case f := <-r.frames:
				switch {
				case f.Type == "missed":
				case f.Type != "message" || f.Device != "other":
					t.Fatalf("after the answer to a subscribe of device \"other\" (live from %d): a %s of device %q, seq %d", live, f.Type, f.Device, f.Seq)
				default:
					return true
				}
			case <-time.After(50 * time.Millisecond):
				return false
			}
		}
	})
}
