package feed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/wire"
)

// errFetchTimeout is returned when a middletier does not answer a fetch in
// time; the socket is then closed and the next fetch dials again.
var errFetchTimeout = errors.New("fetch: no reply in time")

// fetcher asks one middletier's consumer socket for records. It holds one
// DEALER (connected to exactly one ROUTER, as zmq4 DEALERs send to every
// peer) and serves one fetch at a time. The feed never commits: it is not a
// durable consumer, and the middletier keeps records only for those.
type fetcher struct {
	endpoint string
	name     string // the consumer name in Fetch requests
	purpose  string // "gap" or "resume", in the socket identity
	timeout  time.Duration

	mu      sync.Mutex // one fetch at a time; guards the fields below
	n       int
	sck     zmq4.Socket
	cancel  context.CancelFunc
	replies chan *wire.FetchReply
	wg      sync.WaitGroup
}

func newFetcher(endpoint, name, purpose string, timeout time.Duration) *fetcher {
	return &fetcher{endpoint: endpoint, name: name, purpose: purpose, timeout: timeout}
}

func (f *fetcher) dial(ctx context.Context) error {
	var rnd [4]byte
	rand.Read(rnd[:])
	f.n++
	id := fmt.Sprintf("%s#%s-%d-%s", f.name, f.purpose, f.n, hex.EncodeToString(rnd[:]))
	sctx, cancel := context.WithCancel(ctx)
	sck := zmq4.NewDealer(sctx, zmq4.WithID(zmq4.SocketIdentity(id)), zmq4.WithTimeout(f.timeout),
		zmq4.WithDialerTimeout(f.timeout), zmq4.WithDialerMaxRetries(0))
	if err := sck.Dial(f.endpoint); err != nil {
		sck.Close()
		cancel()
		return fmt.Errorf("dial %s: %w", f.endpoint, err)
	}
	replies := make(chan *wire.FetchReply, 4)
	f.sck, f.cancel, f.replies = sck, cancel, replies
	f.wg.Go(func() {
		for {
			msg, err := sck.Recv()
			if err != nil {
				return
			}
			m, err := wire.Decode(msg.Frames[len(msg.Frames)-1])
			if err != nil {
				continue
			}
			if r, ok := m.(*wire.FetchReply); ok {
				select {
				case replies <- r:
				case <-sctx.Done():
					return
				}
			}
		}
	})
	return nil
}

// closeLocked closes the socket and waits for its receiver.
func (f *fetcher) closeLocked() {
	if f.sck == nil {
		return
	}
	f.cancel()
	f.sck.Close()
	f.wg.Wait()
	f.sck = nil
}

func (f *fetcher) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closeLocked()
}

// fetch asks for at most n records from sequence from. A reply is taken
// as the answer only if its First is what a reply to this request has:
// max(from, Oldest). Replies to earlier requests that timed out are skipped.
func (f *fetcher) fetch(ctx context.Context, from, n uint64) (*wire.FetchReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sck == nil {
		if err := f.dial(ctx); err != nil {
			return nil, err
		}
	}
	req := wire.Append(nil, &wire.Fetch{Consumer: f.name, From: from, Max: n})
	// A zmq4 send has no deadline once connected; a stalled one is freed by
	// closing the socket.
	sent := make(chan error, 1)
	sck := f.sck
	go func() { sent <- sck.Send(zmq4.NewMsg(req)) }()
	timer := time.NewTimer(f.timeout)
	defer timer.Stop()
	select {
	case err := <-sent:
		if err != nil {
			f.closeLocked()
			return nil, fmt.Errorf("send fetch: %w", err)
		}
	case <-timer.C:
		f.closeLocked()
		<-sent
		return nil, errFetchTimeout
	case <-ctx.Done():
		f.closeLocked()
		<-sent
		return nil, ctx.Err()
	}
	for {
		select {
		case r := <-f.replies:
			if r.First == max(from, r.Oldest) {
				return r, nil
			}
		case <-timer.C:
			f.closeLocked()
			return nil, errFetchTimeout
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
