package stream_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/stream"
	"github.com/ingest-io/ingest/wire"
)

// A lease granted in a reply that comes after the lease has run out (its
// request was held up for longer than the TTL) starts no Follower: one
// would be stopped as soon as it started, again at every renewal. The
// middletier is a bare ROUTER that grants the lease for 100 ms and answers
// 200 ms late for a second, then at once: the Member follows only then.
func TestLeaseGrantedTooLate(t *testing.T) {
	var late atomic.Bool
	late.Store(true)
	var mt *testkit.Router
	mt = testkit.StartRouter(t, func(id []byte, m wire.Message) {
		q, ok := m.(*wire.Lease)
		if !ok || q.Op != wire.LeaseHold {
			return
		}
		reply := &wire.LeaseReply{Middletier: "mt-0", Group: q.Group, Member: q.Member, Req: q.Req,
			Holder: q.Member, Writers: 1, TTL: 100 * time.Millisecond}
		if late.Load() {
			time.AfterFunc(200*time.Millisecond, func() { mt.Reply(id, reply) })
			return
		}
		mt.Reply(id, reply)
	})
	starts := &countHandler{msg: "storage: lease taken; following"}
	mb, err := stream.NewMember(stream.Endpoints{Stream: "tcp://127.0.0.1:1", Consumer: mt.Addr()}, stream.Options{Name: "storage"},
		stream.Group{Name: "storage", Member: "m-a"}, newRecorder(), newMetrics(prometheus.NewRegistry()), nil, slog.New(starts))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "member", func(ctx context.Context) error { return mb.Run(ctx) })
	time.Sleep(time.Second)
	if n := starts.n.Load(); n != 0 || mb.Held() {
		t.Fatalf("the Member followed %d time(s) on a lease granted after it had run out (held now: %v)", n, mb.Held())
	}
	late.Store(false)
	testkit.WaitFor(t, "the lease held once granted in time", 10*time.Second, mb.Held)
}

// countHandler counts the log records with one message.
type countHandler struct {
	msg string
	n   atomic.Int64
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }
