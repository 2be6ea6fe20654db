package downlink_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/internal/testkit"
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
