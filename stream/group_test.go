package stream_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
