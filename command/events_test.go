package command_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestEvents: every change of a command's state (accepted, sent, answered;
// cancelled; expired) reaches a real middletier as an event record on the
// reserved topic, each command's in the order of its changes, each of a
// device's events in a millisecond of its own; the answer's event carries
// the device's status and result and the time since acceptance.
func TestEvents(t *testing.T) {
	mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	evs, err := wal.Open(t.TempDir(), wal.Options{Hop: "command_events"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { evs.Close() }) // after the home's stop, registered later
	th := startHome(t, command.Options{Events: evs, EventsTo: []string{mt.Addrs.Ingest}}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")

	a := fe.submit(t, wire.Submit{Device: "d1", Name: "reboot"})
	b := fe.submit(t, wire.Submit{Device: "d1", Name: "reboot"})
	c := fe.submit(t, wire.Submit{Device: "d2", Name: "ping", TTLMS: 1})
	if r := fe.ask(t, &wire.Query{Op: wire.QueryCancel, CID: b.ID}); r.Code != "" {
		t.Fatalf("cancel: %+v", r)
	}
	fe.place(t, "d1", 1)
	if got := fe.deliverFor(t, "d1"); got.ID != a.ID {
		t.Fatalf("delivered %+v, want %s", got, a.ID)
	}
	fe.answer(t, "d1", a.ID, "ok")
	fe.waitState(t, a.ID, wire.StateAcknowledged)
	fe.waitState(t, c.ID, wire.StateExpired)

	want := map[string][]string{a.ID: {"queued", "sent", "acknowledged"}, b.ID: {"queued", "cancelled"}, c.ID: {"queued", "expired"}}
	testkit.Eventually(t, 10*time.Second, "7 events in the middletier", func() (bool, string) {
		n := testkit.Metric(t, mt.Reg, "ingest_middletier_entries_total")
		return n == 7, fmt.Sprint("entries: ", n)
	})
	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	got, last := map[string][]string{}, map[string]int64{}
	for _, e := range middletierEvents(t, mt) {
		ev, err := wire.DecodeCommandEvent(e.Payload)
		if err != nil {
			t.Fatalf("event %s: %v", e.Payload, err)
		}
		if e.Frontend != "home-1" || e.Topic != wire.CommandEventTopic {
			t.Fatalf("event envelope %+v", e)
		}
		if e.Received/1e6 <= last[e.Device] {
			t.Fatalf("event %s of %s at %d ms, not after the device's last at %d", e.Payload, e.Device, e.Received/1e6, last[e.Device])
		}
		last[e.Device] = e.Received / 1e6
		got[ev.ID] = append(got[ev.ID], ev.State)
		if ev.State == "acknowledged" && (ev.Status != "ok" || string(ev.Result) != `{"done":true}` || ev.LatencyMS == nil || ev.Name != "reboot") {
			t.Fatalf("answer's event %s", e.Payload)
		}
		if (ev.State == "queued") != (ev.LatencyMS == nil) {
			t.Fatalf("event %s: a latency for every state but queued", e.Payload)
		}
	}
	for id, states := range want {
		if !slices.Equal(got[id], states) {
			t.Fatalf("events of %s: %q, want %q (all: %v)", id, got[id], states, got)
		}
	}
}

// middletierEvents are the envelopes of the stopped middletier's records.
func middletierEvents(t *testing.T, mt *testkit.Middletier) []envelope.Envelope {
	t.Helper()
	l, err := wal.Open(filepath.Join(mt.Dir, "wal"), wal.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out []envelope.Envelope
	for _, rec := range testkit.Records(t, l) {
		e, err := envelope.Decode(rec.Data)
		if err != nil {
			t.Fatalf("record %d: %v", rec.Index, err)
		}
		out = append(out, e)
	}
	return out
}
