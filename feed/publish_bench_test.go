package feed

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/wire"
)

// BenchmarkPublish measures the feed's dispatch of one batch of 100
// records (20 devices, 60-byte payloads) from a middletier to its readers'
// queues, without sockets: decoding, filtering, building the frames and
// queueing them. "all" is one reader that takes every message; "devices"
// sixteen readers of one device each, a fifth of them on devices that send
// nothing; "none" four readers of devices that send nothing.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		name string
		subs []Subscription
	}{
		{"all", []Subscription{{}}},
		{"devices", func() (subs []Subscription) {
			for i := range 16 {
				subs = append(subs, Subscription{Devices: []string{fmt.Sprintf("dev-%02d", i*2)}})
			}
			return subs
		}()},
		{"none", []Subscription{{Devices: []string{"x"}}, {Devices: []string{"y"}}, {Prefixes: []string{"z"}}, {Groups: []string{"north"}}}},
	} {
		b.Run(bc.name, func(b *testing.B) { benchPublish(b, bc.subs) })
	}
}

func benchPublish(b *testing.B, subs []Subscription) {
	p := newPublisher(b, subs)
	b.ReportAllocs()
	for k := 0; b.Loop(); k++ {
		p.publish(k)
		for _, c := range p.clients {
			for len(c.queue) > 0 {
				(<-c.queue).frame.release() // as the reader's writer does
			}
		}
	}
}

// publisher is a feed with one source and readers' queues but no sockets:
// publish(k) hands the source the k-th copy of the same 100 records (20
// devices, 60-byte payloads) to dispatch.
type publisher struct {
	s       *Server
	clients []*client
	records [][]byte
}

func newPublisher(tb testing.TB, subs []Subscription) *publisher {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(Options{Listener: ln, InsecureNoAuth: true, Sources: []Source{{Feed: "tcp://127.0.0.1:1"}}}, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	p := &publisher{s: s}
	for i := range subs {
		c := newClient(&s.opts, s.m)
		s.hub.register(c, newFilter(&subs[i]))
		p.clients = append(p.clients, c)
	}
	now := time.Now().UnixNano()
	p.records = make([][]byte, 100)
	for i := range p.records {
		env := envelope.AppendEncode(nil, &envelope.Envelope{Frontend: "fe-1", Device: fmt.Sprintf("dev-%02d", i%20), Received: now,
			Payload: fmt.Appendf(nil, `{"sent":%d,"temp":21.5,"n":%d}`, now, i)})
		p.records[i] = wire.AppendRecord(nil, &wire.Record{Origin: "fe-1.0000000000000001", Index: uint64(i + 1), Data: env})
	}
	return p
}

func (p *publisher) publish(k int) {
	p.s.hub.seenMu.Lock()
	clear(p.s.hub.seen) // the same records again are not repeats
	p.s.hub.seenMu.Unlock()
	p.s.sources[0].publish("mt-0", uint64(k*len(p.records)+1), p.records)
}
