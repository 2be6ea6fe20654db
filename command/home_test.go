package command_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// startHome runs a real home (commandtest.Home) as "home-1", with nothing
// handed on again and no frontend forgotten unless a test asks.
func startHome(t *testing.T, o command.Options, wo wal.Options) *commandtest.Home {
	t.Helper()
	o.ID = "home-1"
	if o.Redeliver == 0 {
		o.Redeliver = time.Minute
	}
	if o.PresenceTimeout == 0 {
		o.PresenceTimeout = time.Minute
	}
	return commandtest.Start(t, o, wo)
}

// frontend speaks the home's wire messages as a frontend's downlink.Link
// does, over a real DEALER, and keeps the deliveries apart from replies.
type frontend struct {
	p         *testkit.Peer
	req       uint64
	delivered []wire.Command
}

func dialFrontend(t *testing.T, th *commandtest.Home, id string) *frontend {
	t.Helper()
	return &frontend{p: testkit.Dealer(t, th.Addr, id)}
}

// next waits for the next message from the home.
func (f *frontend) next(t *testing.T) wire.Message {
	t.Helper()
	select {
	case msg, ok := <-f.p.Msgs:
		if !ok {
			t.Fatal("socket closed")
		}
		m, err := wire.Decode(msg.Frames[len(msg.Frames)-1])
		if err != nil {
			t.Fatalf("undecodable message: %v", err)
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message from the home within 10s")
	}
	return nil
}

// ask sends m, whose Req it sets, and waits for its Reply; deliveries that
// come meanwhile are kept for deliver.
func (f *frontend) ask(t *testing.T, m wire.Message) *wire.Reply {
	t.Helper()
	f.req++
	switch m := m.(type) {
	case *wire.Submit:
		m.Req = f.req
	case *wire.Query:
		m.Req = f.req
	}
	f.p.Send(t, m)
	for {
		switch m := f.next(t).(type) {
		case *wire.Reply:
			if m.Req == f.req {
				return m
			}
		case *wire.Deliver:
			f.delivered = append(f.delivered, m.Commands...)
		}
	}
}

// deliver waits for the next command handed to this frontend.
func (f *frontend) deliver(t *testing.T) wire.Command {
	t.Helper()
	return f.deliverFor(t, "")
}

// deliverFor waits for the next command handed to this frontend for
// device ("": any).
func (f *frontend) deliverFor(t *testing.T, device string) wire.Command {
	t.Helper()
	for {
		for i, c := range f.delivered {
			if device == "" || c.Device == device {
				f.delivered = slices.Delete(f.delivered, i, i+1)
				return c
			}
		}
		if d, ok := f.next(t).(*wire.Deliver); ok {
			f.delivered = append(f.delivered, d.Commands...)
		}
	}
}

func (f *frontend) submit(t *testing.T, s wire.Submit) wire.Command {
	t.Helper()
	r := f.ask(t, &s)
	if r.Code != "" || len(r.Commands) != 1 {
		t.Fatalf("submit %+v: reply %+v", s, r)
	}
	return r.Commands[0]
}

func (f *frontend) get(t *testing.T, cid string) *wire.Reply {
	t.Helper()
	return f.ask(t, &wire.Query{Op: wire.QueryGet, CID: cid})
}

func (f *frontend) list(t *testing.T, device string, state wire.CommandState) []string {
	t.Helper()
	r := f.ask(t, &wire.Query{Op: wire.QueryList, Device: device, State: state})
	var ids []string
	for _, c := range r.Commands {
		ids = append(ids, c.ID)
	}
	return ids
}

func (f *frontend) place(t *testing.T, device string, since int64) {
	t.Helper()
	f.p.Send(t, &wire.Presence{Frontend: "fe", Devices: []wire.Place{{Device: device, Since: since, Present: true}}})
}

func (f *frontend) answer(t *testing.T, device, cid, status string) {
	t.Helper()
	f.p.Send(t, &wire.Result{Device: device, CID: cid, Status: status, Payload: []byte(`{"done":true}`)})
}

func (f *frontend) waitState(t *testing.T, cid string, s wire.CommandState) wire.Command {
	t.Helper()
	var c wire.Command
	testkit.WaitFor(t, cid+" "+s.String(), 10*time.Second, func() bool {
		r := f.get(t, cid)
		if r.Code != "" {
			t.Fatalf("get %s: %+v", cid, r)
		}
		c = r.Commands[0]
		return c.State == s
	})
	return c
}

// TestOrderPerDevice: a device's commands, queued while it is nowhere, are
// handed on in the order accepted, one at a time (MaxInFlight 1), the next
// only once the one before is answered; another device's are its own.
func TestOrderPerDevice(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	var want []string
	for i := range 5 {
		want = append(want, fe.submit(t, wire.Submit{Device: "d1", Name: fmt.Sprintf("c%d", i)}).ID)
	}
	other := fe.submit(t, wire.Submit{Device: "d2", Name: "x"}).ID
	if got := fe.list(t, "d1", wire.StateQueued); !slices.Equal(got, want) {
		t.Fatalf("queued %q, want %q in the order accepted", got, want)
	}
	fe.place(t, "d1", 1)
	for i, id := range want {
		c := fe.deliverFor(t, "d1")
		if c.ID != id || c.Device != "d1" || c.Name != fmt.Sprintf("c%d", i) {
			t.Fatalf("delivery %d: %+v, want %s", i, c, id)
		}
		if got := fe.waitState(t, id, wire.StateSent); got.Sent == 0 {
			t.Fatalf("%s sent without a time: %+v", id, got)
		}
		for _, o := range fe.delivered {
			if o.Device == "d1" {
				t.Fatalf("handed on %+v while %s is unanswered", o, id)
			}
		}
		fe.answer(t, "d1", id, "ok")
		if i == 2 {
			fe.place(t, "d2", 1)
			if c := fe.deliverFor(t, "d2"); c.ID != other {
				t.Fatalf("d2 got %+v, want %s", c, other)
			}
		}
	}
	last := fe.waitState(t, want[4], wire.StateAcknowledged)
	if last.Status != "ok" || string(last.Result) != `{"done":true}` || last.Done == 0 {
		t.Fatalf("answered command: %+v", last)
	}
	if got := fe.list(t, "d1", 0); !slices.Equal(got, want) {
		t.Fatalf("listed %q, want %q", got, want)
	}
	if got := fe.list(t, "d1", wire.StateAcknowledged); !slices.Equal(got, want) {
		t.Fatalf("acknowledged %q, want %q", got, want)
	}
	// A status other than ok fails the command; a repeat answer changes
	// nothing.
	id := fe.submit(t, wire.Submit{Device: "d1", Name: "bad"}).ID
	fe.deliver(t)
	fe.answer(t, "d1", id, "unsupported")
	if c := fe.waitState(t, id, wire.StateFailed); c.Status != "unsupported" {
		t.Fatalf("failed command: %+v", c)
	}
	fe.answer(t, "d1", id, "ok")
	testkit.WaitFor(t, "the repeat answer counted", 10*time.Second, func() bool {
		return testkit.Metric(t, th.Reg, "ingest_command_repeat_results_total") == 1
	})
	if c := fe.get(t, id).Commands[0]; c.State != wire.StateFailed {
		t.Fatalf("a repeat answer changed %+v", c)
	}
}

// TestTTLExpiry: a command whose time to live ends before its device is
// anywhere expires and is never sent; the one after it is.
func TestTTLExpiry(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	short := fe.submit(t, wire.Submit{Device: "d1", Name: "short", TTLMS: 1})
	if short.Expires-short.Created != int64(time.Millisecond) {
		t.Fatalf("ttl 1 ms gave created %d expires %d", short.Created, short.Expires)
	}
	long := fe.submit(t, wire.Submit{Device: "d1", Name: "long"})
	// A Home runs once: a second Run is refused, and leaves the first
	// one (which answered the submits) running (it closed the loop's stop channel, which the first
	// Run closed again at its end: a panic).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := th.Home.Run(ctx); err == nil {
		t.Fatal("a second Run of a home: no error")
	}
	if d := time.Duration(long.Expires - long.Created); d != command.DefaultOptions().DefaultTTL {
		t.Fatalf("no ttl gave %s, want the default", d)
	}
	if c := fe.waitState(t, short.ID, wire.StateExpired); c.Sent != 0 || c.Done == 0 {
		t.Fatalf("expired command: %+v", c)
	}
	fe.place(t, "d1", 1)
	if c := fe.deliver(t); c.ID != long.ID {
		t.Fatalf("delivered %+v, want %s (the expired one is never sent)", c, long.ID)
	}
	if n := testkit.Metric(t, th.Reg, "ingest_command_expired_total"); n != 1 {
		t.Fatalf("expired_total %v", n)
	}
	// A ttl past the bound is refused.
	th2 := startHome(t, command.Options{MaxTTL: time.Hour}, wal.Options{})
	fe2 := dialFrontend(t, th2, "fe#2")
	if r := fe2.ask(t, &wire.Submit{Device: "d1", Name: "n", TTLMS: uint64(2 * time.Hour / time.Millisecond)}); r.Code != wire.CodeInvalid {
		t.Fatalf("ttl over the bound: %+v", r)
	}
	// A command without a ttl lives no longer than the bound either: the
	// default (24 h) is cut to it.
	if c := fe2.submit(t, wire.Submit{Device: "d1", Name: "n"}); time.Duration(c.Expires-c.Created) != time.Hour {
		t.Fatalf("no ttl under a bound of 1h gave %s", time.Duration(c.Expires-c.Created))
	}
}

// TestExpiredNeverHandedOn: a queued command whose time to live has
// ended is not handed to its device placed before the sweep (every 100
// ms) has expired it, and nothing behind it goes first. Each device is
// placed 2 ms after its command expired: before the sweep, in all but a
// few runs in a hundred. The home used to hand it on, still queued.
func TestExpiredNeverHandedOn(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	handed := 0
	for i := range 6 {
		dev := fmt.Sprintf("d%d", i)
		c := fe.submit(t, wire.Submit{Device: dev, Name: "short", TTLMS: 150})
		later := fe.submit(t, wire.Submit{Device: dev, Name: "later"})
		time.Sleep(time.Until(time.Unix(0, c.Expires)) + 2*time.Millisecond)
		fe.place(t, dev, 1)
		d := fe.deliverFor(t, dev)
		if d.ID == c.ID {
			handed++
			t.Errorf("%s, expired, handed to %s in state %v", c.ID, dev, d.State)
			d = fe.deliverFor(t, dev)
		}
		if d.ID != later.ID {
			t.Fatalf("delivered %+v to %s, want %s", d, dev, later.ID)
		}
		fe.waitState(t, c.ID, wire.StateExpired)
	}
	if handed > 0 {
		t.Fatalf("%d of 6 expired commands handed on", handed)
	}
}

// TestIdempotencyKey: a Submit with a key the device has used gives the
// command of the first, before and after a restart; the same key with
// another payload is refused; another device's key is its own.
func TestIdempotencyKey(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	s := wire.Submit{Device: "d1", Name: "set", Payload: []byte(`{"v":1}`), Key: "k1"}
	first := fe.submit(t, s)
	if again := fe.submit(t, s); again.ID != first.ID {
		t.Fatalf("same key: %s, then %s", first.ID, again.ID)
	}
	if other := fe.submit(t, wire.Submit{Device: "d2", Name: "set", Payload: []byte(`{"v":1}`), Key: "k1"}); other.ID == first.ID {
		t.Fatal("another device's key gave the same command")
	}
	// Device ids and keys may hold any byte but a key's first: no pair
	// of them spells another's.
	if a, b := fe.submit(t, wire.Submit{Device: "a", Name: "set", Key: "b\x00k"}), fe.submit(t, wire.Submit{Device: "a\x00b", Name: "set", Key: "k"}); a.ID == b.ID || b.Device != "a\x00b" {
		t.Fatalf("device a with key b\\x00k and device a\\x00b with key k: %+v, then %+v", a, b)
	}
	changed := s
	changed.Payload = []byte(`{"v":2}`)
	if r := fe.ask(t, &changed); r.Code != command.CodeKeyReused || len(r.Commands) != 1 || r.Commands[0].ID != first.ID {
		t.Fatalf("key with another payload: %+v", r)
	}
	if got := fe.list(t, "d1", 0); len(got) != 1 {
		t.Fatalf("d1 has %q, want one command", got)
	}
	th.Stop(t)
	th.Start(t)
	fe = dialFrontend(t, th, "fe#2")
	if again := fe.submit(t, s); again.ID != first.ID {
		t.Fatalf("same key after a restart: %s, then %s", first.ID, again.ID)
	}
	// The key holds after the command's end too.
	fe.place(t, "d1", 1)
	fe.answer(t, "d1", fe.deliver(t).ID, "ok")
	fe.waitState(t, first.ID, wire.StateAcknowledged)
	if again := fe.submit(t, s); again.ID != first.ID || again.State != wire.StateAcknowledged {
		t.Fatalf("same key after the answer: %+v", again)
	}
}

// TestCancel: only a queued command can be cancelled; a cancelled one is
// never sent, also after a restart; cancelling it again answers it again.
func TestCancel(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe := dialFrontend(t, th, "fe#1")
	a := fe.submit(t, wire.Submit{Device: "d1", Name: "a"})
	b := fe.submit(t, wire.Submit{Device: "d1", Name: "b"})
	c := fe.submit(t, wire.Submit{Device: "d1", Name: "c"})
	cancel := func(cid string) *wire.Reply { return fe.ask(t, &wire.Query{Op: wire.QueryCancel, CID: cid}) }
	if r := cancel(a.ID); r.Code != "" || r.Commands[0].State != wire.StateCancelled || r.Commands[0].Done == 0 {
		t.Fatalf("cancel queued: %+v", r)
	}
	if r := cancel(a.ID); r.Code != "" || r.Commands[0].State != wire.StateCancelled {
		t.Fatalf("cancel again: %+v", r)
	}
	if r := cancel("cnothere"); r.Code != wire.CodeNotFound {
		t.Fatalf("cancel unknown: %+v", r)
	}
	th.Stop(t)
	th.Start(t)
	fe = dialFrontend(t, th, "fe#2")
	if r := fe.get(t, a.ID); r.Code != "" || r.Commands[0].State != wire.StateCancelled {
		t.Fatalf("after a restart: %+v", r)
	}
	fe.place(t, "d1", 1)
	if got := fe.deliver(t); got.ID != b.ID {
		t.Fatalf("delivered %+v, want %s: the cancelled one is never sent", got, b.ID)
	}
	fe.waitState(t, b.ID, wire.StateSent)
	if r := cancel(b.ID); r.Code != wire.CodeNotCancellable || r.Commands[0].State != wire.StateSent {
		t.Fatalf("cancel sent: %+v", r)
	}
	fe.answer(t, "d1", b.ID, "ok")
	if got := fe.deliver(t); got.ID != c.ID {
		t.Fatalf("delivered %+v, want %s", got, c.ID)
	}
	fe.answer(t, "d1", c.ID, "ok")
	fe.waitState(t, c.ID, wire.StateAcknowledged)
	if r := cancel(c.ID); r.Code != wire.CodeNotCancellable {
		t.Fatalf("cancel answered: %+v", r)
	}
}

// TestCompaction: commands that ended and passed Options.Retain leave the
// log: it stays within twice the commands kept plus CompactEntries however
// many pass, its segments are truncated, and the commands kept are whole
// and in order after a restart.
func TestCompaction(t *testing.T) {
	const compactEntries = 20
	th := startHome(t, command.Options{Retain: time.Nanosecond, CompactEntries: compactEntries}, wal.Options{SegmentBytes: 4096})
	fe := dialFrontend(t, th, "fe#1")
	// Kept throughout: queued for a device that never connects.
	var kept []string
	for i := range 3 {
		kept = append(kept, fe.submit(t, wire.Submit{Device: "waits", Name: fmt.Sprintf("k%d", i), Payload: []byte(`{"i":1}`)}).ID)
	}
	const passing = 200
	var gone []string
	for i := range passing {
		c := fe.submit(t, wire.Submit{Device: "d1", Name: "p", Key: fmt.Sprintf("key-%d", i)})
		if r := fe.ask(t, &wire.Query{Op: wire.QueryCancel, CID: c.ID}); r.Code != "" {
			t.Fatalf("cancel: %+v", r)
		}
		gone = append(gone, c.ID)
	}
	testkit.WaitFor(t, "a compaction", 10*time.Second, func() bool {
		return testkit.Metric(t, th.Reg, "ingest_command_compactions_total") >= 1
	})
	testkit.WaitFor(t, "the log released down to the kept commands", 10*time.Second, func() bool {
		n, _ := th.Log.Depth()
		return n <= int64(2*len(kept)+compactEntries)
	})
	ents, err := os.ReadDir(th.Dir)
	if err != nil {
		t.Fatal(err)
	}
	// 403 entries of ~80 bytes took ~8 segments of 4 KiB; what is left,
	// at most 2*3+20 entries, spans two.
	testkit.WaitFor(t, "released segments truncated", 10*time.Second, func() bool {
		ents, err = os.ReadDir(th.Dir)
		segments := 0
		for _, e := range ents {
			if n := e.Name(); len(n) == 20 && strings.Trim(n, "0123456789") == "" {
				segments++
			}
		}
		return err == nil && segments <= 2
	})
	if r := fe.get(t, gone[0]); r.Code != wire.CodeNotFound {
		t.Fatalf("a command past its retention: %+v", r)
	}
	th.Stop(t)
	th.Start(t)
	fe = dialFrontend(t, th, "fe#2")
	if got := fe.list(t, "waits", wire.StateQueued); !slices.Equal(got, kept) {
		t.Fatalf("after compaction and restart: queued %q, want %q", got, kept)
	}
	for _, id := range []string{gone[0], gone[passing-1]} {
		if r := fe.get(t, id); r.Code != wire.CodeNotFound {
			t.Fatalf("%s came back: %+v", id, r)
		}
	}
	fe.place(t, "waits", 1)
	if c := fe.deliver(t); c.ID != kept[0] || string(c.Payload) != `{"i":1}` || c.Name != "k0" {
		t.Fatalf("first kept command delivered as %+v", c)
	}
}

// TestFullLog: a home refuses a submit that would take the commands it
// keeps past a quarter of its log's bound (full): a command counts its
// payload and room for its device's answer. It goes on serving: it hands
// on, finishes and forgets what it keeps, and its log, which compacts
// whenever a round would take it past half its bound, never fills, though
// more than its bound in commands and answers passes through it; and after
// a restart with the log as full as the home lets it be, the home serves
// again. Before, the append that found the log full stopped the home (Run
// returned wal.ErrFull), and a restarted home stopped at its first change;
// and answers of 15 KiB to small commands took what the home keeps past
// the bound.
func TestFullLog(t *testing.T) {
	const bound = 256 << 10
	th := startHome(t, command.Options{Retain: time.Nanosecond}, wal.Options{MaxBytes: bound, SegmentBytes: 32 << 10})
	fe := dialFrontend(t, th, "fe#1")
	fe.place(t, "d1", 1)
	payload := []byte(`"` + strings.Repeat("x", 2<<10) + `"`)
	result := []byte(`"` + strings.Repeat("r", 15<<10) + `"`)
	passed, refused, n := 0, 0, 0
	submit := func() *wire.Reply {
		n++
		r := fe.ask(t, &wire.Submit{Device: "d1", Name: "big", Payload: payload, Key: fmt.Sprint(n)})
		switch {
		case r.Code == wire.CodeFull:
			refused++
		case r.Code != "":
			t.Fatalf("submit: %+v", r)
		}
		return r
	}
	for passed < bound*5/4 {
		// Finished commands are forgotten once a second (Retain 1 ns).
		testkit.WaitFor(t, "room for a command", 5*time.Second, func() bool { return submit().Code == "" })
		accepted := 1
		for submit().Code == "" {
			accepted++
		}
		if accepted*(len(payload)+protocol.MaxCommandPayloadBytes) > bound/4 {
			t.Fatalf("%d commands of %d bytes, with room for their answers, kept in a log of %d bytes", accepted, len(payload), bound)
		}
		for range accepted {
			c := fe.deliverFor(t, "d1")
			fe.p.Send(t, &wire.Result{Device: "d1", CID: c.ID, Status: "ok", Payload: result})
			fe.waitState(t, c.ID, wire.StateAcknowledged)
		}
		passed += accepted * (len(payload) + len(result))
	}
	if got := testkit.Metric(t, th.Reg, "ingest_command_refused_full_total"); got != float64(refused) || refused == 0 {
		t.Fatalf("refused %d submits, counted %v", refused, got)
	}
	_, depth := th.Log.Depth()
	t.Logf("%d bytes of commands and answers passed through a log of %d; %d submits refused; %d bytes unreleased at the end", passed, bound, refused, depth)

	// Full again, with nothing finishing: a restarted home serves, and
	// takes the answers.
	testkit.WaitFor(t, "room for a command", 5*time.Second, func() bool { return submit().Code == "" })
	for submit().Code == "" {
	}
	th.Stop(t)
	th.Start(t)
	fe = dialFrontend(t, th, "fe#2")
	fe.place(t, "d1", 2)
	for range 2 {
		c := fe.deliverFor(t, "d1")
		fe.p.Send(t, &wire.Result{Device: "d1", CID: c.ID, Status: "ok", Payload: result})
		fe.waitState(t, c.ID, wire.StateAcknowledged)
	}
}

// TestAnswersWithinTheBound: a device's answer, up to 16 KiB, which the
// home cannot refuse, has its room kept from the command's submit on:
// small commands answered with 15 KiB payloads keep the home within its
// log's bound. Before, small commands were admitted by their own size, and
// twenty answers took what the home keeps past the bound: the compaction
// could not be appended and Run stopped.
func TestAnswersWithinTheBound(t *testing.T) {
	const bound = 256 << 10
	th := startHome(t, command.Options{}, wal.Options{MaxBytes: bound, SegmentBytes: 32 << 10})
	fe := dialFrontend(t, th, "fe#1")
	var ids []string
	for i := range 20 {
		dev := fmt.Sprintf("d%d", i)
		r := fe.ask(t, &wire.Submit{Device: dev, Name: "small"})
		if r.Code == wire.CodeFull {
			break
		}
		if r.Code != "" {
			t.Fatalf("submit: %+v", r)
		}
		fe.place(t, dev, 1)
		ids = append(ids, r.Commands[0].ID)
	}
	result := []byte(`"` + strings.Repeat("r", 15<<10) + `"`)
	for i, id := range ids {
		dev := fmt.Sprintf("d%d", i)
		if c := fe.deliverFor(t, dev); c.ID != id {
			t.Fatalf("delivered %+v", c)
		}
		fe.p.Send(t, &wire.Result{Device: dev, CID: id, Status: "ok", Payload: result})
		fe.waitState(t, id, wire.StateAcknowledged)
	}
	fe.submit(t, wire.Submit{Device: "d0", Name: "after"}) // the home still serves
}

// TestExpiredSentNeverSentAgain: a sent command whose device moves after
// its time to live ended, before the sweep expires it, is not handed to
// the device's new place: a command past its TTL is never sent again.
func TestExpiredSentNeverSentAgain(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	fe1 := dialFrontend(t, th, "fe#1")
	fe2 := dialFrontend(t, th, "fe#2")
	for i := range 6 {
		dev := fmt.Sprintf("d%d", i)
		fe1.place(t, dev, 1)
		c := fe1.submit(t, wire.Submit{Device: dev, Name: "short", TTLMS: 300})
		if got := fe1.deliverFor(t, dev); got.ID != c.ID {
			t.Fatalf("delivered %+v", got)
		}
		time.Sleep(time.Until(time.Unix(0, c.Expires)) + 3*time.Millisecond)
		fe2.place(t, dev, 2) // the device moves, its command past its TTL
		fe2.waitState(t, c.ID, wire.StateExpired)
		for _, d := range fe2.delivered {
			if d.ID == c.ID {
				t.Fatalf("%s sent again to %s's new place after its TTL ended", c.ID, dev)
			}
		}
	}
}

// TestStopUnderLoad: a home stopped while it appends rounds returns no
// error: a round once begun is made durable whole. Before, the append saw
// the context end and Run returned "context canceled".
func TestStopUnderLoad(t *testing.T) {
	for i := range 20 {
		th := startHome(t, command.Options{}, wal.Options{})
		fe := dialFrontend(t, th, "fe#1")
		for j := range 200 {
			fe.p.Send(t, &wire.Submit{Req: uint64(j + 1), Device: "d1", Name: "n", Key: fmt.Sprint(j)})
		}
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		th.Stop(t) // an error from Run fails the test
		if t.Failed() {
			t.Fatalf("stop %d returned an error", i)
		}
	}
}

// TestSubmitPayloadNotUTF8: the home refuses a payload that is JSON to
// json.Valid but holds bytes that are not UTF-8 in a string: its device
// could not read the command frame, and it would be handed on again and
// again until its TTL, the device's later commands behind it.
func TestSubmitPayloadNotUTF8(t *testing.T) {
	th := startHome(t, command.Options{}, wal.Options{})
	f := dialFrontend(t, th, "fe")
	if r := f.ask(t, &wire.Submit{Device: "d", Name: "n", Payload: []byte("{\"s\":\"a\xffb\"}")}); r.Code != wire.CodeInvalid {
		t.Fatalf("a payload not UTF-8: reply %+v, want %s", r, wire.CodeInvalid)
	}
	if ids := f.list(t, "d", 0); len(ids) != 0 {
		t.Fatalf("kept %v", ids)
	}
}
