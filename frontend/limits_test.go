package frontend

import (
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/wal"
)

// TestRateLimitSurvivesReconnect: the rate limit is per device, not per
// connection, so reconnecting does not buy a fresh burst. The refill rate
// is so low that no token comes back during the test.
func TestRateLimitSurvivesReconnect(t *testing.T) {
	ts := startServer(t, Options{Rate: 0.001, Burst: 3, MaxBatchMessages: 3}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)

	c := rawDial(t, ts, tok)
	send(t, c, `[{"id":1},{"id":2}]`)
	if f, err := readFrame(t, c); err != nil || f.Type != "ack" || f.Seq != 1 {
		t.Fatalf("first connection: %+v %v", f, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	testkit.WaitFor(t, "first connection gone", 5*time.Second, func() bool { return ts.srv.nconns.Load() == 0 })

	// One token is left: one message passes, the next frame is refused.
	c = rawDial(t, ts, tok)
	send(t, c, `{"id":3}`)
	send(t, c, `{"id":4}`)
	var got []string
	for {
		f, err := readFrame(t, c)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusTryAgainLater {
				t.Fatalf("second connection ended with %v, want 1013", err)
			}
			break
		}
		got = append(got, fmt.Sprintf("%s:%s:%d", f.Type, f.Code, f.Seq))
	}
	if want := []string{"error:rate_limited:2", "ack::1"}; fmt.Sprint(got) != fmt.Sprint(want) &&
		fmt.Sprint(got) != fmt.Sprint([]string{"ack::1", "error:rate_limited:2"}) {
		t.Fatalf("second connection got %v, want an ack for frame 1 and rate_limited for frame 2", got)
	}

	// Another device has its own bucket.
	o := rawDial(t, ts, hsToken(t, "dev-2", nil))
	send(t, o, `[{"id":1},{"id":2},{"id":3}]`)
	if f, err := readFrame(t, o); err != nil || f.Type != "ack" || f.Seq != 1 {
		t.Fatalf("other device: %+v %v", f, err)
	}
}

// TestLimitsBounded: saved buckets are bounded; refilled ones are dropped.
func TestLimitsBounded(t *testing.T) {
	const max = 8
	l := newLimits(1, 10, max) // 1 token/s, burst 10: refilled 10 s after emptying
	now := time.Now().UnixNano()
	for i := range 100 {
		b := l.take(fmt.Sprint("dev-", i), now)
		b.take(now, 10, 1, 10)
		l.put(fmt.Sprint("dev-", i), b, now)
		if n := l.len(); n > max {
			t.Fatalf("%d buckets saved, bound %d", n, max)
		}
	}
	// A device whose bucket is kept gets it back, empty.
	if b := l.take("dev-99", now); b.level(now, 1, 10) != 0 {
		t.Fatalf("dev-99 bucket level %v, want 0", b.level(now, 1, 10))
	}
	// Refilled buckets are not kept, and are swept out.
	later := now + 11*int64(time.Second)
	full := l.take("dev-new", later)
	l.put("dev-new", full, later)
	for i := range max {
		l.put(fmt.Sprint("late-", i), bucket{tokens: 0, last: later}, later)
	}
	for d, b := range l.saved {
		if b.level(later, 1, 10) >= 10 {
			t.Fatalf("refilled bucket of %s still saved", d)
		}
	}
}
