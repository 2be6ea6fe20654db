package feed_test

import (
	"testing"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wire"
)

// TestCommandFrames: a command event record reaches the readers that asked
// for commands and whose filter takes its device, as a command frame with
// the event in "command"; readers that did not ask see none, and an event
// that does not decode reaches nobody and is counted.
func TestCommandFrames(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}},
		Registry: writeRegistry(t, devicesYAML)})
	fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	home := newSender(t, tr.addrs.Ingest, "mt-0.commands.0000000000000002")
	tok := token(t, "feed:read", nil)
	readers := map[string]*reader{}
	for name, sub := range map[string]string{
		"plain":    `{"type":"subscribe"}`,
		"commands": `{"type":"subscribe","commands":true}`,
		"other":    `{"type":"subscribe","commands":true,"devices":["sensor-1","warm-up"]}`,
	} {
		r := dialReader(t, fs.url, tok, nil)
		r.run(t)
		r.subscribe(t, sub)
		readers[name] = r
	}
	warm(t, fe, readers["plain"])
	warm(t, fe, readers["commands"])
	warm(t, fe, readers["other"])

	c := wire.Command{ID: "c0a1", Device: "truck-7", Name: "reboot", State: wire.StateAcknowledged, Status: "ok",
		Result: []byte(`{"up":true}`), Created: 1_748_736_000_000_000_000, Done: 1_748_736_000_250_000_000}
	event := func(payload []byte) []byte {
		return envelope.AppendEncode(nil, &envelope.Envelope{Frontend: "mt-0", Device: "truck-7", Received: c.Done,
			Topic: wire.CommandEventTopic, Payload: payload})
	}
	home.Send(t, event([]byte(`{"id":"c0a1","name":"reboot"}`)), event(wire.AppendCommandEvent(nil, &c)))
	fe.send(t, msg{device: "sensor-1", payload: `{"temp":1}`})

	var cmd frame
	got := readers["commands"].messages(t, 1, func(f frame) bool {
		if f.Type == "command" {
			cmd = f
			return true
		}
		return isWarm(f)
	})
	if got[0].Device != "sensor-1" || cmd.Device != "truck-7" || cmd.Time != 1_748_736_000_250 || cmd.Origin != home.Origin ||
		cmd.Labels["name"] != "Truck 7" || cmd.Middletier != "mt-0" {
		t.Fatalf("command frame %+v, then %+v", cmd, got[0])
	}
	ev, err := wire.DecodeCommandEvent(cmd.Command)
	if err != nil || ev.ID != "c0a1" || ev.State != "acknowledged" || ev.Status != "ok" || string(ev.Result) != `{"up":true}` {
		t.Fatalf("command %s: %+v, %v", cmd.Command, ev, err)
	}
	for _, name := range []string{"plain", "other"} {
		f := readers[name].messages(t, 1, isWarm)[0] // fails on a command frame
		if f.Device != "sensor-1" {
			t.Fatalf("%s: %+v", name, f)
		}
	}
	if n := metric(t, fs, "ingest_feed_invalid_records_total"); n != 1 {
		t.Fatalf("invalid records %v, want the event that does not decode", n)
	}
}
