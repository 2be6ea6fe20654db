package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

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

func (m *Lease) appendBody(dst []byte) []byte {
	dst = append(dst, leaseVersion)
	dst = appendString(dst, m.Group)
	dst = appendString(dst, m.Member)
	dst = binary.AppendUvarint(dst, m.Req)
	dst = binary.AppendUvarint(dst, m.Slot)
	return append(dst, m.Op)
}

func (m *Lease) decodeBody(d *decoder) (err error) {
	if err = d.version(leaseVersion); err != nil {
		return err
	}
	if m.Group, err = d.nonEmptyName(); err != nil {
		return err
	}
	if m.Member, err = d.nonEmptyName(); err != nil {
		return err
	}
	if m.Req, err = d.uvarint(); err != nil {
		return err
	}
	if m.Slot, err = d.uvarint(); err != nil {
		return err
	}
	if m.Op, err = d.byte(); err != nil {
		return err
	}
	if m.Op < LeaseHold || m.Op > LeaseLeave {
		return fmt.Errorf("lease op %d", m.Op)
	}
	return nil
}

func (m *LeaseReply) appendBody(dst []byte) []byte {
	dst = append(dst, leaseVersion)
	dst = appendString(dst, m.Middletier)
	dst = appendString(dst, m.Group)
	dst = appendString(dst, m.Member)
	dst = binary.AppendUvarint(dst, m.Req)
	dst = appendString(dst, m.Holder)
	dst = binary.AppendUvarint(dst, m.Writers)
	dst = binary.AppendUvarint(dst, uint64(m.TTL/time.Millisecond))
	if m.Revoked {
		return append(dst, 1)
	}
	return append(dst, 0)
}

func (m *LeaseReply) decodeBody(d *decoder) (err error) {
	if err = d.version(leaseVersion); err != nil {
		return err
	}
	if m.Middletier, err = d.nonEmptyName(); err != nil {
		return err
	}
	if m.Group, err = d.nonEmptyName(); err != nil {
		return err
	}
	if m.Member, err = d.nonEmptyName(); err != nil {
		return err
	}
	if m.Req, err = d.uvarint(); err != nil {
		return err
	}
	if m.Holder, err = d.name(); err != nil {
		return err
	}
	if m.Writers, err = d.uvarint(); err != nil {
		return err
	}
	ms, err := d.uvarint()
	if err != nil {
		return err
	}
	if ms == 0 || ms > uint64(MaxLeaseTTL/time.Millisecond) {
		return fmt.Errorf("lease ttl %d ms", ms)
	}
	m.TTL = time.Duration(ms) * time.Millisecond
	if m.Revoked, err = d.bool(); err != nil {
		return err
	}
	if m.Revoked && m.Holder != m.Member {
		return errors.New("lease revoked from a member that does not hold it")
	}
	return nil
}

func (d *decoder) version(want byte) error {
	v, err := d.byte()
	if err != nil {
		return err
	}
	if v != want {
		return fmt.Errorf("body version %d", v)
	}
	return nil
}

func (d *decoder) nonEmptyName() (string, error) {
	s, err := d.name()
	if err == nil && s == "" {
		err = errors.New("empty name")
	}
	return s, err
}
