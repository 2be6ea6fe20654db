package middletier_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// member is one writer of a group, asking a middletier for its lease.
type member struct {
	t    *testing.T
	name string
	p    *testkit.Peer
	req  uint64
}

func newMember(t *testing.T, tr *testkit.Middletier, name string) *member {
	return &member{t: t, name: name, p: dealer(t, tr.Addrs.Consumer, "g#"+name)}
}

// ask sends a lease request and returns its reply.
func (m *member) ask(op uint8, slot uint64) *wire.LeaseReply {
	m.t.Helper()
	m.req++
	m.p.Send(m.t, &wire.Lease{Group: "g", Member: m.name, Req: m.req, Slot: slot, Op: op})
	for {
		r := testkit.Next[*wire.LeaseReply](m.t, m.p)
		if r.Req == m.req {
			if r.Group != "g" || r.Member != m.name || r.Middletier != "mt-test" {
				m.t.Fatalf("reply %+v to %s", r, m.name)
			}
			return r
		}
	}
}

// TestWriterGroupLease: a middletier grants a group's lease to one member
// at a time, the member the slot chooses among the live ones; a holder no
// longer chosen is told so and hands over by releasing; a member that
// stops renewing loses the lease and its place; the gauges show the live
// writers and the holder, and a durable consumer with no writer shows 0.
func TestWriterGroupLease(t *testing.T) {
	const ttl = 600 * time.Millisecond
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"g", "plain"}, LeaseTTL: ttl}, wal.Options{})
	writers := func() map[string]float64 {
		return testkit.Gauges(t, tr.Reg, "ingest_middletier_group_writers", "group")
	}
	if w := writers(); w["g"] != 0 || w["plain"] != 0 || len(w) != 2 {
		t.Fatalf("writers at start: %v", w)
	}

	a, b := newMember(t, tr, "a"), newMember(t, tr, "b")
	// A group's first grant waits half a time to live.
	testkit.WaitFor(t, "a's first grant", 5*time.Second, func() bool { return a.ask(wire.LeaseHold, 0).Holder == "a" })
	if r := b.ask(wire.LeaseHold, 0); r.Holder != "a" || r.Writers != 2 || r.TTL != ttl || r.Revoked {
		t.Fatalf("b, slot 0: %+v", r)
	}
	if r := a.ask(wire.LeaseHold, 0); r.Holder != "a" || r.Revoked {
		t.Fatalf("a, slot 0, still chosen: %+v", r)
	}
	if h := testkit.Gauges(t, tr.Reg, "ingest_middletier_group_holder", "group", "writer"); len(h) != 1 || h["g/a"] != 1 {
		t.Fatalf("holder gauge: %v", h)
	}

	// Slot 1 chooses b: a is told, keeps the lease until it releases it,
	// and then b has it.
	if r := b.ask(wire.LeaseHold, 1); r.Holder != "a" {
		t.Fatalf("b, slot 1, before the hand-over: %+v", r)
	}
	if r := a.ask(wire.LeaseHold, 1); r.Holder != "a" || !r.Revoked {
		t.Fatalf("a, slot 1: %+v, want revoked", r)
	}
	if r := a.ask(wire.LeaseRelease, 1); r.Holder != "b" || r.Revoked {
		t.Fatalf("a's release: %+v", r)
	}
	if r := b.ask(wire.LeaseHold, 1); r.Holder != "b" || r.Revoked || r.Writers != 2 {
		t.Fatalf("b after the hand-over: %+v", r)
	}
	if h := testkit.Gauges(t, tr.Reg, "ingest_middletier_group_holder", "group", "writer"); len(h) != 1 || h["g/b"] != 1 {
		t.Fatalf("holder gauge: %v", h)
	}

	// b stops renewing (killed): after its time to live a has the lease,
	// whatever the slot says of a group of two.
	testkit.WaitFor(t, "b's lease to expire", 10*time.Second, func() bool {
		return a.ask(wire.LeaseHold, 1).Holder == "a"
	})
	if r := a.ask(wire.LeaseHold, 1); r.Writers != 1 || r.Revoked {
		t.Fatalf("a alone: %+v", r)
	}
	if w := writers(); w["g"] != 1 {
		t.Fatalf("writers with a alone: %v", w)
	}

	// a leaves: no holder, no writer.
	if r := a.ask(wire.LeaseLeave, 1); r.Holder != "" || r.Writers != 0 {
		t.Fatalf("a's leave: %+v", r)
	}
	if h := testkit.Gauges(t, tr.Reg, "ingest_middletier_group_holder", "group", "writer"); len(h) != 0 {
		t.Fatalf("holder gauge with no holder: %v", h)
	}

	// A consumer that takes no lease is a group of one: its fetches show
	// it live, and it is forgotten when it goes silent.
	c := dealer(t, tr.Addrs.Consumer, "plain#1")
	c.Send(t, &wire.Fetch{Consumer: "plain", From: 0, Max: 0})
	testkit.Next[*wire.FetchReply](t, c)
	if w := writers(); w["plain"] != 1 || w["g"] != 0 {
		t.Fatalf("writers after a plain fetch: %v", w)
	}
	testkit.WaitFor(t, "the plain consumer to be forgotten", 10*time.Second, func() bool { return writers()["plain"] == 0 })
}

// TestNoGrantWhileAnEarlierLeaseMayRun: member a holds the lease, which
// lasts LeaseTTL from a's request; the middletier restarts at once, and
// only b asks the new one (a's requests do not arrive: a one-sided
// partition). b must not be granted the lease before a's may have run
// out. Before, the new middletier granted it after LeaseTTL/2.
func TestNoGrantWhileAnEarlierLeaseMayRun(t *testing.T) {
	const ttl = 2 * time.Second
	tr := startTier(t, t.TempDir(), middletier.Options{ID: "mt-test", Consumers: []string{"g"}, LeaseTTL: ttl}, wal.Options{})
	a := newMember(t, tr, "a")
	var aSent time.Time
	for {
		aSent = time.Now()
		if a.ask(wire.LeaseHold, 0).Holder == "a" {
			break
		}
		time.Sleep(ttl / 10)
	}
	aUntil := aSent.Add(ttl)
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	tr.Start(t)
	b := newMember(t, tr, "b")
	for end := time.Now().Add(5 * ttl); ; {
		if time.Now().After(end) {
			t.Fatalf("b was never granted the lease")
		}
		if b.ask(wire.LeaseHold, 0).Holder == "b" {
			if early := time.Until(aUntil); early > 0 {
				t.Fatalf("b was granted the lease %v before a's, granted before the restart, may have run out", early)
			}
			return
		}
		time.Sleep(ttl / 20)
	}
}

// TestGroupsForgotten: a group that is not a durable consumer is forgotten,
// with its gauges, once it has no live writer, so that lease requests under
// ever new names (any connection may send them) do not grow the
// middletier's memory and metrics without bound. A durable consumer's
// group stays, showing 0 writers.
func TestGroupsForgotten(t *testing.T) {
	const ttl = 200 * time.Millisecond
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"g"}, LeaseTTL: ttl}, wal.Options{})
	p := dealer(t, tr.Addrs.Consumer, "x#1")
	const n = 50
	for i := range n {
		name := fmt.Sprintf("x%d", i)
		p.Send(t, &wire.Lease{Group: name, Member: "m", Req: uint64(i + 1), Op: wire.LeaseHold})
		if r := testkit.Next[*wire.LeaseReply](t, p); r.Group != name || r.Writers != 1 {
			t.Fatalf("reply to %s: %+v", name, r)
		}
	}
	if w := testkit.Gauges(t, tr.Reg, "ingest_middletier_group_writers", "group"); len(w) != n+1 || w["x0"] != 1 {
		t.Fatalf("writers with %d groups asking: %d series, x0 %v", n, len(w), w["x0"])
	}
	testkit.WaitFor(t, "the silent groups forgotten", 10*time.Second, func() bool {
		return len(testkit.Gauges(t, tr.Reg, "ingest_middletier_group_writers", "group")) == 1
	})
	if w := testkit.Gauges(t, tr.Reg, "ingest_middletier_group_writers", "group"); w["g"] != 0 || len(w) != 1 {
		t.Fatalf("writers after the groups fell silent: %v", w)
	}
	// A forgotten group that asks again starts afresh: its first grant
	// waits half a time to live, as for a new group.
	testkit.WaitFor(t, "x0's grant after it was forgotten", 5*time.Second, func() bool {
		p.Send(t, &wire.Lease{Group: "x0", Member: "m", Req: 1000, Op: wire.LeaseHold})
		for {
			if r := testkit.Next[*wire.LeaseReply](t, p); r.Req == 1000 {
				return r.Holder == "m"
			}
		}
	})
}
