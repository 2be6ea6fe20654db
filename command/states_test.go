package command_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// waitGauges waits until the home's ingest_command_commands is want for
// every state (a state not named: 0).
func waitGauges(t *testing.T, th *commandtest.Home, want map[string]float64) {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("commands by state %v", want), 10*time.Second, func() bool {
		got := testkit.Gauges(t, th.Reg, "ingest_command_commands", "state")
		for s := wire.StateQueued; s <= wire.StateCancelled; s++ {
			if v, in := got[s.String()]; !in || v != want[s.String()] {
				return false
			}
		}
		return true
	})
}

// TestStateGauge: the gauge of commands by state follows every change —
// accepted, sent, answered ok and not, cancelled, expired — and counts the
// same after a restart, whose recovery reads each command's states again.
func TestStateGauge(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	a := fe.submit(t, wire.Submit{Device: "d1", Name: "a"})
	b := fe.submit(t, wire.Submit{Device: "d1", Name: "b"})
	c := fe.submit(t, wire.Submit{Device: "d1", Name: "c"})
	fe.submit(t, wire.Submit{Device: "d1", Name: "d"})
	x := fe.submit(t, wire.Submit{Device: "d2", Name: "x"})
	fe.submit(t, wire.Submit{Device: "d3", Name: "short", TTLMS: 1})
	waitGauges(t, th, map[string]float64{"queued": 5, "expired": 1})

	if r := fe.ask(t, &wire.Query{Op: wire.QueryCancel, CID: x.ID}); r.Code != "" {
		t.Fatalf("cancel: %+v", r)
	}
	fe.place(t, "d1", 1)
	if got := fe.deliver(t); got.ID != a.ID {
		t.Fatalf("delivered %s, want %s", got.ID, a.ID)
	}
	waitGauges(t, th, map[string]float64{"queued": 3, "sent": 1, "expired": 1, "cancelled": 1})
	fe.answer(t, "d1", a.ID, "ok")
	if got := fe.deliver(t); got.ID != b.ID {
		t.Fatalf("delivered %s, want %s", got.ID, b.ID)
	}
	fe.answer(t, "d1", b.ID, "rejected")
	if got := fe.deliver(t); got.ID != c.ID {
		t.Fatalf("delivered %s, want %s", got.ID, c.ID)
	}
	want := map[string]float64{"queued": 1, "sent": 1, "acknowledged": 1, "failed": 1, "expired": 1, "cancelled": 1}
	waitGauges(t, th, want)

	th.Stop(t)
	th.Start(t)
	waitGauges(t, th, want)
}

// TestStateGaugeForget: commands forgotten after Options.Retain leave the
// gauge.
func TestStateGaugeForget(t *testing.T) {
	th := startHome(t, command.Options{Retain: 200 * time.Millisecond}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	a := fe.submit(t, wire.Submit{Device: "d1", Name: "a"})
	fe.submit(t, wire.Submit{Device: "d2", Name: "b"})
	fe.place(t, "d1", 1)
	if got := fe.deliver(t); got.ID != a.ID {
		t.Fatalf("delivered %s, want %s", got.ID, a.ID)
	}
	fe.answer(t, "d1", a.ID, "ok")
	fe.waitState(t, a.ID, wire.StateAcknowledged)
	waitGauges(t, th, map[string]float64{"queued": 1})
}

// TestPlacedGauge: the gauge of placed devices counts a device once
// wherever it is connected, and lets it go when its frontend reports it
// gone, lists it no more, or falls silent past Options.PresenceTimeout;
// the counter of placements counts each new connection.
func TestPlacedGauge(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe1, fe2 := dialFrontend(t, th, "fe#1"), dialFrontend(t, th, "fe#2")
	fe1.place(t, "d1", 1)
	fe1.place(t, "d2", 1)
	fe1.place(t, "d3", 1)
	wantPlaced(t, th, 3, 3, fe1)
	fe2.place(t, "d1", 2) // d1 moved: still placed once
	// fe#2 is not where d2 is: its word on d2 changes nothing.
	fe2.p.Send(t, &wire.Presence{Frontend: "fe", Devices: []wire.Place{{Device: "d2", Since: 1, Present: false}}})
	fe1.place(t, "d3", 1) // the same connection again: no new placement
	wantPlaced(t, th, 3, 4, fe1, fe2)
	fe2.p.Send(t, &wire.Presence{Frontend: "fe", Devices: []wire.Place{{Device: "d1", Since: 2, Present: false}}})
	wantPlaced(t, th, 2, 4, fe2)
	fe1.p.Send(t, &wire.Presence{Frontend: "fe", Full: true, Devices: []wire.Place{{Device: "d3", Since: 1, Present: true}}})
	wantPlaced(t, th, 1, 4, fe1) // fe#1 lists d2 no more

	// A frontend that falls silent: its device is forgotten after the
	// timeout. The delivery shows that the device was placed.
	th2 := startHome(t, command.Options{PresenceTimeout: 200 * time.Millisecond}, wal.Options{})
	fe := dialFrontend(t, th2, "fe#3")
	c := fe.submit(t, wire.Submit{Device: "d4", Name: "a"})
	fe.place(t, "d4", 1)
	if got := fe.deliver(t); got.ID != c.ID {
		t.Fatalf("delivered %s, want %s", got.ID, c.ID)
	}
	testkit.WaitFor(t, "d4 forgotten", 10*time.Second, func() bool {
		return testkit.Metric(t, th2.Reg, "ingest_command_devices_placed") == 0
	})
}

// TestFullListMovesDevice: a full list that names a device at a new
// connection places it there, though the device had no commands and the
// move forgets and makes it again, and a command for it is handed there.
func TestFullListMovesDevice(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe1, fe2 := dialFrontend(t, th, "fe#1"), dialFrontend(t, th, "fe#2")
	fe1.place(t, "d1", 1)
	wantPlaced(t, th, 1, 1, fe1)
	fe2.p.Send(t, &wire.Presence{Frontend: "fe", Full: true, Devices: []wire.Place{{Device: "d1", Since: 2, Present: true}}})
	wantPlaced(t, th, 1, 2, fe2)
	c := fe1.submit(t, wire.Submit{Device: "d1", Name: "a"})
	if got := fe2.deliver(t); got.ID != c.ID {
		t.Fatalf("delivered %s, want %s", got.ID, c.ID)
	}
}

// wantPlaced checks the home's gauge of placed devices and its counter of
// placements once the home has handled all that the frontends fes sent
// before: the reply to a query on each socket comes after the gauge is set
// for the round that handled what came before it.
func wantPlaced(t *testing.T, th *commandtest.Home, placed, placements float64, fes ...*frontend) {
	t.Helper()
	for _, f := range fes {
		if r := f.ask(t, &wire.Query{Op: wire.QueryList, Device: "nobody"}); r.Code != "" {
			t.Fatalf("query: %+v", r)
		}
	}
	if got := testkit.Metric(t, th.Reg, "ingest_command_devices_placed"); got != placed {
		t.Errorf("%v devices placed, want %v", got, placed)
	}
	if got := testkit.Metric(t, th.Reg, "ingest_command_placements_total"); got != placements {
		t.Errorf("%v placements, want %v", got, placements)
	}
}

// TestMovedDeviceLeaves: a device with no commands that moves to another
// frontend and then leaves it is let go, whether that frontend reports it
// gone or lists it no more.
func TestMovedDeviceLeaves(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe1, fe2 := dialFrontend(t, th, "fe#1"), dialFrontend(t, th, "fe#2")
	fe1.place(t, "d1", 1)
	fe1.place(t, "d2", 1)
	wantPlaced(t, th, 2, 2, fe1)
	fe2.place(t, "d1", 2)
	fe2.place(t, "d2", 2)
	fe2.p.Send(t, &wire.Presence{Frontend: "fe", Devices: []wire.Place{{Device: "d1", Since: 2, Present: false}}})
	wantPlaced(t, th, 1, 4, fe2)
	fe2.p.Send(t, &wire.Presence{Frontend: "fe", Full: true})
	wantPlaced(t, th, 0, 4, fe2)
	// Still placed where it went: a command submitted now is handed there.
	fe1.place(t, "d3", 1)
	fe2.place(t, "d3", 2)
	c := fe1.submit(t, wire.Submit{Device: "d3", Name: "a"})
	if got := fe2.deliver(t); got.ID != c.ID {
		t.Fatalf("delivered %s, want %s", got.ID, c.ID)
	}
}
