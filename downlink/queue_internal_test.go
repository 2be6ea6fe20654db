package downlink

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestRedeliveriesToAStalledDeviceNotQueued: a device whose writes stall
// (an MQTT session at its client's Receive Maximum waits for a PUBACK with
// no bound) is handed its unanswered command again by the home every
// redelivery interval. Each hand-on of a command already waiting to be
// written adds nothing: the device's queue holds each command once, so it
// stays bounded, and once the device reads again it gets the command once,
// not once per redelivery in a burst.
func TestRedeliveriesToAStalledDeviceNotQueued(t *testing.T) {
	h := commandtest.Start(t, command.Options{ID: "home-1", Redeliver: 100 * time.Millisecond}, wal.Options{})
	l, err := New(Options{Frontend: "fe-1", Homes: []string{h.Addr}, RequestTimeout: 200 * time.Millisecond, PresenceInterval: 200 * time.Millisecond}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "link", func(ctx context.Context) error { l.Run(ctx); return nil })
	t.Cleanup(func() { l.Close() })

	release := make(chan struct{})
	var mu sync.Mutex
	var written []string
	a := l.Attach("dev-1", func(b []byte) error {
		<-release // the device takes nothing until released
		mu.Lock()
		written = append(written, string(b))
		mu.Unlock()
		if f, err := protocol.DecodeServerFrame(b); err == nil {
			l.Result("dev-1", protocol.CommandResult{ID: string(f.ID), Status: "ok"}) // it answers at once
		}
		return nil
	})
	defer a.Detach()
	testkit.WaitFor(t, "the device placed", 10*time.Second, func() bool {
		return testkit.Metric(t, h.Reg, "ingest_command_devices_placed") == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := l.Submit(ctx, wire.Submit{Device: "dev-1", Name: "n", Payload: []byte(`{}`), Key: "k"})
	if err != nil || rep.Code != "" {
		t.Fatalf("submit: %+v %v", rep, err)
	}
	cid := rep.Commands[0].ID
	// Some twenty redeliveries while the first write stalls.
	time.Sleep(2 * time.Second)
	a.mu.Lock()
	queued := len(a.queue)
	a.mu.Unlock()
	close(release)
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	n := 0
	for _, b := range written {
		if strings.Contains(b, cid) {
			n++
		}
	}
	mu.Unlock()
	if queued > 1 || n > 6 {
		t.Fatalf("a stalled device's queue held %d frames of its one command, and %d writes of it followed its release", queued, n)
	}
}
