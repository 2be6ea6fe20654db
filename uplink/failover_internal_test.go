package uplink

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/wal"
)

// A failover from a middletier whose connections flap moves the Link past
// that middletier wherever a look has since ranked it: here the Link is on
// its second choice b, whose last connection flapped, and a look has just
// found the first choice a back while the Link was not connected (so the
// next connect would start from a). The failover must send the next dial
// to a. Before, it counted from the start of the list, past a, back to b.
func TestFlapFailoverAfterALook(t *testing.T) {
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.AppendBatch(context.Background(), [][]byte{[]byte("waiting")}); err != nil {
		t.Fatal(err)
	}
	const a, b = "tcp://a:1", "tcp://b:1"
	k, err := New(Options{ID: "fe-1", Middletiers: []string{a, b}, Failover: time.Second}, l, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer k.m.unregister()
	s := &state{endpoints: []string{a, b}, at: 1, flapped: b, lastAck: time.Now().Add(-time.Minute), lookEvery: time.Second}
	if err := k.rewind(s, 1); err != nil {
		t.Fatal(err)
	}
	if err := k.looked(s, look{ranked: []string{a, b}}); err != nil {
		t.Fatal(err)
	}
	if err := k.checkTimeouts(s); err != nil {
		t.Fatal(err)
	}
	next := a // connect starts from the first choice again
	if s.at < len(s.endpoints) {
		next = s.endpoints[s.at]
	}
	if next != a {
		t.Fatalf("after the failover from %s the next dial goes to %s, want %s", b, next, a)
	}
	if got := testutil.ToFloat64(k.m.failovers); got != 1 {
		t.Fatalf("%v failovers counted, want 1", got)
	}
}
