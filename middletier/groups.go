package middletier

import (
	"maps"
	"slices"
	"time"

	"github.com/ingest-io/ingest/wire"
)

// Writer groups. The writers of a group share one consumer name, the
// group's, and so one checkpoint; each asks every middletier for the
// group's lease on its stream (wire.Lease), and the middletier grants it to
// one live member at a time. A member is live while it renews within
// Options.LeaseTTL. The lease goes to the live member whose rank in name
// order is the request's slot (the middletier's position in the writers'
// list) modulo the number of live members, so that writers with the same
// list divide the middletiers evenly; when the members change, a holder
// that is no longer the one chosen is told so (Revoked) and hands the
// stream over: it commits its last checkpoint and releases the lease, and
// the next member resumes from that checkpoint. A holder that stops
// renewing (killed) loses the lease when its time to live ends.
//
// Consumers that never ask for a lease fetch and commit as before: a
// group of one. For the groups named in Options.Consumers the live writers
// are counted all the same, from their connections that fetched or
// committed within the lease's time to live, so that a group with no live
// writer shows in ingest_middletier_group_writers whichever kind its
// writers are.

// group is what a middletier knows of one writer group. Guarded by
// Router.gmu.
type group struct {
	first   time.Time            // when a member asked while the group had none
	members map[string]time.Time // lease members: last request
	plain   map[string]time.Time // connections that fetched or committed without a lease: last message
	holder  string
	slot    uint64
	warned  bool // told it is not a durable consumer
}

// groupLocked returns the group named name, creating it.
func (r *Router) groupLocked(name string, now time.Time) *group {
	g := r.groups[name]
	if g == nil {
		g = &group{members: map[string]time.Time{}, plain: map[string]time.Time{}}
		r.groups[name] = g
	}
	return g
}

// expireLocked forgets members and connections silent for longer than the
// lease's time to live, and a holder among them.
func (r *Router) expireLocked(g *group, now time.Time) {
	for m, seen := range g.members {
		if now.Sub(seen) > r.opts.LeaseTTL {
			delete(g.members, m)
		}
	}
	for id, seen := range g.plain {
		if now.Sub(seen) > r.opts.LeaseTTL {
			delete(g.plain, id)
		}
	}
	if _, ok := g.members[g.holder]; !ok {
		g.holder = ""
	}
}

// chosen is the live member the lease goes to: the slot's rank in name
// order; "" with no live member.
func (g *group) chosen() string {
	if len(g.members) == 0 {
		return ""
	}
	names := slices.Sorted(maps.Keys(g.members))
	return names[g.slot%uint64(len(names))]
}

// writers is the group's live writers: its lease members, or, for a group
// that takes no lease, its connections.
func (g *group) writers() int {
	if len(g.members) > 0 {
		return len(g.members)
	}
	return len(g.plain)
}

// lease answers one lease request.
func (r *Router) lease(identity []byte, l *wire.Lease) {
	now := time.Now()
	r.gmu.Lock()
	g := r.groupLocked(l.Group, now)
	r.expireLocked(g, now)
	if len(g.members) == 0 {
		g.first = now
	}
	switch l.Op {
	case wire.LeaseHold, wire.LeaseRelease:
		g.members[l.Member] = now
		g.slot = l.Slot
		if l.Op == wire.LeaseRelease && g.holder == l.Member {
			g.holder = ""
		}
	case wire.LeaseLeave:
		delete(g.members, l.Member)
		if g.holder == l.Member {
			g.holder = ""
		}
	}
	chosen := g.chosen()
	// A grant to a group that had no member waits a moment, so that every
	// member has asked once: the members a middletier knows just after it
	// started, or just after its group was empty, are whoever asked first.
	// And nothing is granted for a whole LeaseTTL after the middletier
	// started: a lease it granted before a restart may still run (it lasts
	// LeaseTTL from its request), and its holder may not have asked yet.
	if g.holder == "" && chosen != "" && now.Sub(g.first) >= r.opts.LeaseTTL/2 && now.Sub(r.started) >= r.opts.LeaseTTL {
		g.holder = chosen
	}
	reply := &wire.LeaseReply{Middletier: r.opts.ID, Group: l.Group, Member: l.Member, Req: l.Req, Holder: g.holder,
		Writers: uint64(g.writers()), TTL: r.opts.LeaseTTL,
		Revoked: l.Op == wire.LeaseHold && g.holder == l.Member && chosen != l.Member}
	warn := !g.warned && !r.durable(l.Group)
	g.warned = true
	r.groupMetricsLocked(l.Group, g)
	r.gmu.Unlock()
	if warn {
		r.lg.Warn("middletier: a writer group that is not a durable consumer: entries are released before the group has them; name it in --consumers",
			"group", l.Group)
	}
	r.consumer.Send(identity, wire.Append(nil, reply))
}

// durable reports whether name is a durable consumer's (Options.Consumers).
func (r *Router) durable(name string) bool { return slices.Contains(r.opts.Consumers, name) }

// touch counts a fetch or commit of a durable consumer as its group's
// writer's sign of life.
func (r *Router) touch(consumer string, identity []byte) {
	if !r.durable(consumer) {
		return
	}
	now := time.Now()
	r.gmu.Lock()
	g := r.groupLocked(consumer, now)
	g.plain[string(identity)] = now
	r.expireLocked(g, now)
	r.groupMetricsLocked(consumer, g)
	r.gmu.Unlock()
}

// keepGroups expires silent members and holders and sets the groups'
// gauges; the state keeper calls it every second.
func (r *Router) keepGroups() {
	now := time.Now()
	r.gmu.Lock()
	defer r.gmu.Unlock()
	for name, g := range r.groups {
		r.expireLocked(g, now)
		if len(g.members) == 0 && len(g.plain) == 0 && !r.durable(name) {
			// A group that is not a durable consumer is forgotten once
			// it has no live writer, with its gauges: any connection may
			// ask under any name.
			delete(r.groups, name)
			r.m.groupWriters.DeleteLabelValues(name)
			if old, ok := r.holders[name]; ok {
				r.m.groupHolder.DeleteLabelValues(name, old)
				delete(r.holders, name)
			}
			continue
		}
		r.groupMetricsLocked(name, g)
	}
}

// groupMetricsLocked sets the group's gauges: its live writers, and the
// writer that holds its lease.
func (r *Router) groupMetricsLocked(name string, g *group) {
	r.m.groupWriters.WithLabelValues(name).Set(float64(g.writers()))
	if old, ok := r.holders[name]; ok && old != g.holder {
		r.m.groupHolder.DeleteLabelValues(name, old)
		delete(r.holders, name)
	}
	if g.holder != "" {
		r.m.groupHolder.WithLabelValues(name, g.holder).Set(1)
		r.holders[name] = g.holder
	}
}
