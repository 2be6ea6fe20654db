package command_test

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
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

// TestEventsDroppedLoggedOnce: while the events' log is full (the
// middletier it forwards to is unreachable, or itself full while storage
// is down), every round of the home's that has events drops them; that is
// counted each time, and logged once until events are appended again, not
// once a round. Before, every round that dropped events logged a warning:
// a line per command change for as long as the log stayed full.
func TestEventsDroppedLoggedOnce(t *testing.T) {
	// Nothing listens at EventsTo: nothing the log holds is released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := "tcp://" + ln.Addr().String()
	ln.Close()
	evs, err := wal.Open(t.TempDir(), wal.Options{Hop: "command_events", MaxBytes: 1024}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { evs.Close() })
	cmds := testkit.OpenWAL(t, t.TempDir(), wal.Options{Hop: "command"})
	var logs testkit.Logs
	reg := prometheus.NewRegistry()
	h, err := command.New(command.Options{ID: "home-1", Addr: "tcp://127.0.0.1:0", Redeliver: time.Minute, PresenceTimeout: time.Minute,
		Events: evs, EventsTo: []string{nowhere}}, cmds, reg, logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() }) // after Run has returned: cleanups run last first
	testkit.Go(t, "home", h.Run)
	fe := dialFrontend(t, &commandtest.Home{Addr: h.Addr()}, "fe#1")

	// Each submit is a round of its own: its reply comes after the round.
	for i := range 40 {
		fe.submit(t, wire.Submit{Device: fmt.Sprint("d", i), Name: "reboot"})
	}
	dropped := testkit.Metric(t, reg, "ingest_command_events_dropped_total")
	if dropped < 10 {
		t.Fatalf("%v events dropped by 40 rounds into a log of 1 KiB, want at least 10", dropped)
	}
	if n := logs.Count(`msg="command: events dropped`); n != 1 {
		t.Fatalf("%v events dropped, in rounds of their own, logged %d times; want once", dropped, n)
	}
}
