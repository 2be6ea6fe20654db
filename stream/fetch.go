package stream

import (
	"context"

	"github.com/ingest-io/ingest/wire"
)

// Fetch asks the middletier for at most max records from sequence from, as
// a live feed's reader that resumes does, over a socket of its own so that
// it never mixes with the Follower's gap fills. Requests are served one at
// a time by Run, with one try each: a fetch not answered within
// FetchTimeout fails. The reply's First > from means the records before it
// are gone.
func (f *Follower) Fetch(ctx context.Context, from, max uint64) (*wire.FetchReply, error) {
	if f.ep.Consumer == "" {
		return nil, ErrNoConsumer
	}
	req := fetchReq{ctx: ctx, from: from, max: max, reply: make(chan fetchResult, 1)}
	select {
	case f.fetches <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-f.stopped:
		return nil, ErrStopped
	}
	select {
	case res := <-req.reply:
		return res.r, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// serveFetches serves Fetch until ctx ends.
func (f *Follower) serveFetches(ctx context.Context) {
	c := consumer{endpoint: f.ep.Consumer, name: f.o.Consumer, timeout: f.o.FetchTimeout}
	defer c.close()
	for {
		var req fetchReq
		select {
		case <-ctx.Done():
			return
		case req = <-f.fetches:
		}
		// The fetch ends with the requester's context or with Run's.
		rctx, cancel := context.WithCancel(req.ctx)
		stop := context.AfterFunc(ctx, cancel)
		r, err := c.fetch(rctx, req.from, req.max, 1, nil)
		stop()
		cancel()
		req.reply <- fetchResult{r, err}
	}
}
