package downlink_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
)

// TestAcrossFrontends: commands submitted at either frontend reach devices
// connected to either, in order per device, and each ends acknowledged
// with the device's answer, as both frontends report.
func TestAcrossFrontends(t *testing.T) {
	h1 := startHome(t, "home-1", command.Options{})
	h2 := startHome(t, "home-2", command.Options{})
	homes := []string{h1.Addr, h2.Addr}
	fe := []*testFrontend{startFrontend(t, "fe-1", homes, false), startFrontend(t, "fe-2", homes, false)}
	var devs []*device
	for i := range 8 {
		d := &device{id: fmt.Sprintf("dev-%d", i)}
		connect(t, fe[i%2], d)
		devs = append(devs, d)
	}
	want := map[string][]string{}
	for round := range 3 {
		for i, d := range devs {
			c := submit(t, fe[(i+round)%2], d.id, fmt.Sprintf("cmd-%d", round), nil)
			want[d.id] = append(want[d.id], c.ID)
		}
	}
	for i, d := range devs {
		for _, cid := range want[d.id] {
			c := waitState(t, fe[(i+1)%2], cid, "acknowledged")
			if c.Status != "ok" || len(c.Result) == 0 || c.Sent == nil || c.Done == nil {
				t.Fatalf("%s: %+v", cid, c)
			}
		}
		if got := slices.Compact(d.ids()); !slices.Equal(got, want[d.id]) {
			t.Fatalf("%s saw %v, want %v in order", d.id, got, want[d.id])
		}
	}
	// The list of a device, filtered by state.
	var list struct{ Commands []downlink.CommandJSON }
	if st := call(t, "GET", fe[0].base()+"/v1/devices/dev-3/commands?state=acknowledged", "", nil, &list); st != http.StatusOK || len(list.Commands) != 3 {
		t.Fatalf("list: HTTP %d, %+v", st, list)
	}
	if st := call(t, "GET", fe[0].base()+"/v1/devices/dev-3/commands?state=queued", "", nil, &list); st != http.StatusOK || len(list.Commands) != 0 {
		t.Fatalf("list queued: HTTP %d, %+v", st, list)
	}
}

// TestFollowsDevice: commands queued while a device is away are delivered
// when it connects to another frontend, in the order accepted; a queued
// command can be cancelled and is never delivered; a repeated idempotency
// key gives the same command.
func TestFollowsDevice(t *testing.T) {
	h1 := startHome(t, "home-1", command.Options{})
	h2 := startHome(t, "home-2", command.Options{})
	homes := []string{h1.Addr, h2.Addr}
	fe1, fe2 := startFrontend(t, "fe-1", homes, false), startFrontend(t, "fe-2", homes, false)
	d := &device{id: "mover"}
	connect(t, fe1, d)
	first := submit(t, fe1, d.id, "first", nil)
	waitState(t, fe2, first.ID, "acknowledged")
	d.disconnect()
	waitPlaced(t, 0, h1, h2) // the device's home knows it is away

	a := submit(t, fe2, d.id, "a", map[string]any{"idempotency_key": "k-a"})
	again := submit(t, fe1, d.id, "a", map[string]any{"idempotency_key": "k-a"})
	if again.ID != a.ID {
		t.Fatalf("same key gave %s and %s", a.ID, again.ID)
	}
	var conflict downlink.ErrorBody
	if st := call(t, "POST", fe1.base()+"/v1/devices/mover/commands", "", map[string]any{"name": "other", "idempotency_key": "k-a"}, &conflict); st != http.StatusConflict || conflict.Code != downlink.CodeKeyReused {
		t.Fatalf("key reused for another command: HTTP %d %+v", st, conflict)
	}
	cancelled := submit(t, fe1, d.id, "cancel-me", nil)
	b := submit(t, fe1, d.id, "b", nil)
	var c downlink.CommandJSON
	if st := call(t, "DELETE", fe2.base()+"/v1/commands/"+cancelled.ID, "", nil, &c); st != http.StatusOK || c.State != "cancelled" {
		t.Fatalf("cancel: HTTP %d %+v", st, c)
	}
	if got := get(t, fe1, a.ID); got.State != "queued" {
		t.Fatalf("queued while away: %+v", got)
	}

	connect(t, fe2, d)
	waitState(t, fe1, b.ID, "acknowledged")
	waitState(t, fe1, a.ID, "acknowledged")
	if got, want := slices.Compact(d.ids()), []string{first.ID, a.ID, b.ID}; !slices.Equal(got, want) {
		t.Fatalf("device saw %v, want %v", got, want)
	}
	var e downlink.ErrorBody
	if st := call(t, "DELETE", fe2.base()+"/v1/commands/"+b.ID, "", nil, &e); st != http.StatusConflict || e.Code != downlink.CodeNotCancellable {
		t.Fatalf("cancel of an answered command: HTTP %d %+v", st, e)
	}
	if st := call(t, "GET", fe2.base()+"/v1/commands/cnosuchcommand", "", nil, &e); st != http.StatusNotFound || e.Code != downlink.CodeNotFound {
		t.Fatalf("unknown command: HTTP %d %+v", st, e)
	}
}

// TestDeviceOverlaps: a device whose new connection comes before its old
// one ends, at another frontend or the same one, is followed to the new
// one; when it leaves, its home lets it go and goes on serving.
func TestDeviceOverlaps(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	homes := []string{h.Addr}
	fe1, fe2 := startFrontend(t, "fe-1", homes, false), startFrontend(t, "fe-2", homes, false)
	for i, fes := range [][2]*testFrontend{{fe1, fe2}, {fe1, fe1}} {
		id := fmt.Sprintf("overlap-%d", i)
		old, cur := &device{id: id}, &device{id: id}
		connect(t, fes[0], old)
		waitPlaced(t, 1, h)
		// The home places the new connection when its frontend's word
		// comes, which nothing orders before the submit below: wait for it.
		before := testkit.Metric(t, h.Reg, "ingest_command_placements_total")
		connect(t, fes[1], cur)
		testkit.WaitFor(t, "the new connection placed", 10*time.Second, func() bool {
			return testkit.Metric(t, h.Reg, "ingest_command_placements_total") == before+1
		})
		c := submit(t, fes[0], cur.id, "to-the-new-one", nil)
		waitState(t, fes[0], c.ID, "acknowledged")
		if got := cur.ids(); !slices.Equal(got, []string{c.ID}) {
			t.Fatalf("new connection saw %v, want %v", got, []string{c.ID})
		}
		cur.disconnect()
		old.disconnect()
		waitPlaced(t, 0, h)
		// A full presence list (every 200 ms here) that no longer names
		// the device changes nothing.
		time.Sleep(500 * time.Millisecond)
		c = submit(t, fes[1], cur.id, "while-away", nil)
		if got := get(t, fes[0], c.ID); got.State != "queued" {
			t.Fatalf("submitted while away: %+v", got)
		}
	}
}

// TestHomeRestart: a home stopped and started again on its log keeps every
// command and its state; commands queued before the restart are delivered
// after it; while the home is down, submits for its devices are answered
// unavailable and change nothing.
func TestHomeRestart(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	d := &device{id: "dev-r"}
	connect(t, fe, d)
	done := submit(t, fe, d.id, "before", nil)
	waitState(t, fe, done.ID, "acknowledged")
	d.disconnect()
	queued := submit(t, fe, d.id, "queued", nil)
	expiring := submit(t, fe, d.id, "short", map[string]any{"ttl_ms": 1})

	h.Stop(t)
	var e downlink.ErrorBody
	if st := call(t, "POST", fe.base()+"/v1/devices/dev-r/commands", "", map[string]any{"name": "while-down"}, &e); st != http.StatusServiceUnavailable || e.Code != downlink.CodeUnavailable {
		t.Fatalf("submit while the home is down: HTTP %d %+v", st, e)
	}
	h.Start(t)

	if got := waitState(t, fe, done.ID, "acknowledged"); got.Status != "ok" {
		t.Fatalf("after restart: %+v", got)
	}
	waitState(t, fe, expiring.ID, "expired")
	connect(t, fe, d)
	waitState(t, fe, queued.ID, "acknowledged")
	var list struct{ Commands []downlink.CommandJSON }
	call(t, "GET", fe.base()+"/v1/devices/dev-r/commands", "", nil, &list)
	var names []string
	for _, c := range list.Commands {
		names = append(names, c.Name+"="+c.State)
	}
	if want := []string{"before=acknowledged", "queued=acknowledged", "short=expired"}; !slices.Equal(names, want) {
		t.Fatalf("commands %v, want %v", names, want)
	}
	if slices.Contains(d.ids(), expiring.ID) {
		t.Fatal("an expired command was delivered")
	}
}

// TestReservedFirstMemberIsData: with commands served, a data message whose
// first member is "__type" but which is no command_result is numbered as
// data and refused (invalid_field), as it is where commands are not
// served, so that the device and the frontend number the same frames.
// Before, the frontend took any frame led by "__type" for a command result
// and did not number it: the acknowledgement of the next message was read
// by the device as the refused message's.
func TestReservedFirstMemberIsData(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	d := &device{id: "dev-r"}
	connect(t, fe, d)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var se *client.ServerError
	if err := d.c.SendWait(ctx, []byte(`{"__type":"reading","v":1}`)); !errors.As(err, &se) || se.Code != protocol.CodeInvalidField {
		t.Fatalf("a message led by a reserved member: %v, want invalid_field", err)
	}
	if err := d.c.SendWait(ctx, []byte(`{"v":2}`)); err != nil {
		t.Fatalf("the next message: %v", err)
	}
}

// TestPayloadNotUTF8: a payload whose strings are not UTF-8 is refused
// (invalid_command), as the device could not read its command frame: a
// WebSocket text frame must be UTF-8, and the client drops a frame that
// is not. Before, it was accepted (encoding/json passes the bytes through)
// and handed on every redelivery interval until its TTL, and, one in
// flight at a time, every later command of the device waited behind it.
func TestPayloadNotUTF8(t *testing.T) {
	h := startHome(t, "home-1", command.Options{Redeliver: 200 * time.Millisecond})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	d := &device{id: "dev-u"}
	connect(t, fe, d)
	waitPlaced(t, 1, h)
	var e downlink.ErrorBody
	st := call(t, "POST", fe.base()+"/v1/devices/dev-u/commands", "", "{\"name\":\"bad\",\"payload\":\"a\xffb\"}", &e)
	if st != http.StatusBadRequest || e.Code != downlink.CodeInvalidCommand {
		t.Errorf("a payload not UTF-8: HTTP %d %+v, want 400 %s", st, e, downlink.CodeInvalidCommand)
	}
	// The device's next command is delivered and answered.
	c := submit(t, fe, "dev-u", "good", nil)
	var got downlink.CommandJSON
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if got = get(t, fe, c.ID); got.State == "acknowledged" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the command after it: %+v, want acknowledged (the device saw %v)", got, d.ids())
}
