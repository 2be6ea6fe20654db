package stream

import (
	"context"
	"fmt"
	"time"

	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// consumer is a DEALER to a middletier's consumer ROUTER, for fetch and
// commit. It is dialled when first needed, and again after it failed. Its
// fields are owned by the one goroutine that uses it.
type consumer struct {
	endpoint string
	name     string // the consumer name in Fetch and Commit, and the identity's prefix
	timeout  time.Duration
	d        *zsock.Dealer
}

// send sends m, dialling first if there is no socket.
func (c *consumer) send(m wire.Message) error {
	if c.d == nil {
		// An identity of its own per connection, so that the middletier
		// never answers this socket's requests to an earlier one.
		d, err := zsock.Dial(c.endpoint, zsock.DealerOptions{Identity: zsock.Identity(c.name), SendStall: c.timeout, DialTimeout: c.timeout})
		if err != nil {
			return fmt.Errorf("consumer socket: %w", err)
		}
		c.d = d
	}
	// The message is written before anything the caller does next: a
	// commit's bytes leave after the writes of the records it covers were
	// made durable, and before any write of the next ones begins.
	if err := c.d.SendWait(wire.Append(nil, m)); err != nil {
		c.close()
		return fmt.Errorf("send %s to %s: %w", m.Kind(), c.endpoint, err)
	}
	return nil
}

// fetch asks for at most max records from sequence from, asking again on
// timeout, up to attempts times; then the socket is closed and the next
// request dials again. A reply is the answer only if its First is what a
// reply to this request has, max(from, Oldest) (any, for from 0), and, if
// max is not 0, it holds records when the middletier has some from First:
// replies to earlier requests that timed out are skipped, among them a
// look's (max 0) from the same sequence, which holds none. Every other
// message received meanwhile goes to other.
func (c *consumer) fetch(ctx context.Context, from, max uint64, attempts int, other func(wire.Message)) (*wire.FetchReply, error) {
	req := &wire.Fetch{Consumer: c.name, From: from, Max: max}
	for range attempts {
		if err := c.send(req); err != nil {
			return nil, err
		}
		r, err := c.await(ctx, from, max, other)
		if r != nil || err != nil {
			return r, err
		}
	}
	c.close()
	return nil, fmt.Errorf("fetch from %s: no answer in %v, %d times", c.endpoint, c.timeout, attempts)
}

// await waits for the reply to a fetch of at most n records from from;
// nil, nil after the timeout.
func (c *consumer) await(ctx context.Context, from, n uint64, other func(wire.Message)) (*wire.FetchReply, error) {
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.d.Done():
			err := c.d.Err()
			c.close()
			return nil, fmt.Errorf("consumer socket: %w", err)
		case <-timer.C:
			return nil, nil
		case frames := <-c.d.Recv():
			m := decode(frames)
			if r, ok := m.(*wire.FetchReply); ok && (from == 0 || r.First == max(from, r.Oldest)) &&
				(n == 0 || len(r.Records) > 0 || r.First > r.Last) {
				return r, nil
			}
			if m != nil && other != nil {
				other(m)
			}
		}
	}
}

// decode decodes a one-frame message; nil if it does not decode.
func decode(frames [][]byte) wire.Message {
	if len(frames) != 1 {
		return nil
	}
	m, err := wire.Decode(frames[0])
	if err != nil {
		return nil
	}
	return m
}

func (c *consumer) close() {
	if c.d != nil {
		c.d.Close()
		c.d = nil
	}
}
