package stream_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/stream"
)

// A Member follows while it holds its group's lease, under the group's
// name (the middletier's checkpoint for the group reaches the last record);
// it stops following once the lease may have run out because the
// middletier is gone, and follows again, from the group's checkpoint, once
// the middletier is back and grants the lease again.
func TestMemberFollowsWhileItHoldsTheLease(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{LeaseTTL: 500 * time.Millisecond})
	send(t, fe, 1, 300)
	rec := newRecorder()
	held := prometheus.NewGauge(prometheus.GaugeOpts{Name: "held", Help: "h"})
	mb, err := stream.NewMember(ep, stream.Options{IdlePoll: 50 * time.Millisecond}, stream.Group{Name: "storage", Member: "m-1"},
		rec, newMetrics(prometheus.NewRegistry()), held, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := testkit.Go(t, "member", func(ctx context.Context) error { return mb.Run(ctx) })
	testkit.WaitFor(t, "the lease", 20*time.Second, mb.Held)
	if mb.Middletier() != "mt-0" {
		t.Errorf("middletier %q, want mt-0", mb.Middletier())
	}
	waitCheckpoint(t, mt, "storage", 300)
	testkit.WaitFor(t, "caught up", 20*time.Second, mb.CaughtUp)

	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the lease to run out", 20*time.Second, func() bool { return !mb.Held() })
	if v := testkit.Metric(t, gathererOf(held), "held"); v != 0 {
		t.Errorf("held gauge %v after the lease ran out", v)
	}
	mt.Start(t)
	testkit.WaitFor(t, "the lease again", 20*time.Second, mb.Held)
	fe = testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	fe.Next = 301
	send(t, fe, 301, 200)
	waitCheckpoint(t, mt, "storage", 500)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rec.check(t, 1, 500, "fe-1.0001", 1)
}

func gathererOf(c prometheus.Collector) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	return reg
}

// A Member stops following once its lease may have run out, even while a
// request for the lease is held up (a dial to a middletier that takes the
// connection and answers nothing waits for its timeout): two members of a
// group never follow one stream at once, and the first takes no record
// once the second follows. It used to look at the lease only between
// requests, and followed on for as long as one was held up. Here the
// lease's connection (the first through the proxy) is cut and new ones
// are held, while the Follower's own connection to the middletier stays
// up.
func TestLeaseEndsWhileTheAskWaits(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{LeaseTTL: time.Second})
	send(t, fe, 1, 100)
	px := tcpproxy.Start(t, strings.TrimPrefix(ep.Consumer, "tcp://"))
	member := func(name string, ep stream.Endpoints, rec *recorder) *stream.Member {
		mb, err := stream.NewMember(ep, stream.Options{IdlePoll: 50 * time.Millisecond, FetchTimeout: 2 * time.Second}, stream.Group{Name: "storage", Member: name},
			rec, newMetrics(prometheus.NewRegistry()), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		testkit.Go(t, name, func(ctx context.Context) error { return mb.Run(ctx) })
		return mb
	}
	ra, rb := newRecorder(), newRecorder()
	a := member("m-a", stream.Endpoints{Stream: ep.Stream, Consumer: px.Endpoint()}, ra)
	testkit.WaitFor(t, "the first member's lease", 20*time.Second, a.Held)
	waitCheckpoint(t, mt, "storage", 100)
	testkit.WaitFor(t, "the first member caught up", 20*time.Second, a.CaughtUp)
	// Its requests for the lease now wait for a dial's timeout, 2 s, twice
	// its lease.
	px.SilenceFirst()
	b := member("m-b", ep, rb)
	var both, aHeld time.Duration
	const step = 5 * time.Millisecond
	testkit.WaitFor(t, "the second member's lease, and the first's end", 20*time.Second, func() bool {
		for range 10 {
			switch ha, hb := a.Held(), b.Held(); {
			case ha && hb:
				both += step
			case ha:
				aHeld += step
			}
			time.Sleep(step)
		}
		return b.Held() && !a.Held()
	})
	t.Logf("the first member followed about %v after the silence alone, and about %v beside the second", aHeld, both)
	if both > 0 {
		t.Fatalf("both members followed at once for about %v", both)
	}
	taken := ra.taken()
	send(t, fe, 101, 100)
	testkit.WaitFor(t, "the second member's records", 20*time.Second, func() bool { return rb.taken() >= 100 })
	// The stream carried them to the first member too, whose Follower
	// would take them within milliseconds were it still running.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if got := ra.taken(); got != taken {
			t.Fatalf("the first member took %d records after the second held the lease", got-taken)
		}
	}
}

// A Member whose connection for the lease goes silent for good without
// ending (the middletier's host went away: a half-open connection that no
// error ends for many minutes) dials again, as the Follower does after
// fetches that go unanswered, and holds the lease and follows again once
// the middletier answers on a new connection. It used to send its requests
// on the silent connection for as long as the kernel kept it, never
// dialling again: the stream stayed unfollowed though the middletier
// answered every new connection.
func TestMemberDialsAgainWhenTheLeaseGoesUnanswered(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{LeaseTTL: 500 * time.Millisecond})
	send(t, fe, 1, 100)
	px := tcpproxy.Start(t, strings.TrimPrefix(ep.Consumer, "tcp://"))
	rec := newRecorder()
	mb, err := stream.NewMember(stream.Endpoints{Stream: ep.Stream, Consumer: px.Endpoint()},
		stream.Options{IdlePoll: 50 * time.Millisecond, FetchTimeout: 200 * time.Millisecond}, stream.Group{Name: "storage", Member: "m-a"},
		rec, newMetrics(prometheus.NewRegistry()), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "member", func(ctx context.Context) error { return mb.Run(ctx) })
	testkit.WaitFor(t, "the lease", 20*time.Second, mb.Held)
	waitCheckpoint(t, mt, "storage", 100)

	// Every connection so far goes silent, and stays open; new ones are
	// answered.
	px.Strand()
	testkit.WaitFor(t, "the lease to run out", 20*time.Second, func() bool { return !mb.Held() })
	testkit.WaitFor(t, "the lease again, over a new connection", 20*time.Second, mb.Held)
	send(t, fe, 101, 100)
	waitCheckpoint(t, mt, "storage", 200)
	if got := rec.last(); got != 200 {
		t.Fatalf("last record taken %d, want 200", got)
	}
}
