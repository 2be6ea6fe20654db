package testkit

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// Middletier is a middletier.Router running until the test ends.
type Middletier struct {
	// Dir holds the WAL (Dir/wal) and the state file.
	Dir string
	// Opts are the options it runs with, addresses as first bound.
	Opts middletier.Options
	// WAL are the options of its WAL.
	WAL   wal.Options
	Log   *wal.Log
	Addrs middletier.Addrs
	// Reg holds its metrics (not the WAL's).
	Reg *prometheus.Registry

	stop func() error
}

// StartMiddletier starts a middletier with its data in dir. Empty ingest,
// consumer and stream addresses become free ports on 127.0.0.1; a
// FeedAddr is kept as given (empty: no feed socket). An empty ID is "mt-0".
func StartMiddletier(t testing.TB, dir string, opts middletier.Options, wopts wal.Options) *Middletier {
	t.Helper()
	if opts.ID == "" {
		opts.ID = "mt-0"
	}
	opts.StateDir = dir
	for _, a := range []*string{&opts.IngestAddr, &opts.ConsumerAddr, &opts.StreamAddr} {
		if *a == "" {
			*a = "tcp://127.0.0.1:0"
		}
	}
	wopts.Hop = "middletier"
	m := &Middletier{Dir: dir, Opts: opts, WAL: wopts}
	m.Start(t)
	return m
}

// Start starts the middletier again after Stop, on the addresses it bound
// the first time, over the same directory.
func (m *Middletier) Start(t testing.TB) {
	t.Helper()
	l, err := wal.Open(filepath.Join(m.Dir, "wal"), m.WAL, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := middletier.New(m.Opts, l, reg, nil)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	addrs := r.Addrs()
	m.Opts.IngestAddr, m.Opts.ConsumerAddr, m.Opts.StreamAddr = addrs.Ingest, addrs.Consumer, addrs.Stream
	if addrs.Feed != "" {
		m.Opts.FeedAddr = addrs.Feed
	}
	m.Log, m.Addrs, m.Reg = l, addrs, reg
	m.stop = Go(t, "middletier "+m.Opts.ID, func(ctx context.Context) error {
		defer l.Close()
		return r.Run(ctx)
	})
}

// Records decodes every record the middletier's WAL l holds, from its
// first entry.
func Records(t testing.TB, l *wal.Log) []wire.Record {
	t.Helper()
	first, last := l.FirstIndex(), l.LastIndex()
	if last < first {
		return nil
	}
	c, err := l.Cursor(first)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]wire.Record, 0, last-first+1)
	for range last - first + 1 {
		e, err := c.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		rec, err := wire.DecodeRecord(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

// Stop stops the middletier and closes its WAL, and returns what its Run
// returned. It may be called more than once.
func (m *Middletier) Stop() error { return m.stop() }

// Gauges returns the series of the gauge called name in reg by the values
// of the labels named, joined with "/" in their order ("g/a" for
// labels "group", "writer").
func Gauges(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, m := range Series(t, reg, name) {
		vals := make([]string, len(labels))
		for _, l := range m.GetLabel() {
			if i := slices.Index(labels, l.GetName()); i >= 0 {
				vals[i] = l.GetValue()
			}
		}
		out[strings.Join(vals, "/")] = m.GetGauge().GetValue()
	}
	return out
}

// Metric sums every series of the gauge or counter called name in reg; a
// histogram counts its observations. With labels, given as name, value,
// name, value…, only the series that have each of those label values count.
func Metric(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	var sum float64
	for _, m := range Series(t, reg, name) {
		if !hasLabels(m.GetLabel(), labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// Series returns every series of the metric called name in reg.
func Series(t testing.TB, reg prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

// hasLabels reports whether ls has each label value of want (name, value,
// name, value…).
func hasLabels(ls []*dto.LabelPair, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		if !slices.ContainsFunc(ls, func(lp *dto.LabelPair) bool {
			return lp.GetName() == want[i] && lp.GetValue() == want[i+1]
		}) {
			return false
		}
	}
	return true
}

// Peer is a zmq4 socket connected to a middletier, as a frontend or a
// consumer is, with a receive loop, so that a test can wait for a message
// with a deadline.
type Peer struct {
	Sck  zmq4.Socket
	Msgs chan zmq4.Msg // closed when the socket ends
	wg   sync.WaitGroup
}

// Dealer connects a DEALER with the given identity to endpoint.
func Dealer(t testing.TB, endpoint, identity string) *Peer {
	t.Helper()
	return connect(t, zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(identity)), zmq4.WithTimeout(time.Second)), endpoint)
}

// Subscriber connects a SUB subscribed to everything to endpoint.
func Subscriber(t testing.TB, endpoint string) *Peer {
	t.Helper()
	sub := zmq4.NewSub(context.Background())
	p := connect(t, sub, endpoint)
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	return p
}

// Written returns once the PUB socket at endpoint has written out every
// stream message of sequences up to after, and returns the last sequence
// of the message that shows it. A middletier's published count says only
// that its records were queued in the socket, which writes them from the
// queue later: a subscriber that connects after the count is reached may
// still be written them. A probe subscriber waits for a message whose first
// sequence is past after: the middletier publishes in sequence order, so
// that message was queued after them, and the socket writes its queue in
// order. The probe's subscription reaches the socket asynchronously, and
// it may be written some of those messages first: Written calls send,
// which must have the middletier publish more, every 10ms until such a
// message reaches the probe.
func Written(t testing.TB, endpoint string, after uint64, send func()) uint64 {
	t.Helper()
	sub := zmq4.NewSub(context.Background())
	defer sub.Close()
	if err := sub.Dial(endpoint); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	got := make(chan zmq4.Msg, 64)
	go func() {
		for {
			m, err := sub.Recv()
			if err != nil {
				return
			}
			select {
			case got <- m:
			default: // the probe needs only the latest
			}
		}
	}()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	send()
	for {
		select {
		case m := <-got:
			st, ok := decodeStream(m)
			if !ok {
				t.Fatalf("the probe received %d frames, not a stream message", len(m.Frames))
			}
			if st.First > after {
				return st.First + uint64(len(st.Records)) - 1
			}
		case <-tick.C:
			send()
		case <-deadline:
			t.Fatalf("no message past %d from %s reached the probe within 20s", after, endpoint)
		}
	}
}

func decodeStream(m zmq4.Msg) (*wire.Stream, bool) {
	if len(m.Frames) != 1 {
		return nil, false
	}
	d, err := wire.Decode(m.Frames[0])
	st, ok := d.(*wire.Stream)
	return st, err == nil && ok && len(st.Records) > 0
}

func connect(t testing.TB, sck zmq4.Socket, endpoint string) *Peer {
	t.Helper()
	if err := sck.Dial(endpoint); err != nil {
		sck.Close()
		t.Fatal(err)
	}
	p := &Peer{Sck: sck, Msgs: make(chan zmq4.Msg, 1024)}
	p.wg.Go(func() {
		defer close(p.Msgs)
		for {
			m, err := sck.Recv()
			if err != nil {
				return
			}
			p.Msgs <- m
		}
	})
	t.Cleanup(func() {
		sck.Close()
		for range p.Msgs {
		}
		p.wg.Wait()
	})
	return p
}

// Send sends m.
func (p *Peer) Send(t testing.TB, m wire.Message) {
	t.Helper()
	if err := p.Sck.Send(zmq4.NewMsg(wire.Append(nil, m))); err != nil {
		t.Fatal(err)
	}
}

// Next waits up to 10s for the next message that decodes to an M,
// skipping others.
func Next[M wire.Message](t testing.TB, p *Peer) M {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case msg, ok := <-p.Msgs:
			if !ok {
				t.Fatal("socket closed")
			}
			m, err := wire.Decode(msg.Frames[len(msg.Frames)-1])
			if err != nil {
				t.Fatalf("undecodable message: %v", err)
			}
			if want, ok := m.(M); ok {
				return want
			}
			t.Logf("skipping %s", m.Kind())
		case <-deadline:
			var zero M
			t.Fatalf("no %T within 10s", zero)
		}
	}
}

// Frontend sends batches to a middletier's ingest socket as a frontend's
// uplink does, and waits for their acknowledgement.
type Frontend struct {
	*Peer
	Origin string
	// Next is the index of the next entry to send. Every batch vouches for
	// the entries before it (its release mark is Next-1), as after a
	// failover from another middletier that has them.
	Next uint64
}

// NewFrontend connects a Frontend for origin to a middletier's ingest
// endpoint.
func NewFrontend(t testing.TB, endpoint, origin string) *Frontend {
	t.Helper()
	return &Frontend{Peer: Dealer(t, endpoint, origin+"#test"), Origin: origin, Next: 1}
}

// SendAsync sends entries as the next batch without waiting; the
// acknowledgements waiting are read and dropped.
func (f *Frontend) SendAsync(t testing.TB, entries ...[]byte) {
	t.Helper()
	f.Peer.Send(t, &wire.Batch{Origin: f.Origin, Acked: f.Next - 1, First: f.Next, Entries: entries})
	f.Next += uint64(len(entries))
	for len(f.Msgs) > 0 {
		<-f.Msgs
	}
}

// Send sends entries as the next batch, and again every second until the
// middletier acknowledges them, for up to 10s.
func (f *Frontend) Send(t testing.TB, entries ...[]byte) {
	t.Helper()
	b := &wire.Batch{Origin: f.Origin, Acked: f.Next - 1, First: f.Next, Entries: entries}
	last := f.Next + uint64(len(entries)) - 1
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f.Peer.Send(t, b)
		timeout := time.After(time.Second)
	wait:
		for {
			select {
			case msg, ok := <-f.Msgs:
				if !ok {
					t.Fatal("frontend socket closed")
				}
				m, err := wire.Decode(msg.Frames[len(msg.Frames)-1])
				if a, ok := m.(*wire.Ack); err == nil && ok && a.Origin == f.Origin && a.UpTo >= last {
					f.Next = last + 1
					return
				}
			case <-timeout:
				break wait
			}
		}
	}
	t.Fatalf("batch %d..%d of %s not acknowledged", b.First, last, f.Origin)
}
