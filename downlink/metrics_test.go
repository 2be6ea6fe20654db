package downlink_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wire"
)

// TestMetricsMove: a command held unanswered by its device counts as
// pending at its frontend and sent at its home; once answered, pending
// falls back and the latency histograms of both sides have it.
func TestMetricsMove(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	got := make(chan string, 1)
	release := make(chan struct{})
	dialDevice(t, fe, "dev-1", func(ctx context.Context, cmd client.Command) client.Answer {
		got <- cmd.ID
		select {
		case <-release:
		case <-ctx.Done():
		}
		return client.Answer{Status: "ok"}
	})
	// moved waits until the frontend has pending commands pending, then
	// checks that its histogram feHist and the home's homeHist have one
	// observation each.
	moved := func(pending float64, feHist, homeHist string) {
		t.Helper()
		testkit.WaitFor(t, fmt.Sprintf("%v pending commands at the frontend", pending), 10*time.Second, func() bool {
			return testkit.Metric(t, fe.reg, "ingest_downlink_pending_commands") == pending
		})
		if n := testkit.Metric(t, fe.reg, feHist); n != 1 {
			t.Fatalf("%s observations %v, want 1", feHist, n)
		}
		if n := testkit.Metric(t, h.Reg, homeHist); n != 1 {
			t.Fatalf("home's %s observations %v, want 1", homeHist, n)
		}
	}

	cmd := submit(t, fe, "dev-1", "hold", nil)
	if id := <-got; id != cmd.ID {
		t.Fatalf("device got %s, want %s", id, cmd.ID)
	}
	moved(1, "ingest_downlink_delivery_latency_seconds", "ingest_command_delivery_latency_seconds")
	testkit.WaitFor(t, "the home's gauge: one sent", 10*time.Second, func() bool {
		return gaugeOf(t, h, "sent") == 1
	})
	close(release)
	waitState(t, fe, cmd.ID, "acknowledged")
	moved(0, "ingest_downlink_result_latency_seconds", "ingest_command_answer_latency_seconds")
	testkit.WaitFor(t, "the home's gauge: one acknowledged, none sent", 10*time.Second, func() bool {
		return gaugeOf(t, h, "acknowledged") == 1 && gaugeOf(t, h, "sent") == 0
	})
}

// gaugeOf is the home's ingest_command_commands for state; -1 while it has
// no such series.
func gaugeOf(t *testing.T, h *commandtest.Home, state string) float64 {
	t.Helper()
	v, ok := testkit.Gauges(t, h.Reg, "ingest_command_commands", "state")[state]
	if !ok {
		return -1
	}
	return v
}

// TestPendingForgetsExpired: a command written to a device that never
// answers it stops counting as pending at the frontend once its time to
// live has passed (its home expires it and never sends it again): the
// frontend does not keep it, and count it, for as long as the connection
// lasts.
func TestPendingForgetsExpired(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	got := make(chan string, 10)
	dialDevice(t, fe, "dev-1", func(ctx context.Context, cmd client.Command) client.Answer {
		got <- cmd.ID
		<-ctx.Done() // never answers while connected
		return client.Answer{Status: "ok"}
	})
	cmd := submit(t, fe, "dev-1", "ignored", map[string]any{"ttl_ms": 500})
	if id := <-got; id != cmd.ID {
		t.Fatalf("device got %s, want %s", id, cmd.ID)
	}
	testkit.WaitFor(t, "1 pending command at the frontend", 10*time.Second, func() bool {
		return testkit.Metric(t, fe.reg, "ingest_downlink_pending_commands") == 1
	})
	waitState(t, fe, cmd.ID, "expired")
	testkit.WaitFor(t, "no pending command at the frontend once it expired", 5*time.Second, func() bool {
		return testkit.Metric(t, fe.reg, "ingest_downlink_pending_commands") == 0
	})
}

// TestPendingAnsweredDuringWrite: a device may answer a command before the
// write of its frame has returned to the frontend (the frame is on the
// wire; the writer has not yet taken the attachment's lock again). The
// command was then counted pending after its answer, and stayed so until
// its time to live (a day by default): its home never sends it again.
// Here the device answers each command inside the write; while the
// second's write is held, the first's bookkeeping is over (one writer per
// device, in order), and neither is pending.
func TestPendingAnsweredDuringWrite(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	reg := prometheus.NewRegistry()
	l, err := downlink.New(downlink.Options{Frontend: "fe-1", Homes: []string{h.Addr}, RequestTimeout: 200 * time.Millisecond, PresenceInterval: 200 * time.Millisecond}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "link", func(ctx context.Context) error { l.Run(ctx); return nil })
	t.Cleanup(func() { l.Close() })
	held := make(chan struct{})
	release := make(chan struct{})
	writes := 0
	a := l.Attach("dev-1", func(b []byte, _ time.Time) error {
		f, err := protocol.DecodeServerFrame(b)
		if err != nil {
			return err
		}
		l.Result("dev-1", protocol.CommandResult{ID: string(f.ID[1 : len(f.ID)-1]), Status: "ok"})
		if writes++; writes == 2 {
			close(held)
			<-release
		}
		return nil
	})
	defer a.Detach()
	defer close(release)
	waitPlaced(t, 1, h)
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rep, err := l.Submit(ctx, wire.Submit{Device: "dev-1", Name: "n", Payload: []byte(`{}`), Key: fmt.Sprint("k", i)})
		cancel()
		if err != nil || rep.Code != "" {
			t.Fatalf("submit %d: %+v %v", i, rep, err)
		}
	}
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the second command was not written")
	}
	if n := testkit.Metric(t, reg, "ingest_downlink_pending_commands"); n != 0 {
		t.Fatalf("%v commands pending, both answered", n)
	}
}
