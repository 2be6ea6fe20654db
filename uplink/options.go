package uplink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Options configure a Link. Zero fields mean their defaults.
type Options struct {
	// ID names the frontend. With the WAL's identity it makes the origin the
	// middletier knows the frontend's entries by. Required.
	ID string
	// Middletiers are the ZeroMQ endpoints of the middletiers' ingest
	// sockets (tcp://host:port), in any order: the Link ranks them with
	// Rank(ID, …), so that frontends spread over them.
	Middletiers []string
	// Resolve, if set, is asked for the endpoints each time the Link
	// connects, instead of Middletiers: DNSResolver finds them through a
	// Kubernetes headless Service.
	Resolve func(context.Context) ([]string, error)
	// MaxBatchEntries and MaxBatchBytes bound one batch. Defaults 256 and
	// 1 MiB.
	MaxBatchEntries int
	MaxBatchBytes   int
	// Linger is how long committed entries may wait for more before the
	// first of them is sent (sooner once a full batch waits): at a low
	// rate, one batch, one middletier fsync and one stream message per
	// Linger instead of one per entry. It delays forwarding, never the
	// device's ack, which follows the frontend's own fsync. Default 5ms;
	// negative: none.
	Linger time.Duration
	// Window is how many batches may be unacknowledged at once. Default 32.
	Window int
	// AckTimeout is how long the Link waits for an acknowledgement before
	// it sends again from the oldest unacknowledged entry. Default 1s; at
	// least 1ms.
	AckTimeout time.Duration
	// Reconnect is how many ack timeouts in a row make the Link close its
	// socket and connect again. Default 2.
	Reconnect int
	// Failover is how long a middletier may go without acknowledging
	// anything while entries wait before the Link moves to the next one.
	// Default 5s.
	Failover time.Duration
	// SendStall bounds one send on the socket: zmq4 sends have no deadline
	// once connected, so a send that takes longer closes the socket.
	// Default 2s.
	SendStall time.Duration
	// DialTimeout bounds the TCP connect to one middletier, and then its
	// greeting: one dial takes up to twice it. Default 1s.
	DialTimeout time.Duration
	// Return is how often a Link that is not on its first choice looks
	// again at the middletiers (resolving them anew with Resolve) and
	// tries its first choice, to go back to it. Doubled after each return
	// that ends in a failover, up to 32 times. Default 10s.
	Return time.Duration
}

// minAckTimeout is the shortest Options.AckTimeout, Failover and Return.
const minAckTimeout = time.Millisecond

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		MaxBatchEntries: 256,
		MaxBatchBytes:   1 << 20,
		Linger:          5 * time.Millisecond,
		Window:          32,
		AckTimeout:      time.Second,
		Reconnect:       2,
		Failover:        5 * time.Second,
		SendStall:       zsock.DefaultSendStall,
		DialTimeout:     zsock.DefaultDialTimeout,
		Return:          10 * time.Second,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.ID == "" || len(o.ID) > wire.MaxNameLen-17 {
		return o, fmt.Errorf("uplink: id must be 1 to %d bytes", wire.MaxNameLen-17)
	}
	if len(o.Middletiers) == 0 && o.Resolve == nil {
		return o, errors.New("uplink: no middletiers")
	}
	linger := o.Linger
	defaults.FillPositive(&o, d)
	if o.AckTimeout < minAckTimeout {
		// Run ticks every quarter of it: a tick of no interval panics,
		// and one of a few nanoseconds sends again without end.
		return o, fmt.Errorf("uplink: ack timeout %v: want at least %v", o.AckTimeout, minAckTimeout)
	}
	if o.Failover < minAckTimeout || o.Return < minAckTimeout {
		// Of a few nanoseconds, a Link fails over, or looks again at its
		// first choice, without end.
		return o, fmt.Errorf("uplink: failover %v, return %v: want each at least %v", o.Failover, o.Return, minAckTimeout)
	}
	if linger < 0 {
		o.Linger = 0 // none
	}
	return o, nil
}

// DNSResolver returns a Resolve function that looks host up (the name of a
// Kubernetes headless Service, whose A records are the middletier pods) and
// gives tcp://address:port for each address. The Link ranks them by its
// id: the addresses are the keys, so a pod that comes back with a new
// address takes a new place in every frontend's ranking.
func DNSResolver(host string, port int) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		addrs, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		out := make([]string, len(addrs))
		for i, a := range addrs {
			out[i] = "tcp://" + net.JoinHostPort(a, strconv.Itoa(port))
		}
		return out, nil
	}
}
