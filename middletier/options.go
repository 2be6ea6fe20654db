package middletier

import (
	"errors"
	"fmt"
	"time"

	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Options configure a Router. Zero fields mean their defaults.
type Options struct {
	// ID names this middletier in its stream. Required.
	ID string
	// StateDir holds the consumer checkpoints and the marks used to drop
	// repeats. Required; keep it on the same volume as the WAL.
	StateDir string
	// IngestAddr is the ZeroMQ endpoint of the ROUTER that frontends send
	// batches to. Default tcp://127.0.0.1:5555.
	IngestAddr string
	// ConsumerAddr is the ZeroMQ endpoint of the ROUTER that consumers send
	// fetch and commit to. It is separate from IngestAddr so that a consumer
	// that stops reading can never hold up acknowledgements to frontends.
	// Default tcp://127.0.0.1:5556.
	ConsumerAddr string
	// StreamAddr is the ZeroMQ endpoint of the PUB socket durable consumers
	// (storage writers) subscribe to. Default tcp://127.0.0.1:5557.
	StreamAddr string
	// FeedAddr is the endpoint of a second PUB socket with the same stream,
	// for the live feed, so that neither slows the other. Empty: none.
	FeedAddr string
	// Consumers are the durable consumers. The log is truncated only below
	// the lowest of their checkpoints; with none, entries are released once
	// published.
	Consumers []string
	// StreamBatch is the most records in one stream message. Default 256.
	StreamBatch int
	// StreamHWM is how many stream messages a PUB socket queues before it
	// drops new ones; subscribers see the gap and fetch it. Default 4096.
	StreamHWM int
	// IngestQueue is how many batches may wait for the WAL before more are
	// answered busy. Default 1024.
	IngestQueue int
	// BusyRetry is the retry hint sent with busy. Default 200ms.
	BusyRetry time.Duration
	// SendStall is how long one send on a ROUTER may take before the
	// watchdog closes the socket and listens again: zmq4 sends have no
	// deadline, and one peer that stops reading freezes sends to all.
	// Default 2s.
	SendStall time.Duration
	// MaxFetchRecords and MaxFetchBytes bound one fetch reply. Defaults 4096
	// and 4 MiB.
	MaxFetchRecords int
	MaxFetchBytes   int
	// LeaseTTL is how long a writer group's lease, and a member's place in
	// its group, last without a renewal: a writer killed loses its streams
	// to another member of its group this long after its last renewal.
	// Writers renew every fifth of it. Default 5s.
	LeaseTTL time.Duration
	// LagWarn is the consumer lag, in entries, past which a line is logged.
	// Default 1,000,000.
	LagWarn uint64
	// StateInterval is the least time between two writes of the state
	// file (a write, an fsync, a rename and an fsync of the directory).
	// Commits that arrive within it are made durable, and acknowledged, by
	// one write: with writers that each commit every few milliseconds the
	// file is still written at most once per StateInterval. A commit waits
	// up to this long more for its acknowledgement; nothing else does.
	// Default 100ms.
	StateInterval time.Duration
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		IngestAddr:      "tcp://127.0.0.1:5555",
		ConsumerAddr:    "tcp://127.0.0.1:5556",
		StreamAddr:      "tcp://127.0.0.1:5557",
		StreamBatch:     256,
		StreamHWM:       4096,
		IngestQueue:     1024,
		BusyRetry:       200 * time.Millisecond,
		SendStall:       zsock.DefaultSendStall,
		MaxFetchRecords: 4096,
		MaxFetchBytes:   4 << 20,
		LagWarn:         1_000_000,
		StateInterval:   100 * time.Millisecond,
		LeaseTTL:        5 * time.Second,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.ID == "" || len(o.ID) > wire.MaxNameLen {
		return o, fmt.Errorf("middletier: id must be 1 to %d bytes", wire.MaxNameLen)
	}
	if o.StateDir == "" {
		return o, errors.New("middletier: state dir required")
	}
	for _, c := range o.Consumers {
		if c == "" || len(c) > wire.MaxNameLen {
			return o, fmt.Errorf("middletier: consumer name %q must be 1 to %d bytes", c, wire.MaxNameLen)
		}
	}
	defaults.FillPositive(&o, d)
	if o.LeaseTTL < 10*time.Millisecond || o.LeaseTTL > wire.MaxLeaseTTL {
		return o, fmt.Errorf("middletier: lease ttl %v: want 10ms to %v", o.LeaseTTL, wire.MaxLeaseTTL)
	}
	return o, nil
}
