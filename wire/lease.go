package wire

import "time"

// Lease messages let the writers of a group divide the middletiers'
// streams: each writer asks every middletier for the group's lease on its
// stream, and a middletier grants it to one live writer of the group at a
// time. The group's name is its consumer name: the group's checkpoint is
// the consumer's, so a writer that takes the lease over resumes from what
// the writer before it committed. Consumers that never ask for a lease
// (every consumer before leases existed) fetch and commit as before: a
// group of one.
const (
	KindLease      Kind = 16 // consumer → middletier: ask for, keep or give up a group's lease
	KindLeaseReply Kind = 17 // middletier → consumer: who holds the lease
)

// Lease operations.
const (
	// LeaseHold asks for the lease, or keeps it: the writer stays a live
	// member of the group for the lease's time to live.
	LeaseHold = 1
	// LeaseRelease gives the lease up (after a revocation, once the last
	// checkpoint is committed); the writer stays a member.
	LeaseRelease = 2
	// LeaseLeave gives the lease up and leaves the group (a writer that
	// stops).
	LeaseLeave = 3
)

const leaseVersion = 1

// MaxLeaseTTL bounds a lease's time to live on the wire.
const MaxLeaseTTL = time.Hour

// Lease is a writer's request about its group's lease on the stream of
// the middletier it is sent to. Member names the writer within the group
// for as long as it runs; Req numbers the request, and the reply carries
// it back, so that a writer measures its lease from the request's sending.
// Slot is the middletier's position in the writer's list of middletiers:
// the middletier grants the lease to the live member whose rank in name
// order is Slot modulo the number of live members, so that writers with
// the same list divide the middletiers evenly.
type Lease struct {
	Group  string
	Member string
	Req    uint64
	Slot   uint64
	Op     uint8
}

// LeaseReply answers a Lease: Middletier is the answering middletier's
// id, Holder is the member that holds the group's
// lease ("" for none; the asker holds it if it is its own name), Writers
// the group's live members at this middletier, and TTL how long the lease
// lasts from the request's sending unless renewed. Revoked says the asker
// holds the lease but should hand it over to another member: it commits
// its last checkpoint and sends LeaseRelease.
type LeaseReply struct {
	Middletier string
	Group      string
	Member     string
	Req        uint64
	Holder     string
	Writers    uint64
	TTL        time.Duration
	Revoked    bool
}

func (*Lease) Kind() Kind      { return KindLease }
func (*LeaseReply) Kind() Kind { return KindLeaseReply }

func (m *Lease) fields(c codec) codec {
	c.version("lease", leaseVersion)
	c.nonEmptyName(&m.Group)
	c.nonEmptyName(&m.Member)
	c.uvarint(&m.Req)
	c.uvarint(&m.Slot)
	c.op(&m.Op, "lease", LeaseHold, LeaseLeave)
	return c
}

func (m *LeaseReply) fields(c codec) codec {
	c.version("lease reply", leaseVersion)
	c.nonEmptyName(&m.Middletier)
	c.nonEmptyName(&m.Group)
	c.nonEmptyName(&m.Member)
	c.uvarint(&m.Req)
	c.name(&m.Holder)
	c.uvarint(&m.Writers)
	c.millis(&m.TTL, "lease ttl", time.Millisecond, MaxLeaseTTL)
	c.bool(&m.Revoked)
	c.check(!m.Revoked || m.Holder == m.Member, "lease revoked from a member that does not hold it")
	return c
}
