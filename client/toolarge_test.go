package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// TestOversizeFrameFailsItself: one message over the frontend's frame
// limit makes the frontend close with 1009. The client must fail that
// message (ErrTooLarge) rather than resend it first on every reconnect
// for ever; the messages after it are stored, and once the client has
// learnt the limit, Send refuses a larger payload at once.
func TestOversizeFrameFailsItself(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{MaxFrameBytes: 4096, MaxMessageBytes: 4096}, wal.Options{})
	var res results
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-r3"), OnResult: res.add,
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := fmt.Appendf(nil, `{"id":1,"s":"%s"}`, strings.Repeat("x", 8000))
	if _, err := c.Send(ctx, big); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, msg(2)); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		t.Fatalf("flush: %v; results after 3s: %+v (message 2, which is valid, is never stored)", err, res.snapshot())
	}
	got := res.snapshot()
	if len(got) != 2 || got[0].N != 1 || !errors.Is(got[0].Err, client.ErrTooLarge) || got[1].N != 2 || got[1].Err != nil {
		t.Fatalf("results %+v, want message 1 ErrTooLarge and message 2 acknowledged", got)
	}
	// The limit is known now: a payload over it is refused by Send, one
	// at it goes through.
	if _, err := c.Send(ctx, big); !errors.Is(err, client.ErrTooLarge) {
		t.Fatalf("send over the learnt limit: %v, want ErrTooLarge", err)
	}
	fits := fitting(3, 4096)
	if err := c.SendWait(fctx, fits); err != nil {
		t.Fatalf("send wait of a %d-byte message: %v", len(fits), err)
	}
	c.Close()
	s.Stop(t)
	if ids := stored(t, s.Dir); len(ids) != 2 || ids[0] != 2 || ids[1] != 3 {
		t.Fatalf("stored %v, want [2 3]", ids)
	}
}

// fitting returns message id of exactly size bytes, its strings each
// within the frontend's 1,024-byte bound.
func fitting(id, size int) []byte {
	b := fmt.Appendf(nil, `{"id":%d`, id)
	for k := 0; ; k++ {
		field := fmt.Sprintf(`,"f%d":""`, k)
		left := size - len(b) - len(field) - 1 // 1 for the closing brace
		if left <= 1000 {
			return fmt.Appendf(b, `,"f%d":"%s"}`, k, strings.Repeat("x", left))
		}
		b = fmt.Appendf(b, `,"f%d":"%s"`, k, strings.Repeat("x", 1000))
	}
}

// TestOversizeFrameUnnamedLimit: a server (or a proxy before it) that
// closes with 1009 without naming its limit: the largest message in flight
// is taken for the culprit and failed, and the others go through.
func TestOversizeFrameUnnamedLimit(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for seq := 1; ; seq++ {
			_, b, err := ws.Read(r.Context())
			if err != nil {
				return
			}
			if len(b) > 100 {
				ws.Close(websocket.StatusMessageTooBig, "too big")
				return
			}
			if ws.Write(r.Context(), websocket.MessageText, fmt.Appendf(nil, `{"type":"ack","seq":%d}`, seq)) != nil {
				return
			}
		}
	}))
	defer hs.Close()
	var res results
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ingest", Token: "t", OnResult: res.add,
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, p := range [][]byte{msg(1), fitting(2, 200), msg(3)} {
		if _, err := c.Send(ctx, p); err != nil {
			t.Fatalf("send %d: %v", i+1, err)
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		t.Fatalf("flush: %v; results: %+v", err, res.snapshot())
	}
	got := res.snapshot()
	if len(got) != 3 || got[0].Err != nil || !errors.Is(got[1].Err, client.ErrTooLarge) || got[2].Err != nil {
		t.Fatalf("results %+v, want 1 and 3 acknowledged, 2 ErrTooLarge", got)
	}
}

// TestOversizeAnswerPayloadNotSent: an answer whose payload is over
// protocol.MaxCommandPayloadBytes is not sent as is (the server would
// refuse it, or close the connection on it): the command is answered
// "error" without a payload, and a repeat of the command gets the same.
func TestOversizeAnswerPayloadNotSent(t *testing.T) {
	got, hs := commandServer(t, "c1", "c1")
	defer hs.Close()
	var calls atomic.Int32
	big := `"` + strings.Repeat("a", protocol.MaxCommandPayloadBytes) + `"`
	c, err := client.Dial(context.Background(), client.Options{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ingest", Token: "t",
		OnCommand: func(context.Context, client.Command) client.Answer {
			calls.Add(1)
			return client.Answer{Status: protocol.StatusOK, Payload: []byte(big)}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		select {
		case cr := <-got:
			if cr.ID != "c1" || cr.Status != protocol.StatusError || len(cr.Payload) != 0 {
				t.Fatalf("answer %d: id %q status %q, %d payload bytes; want c1 %q without a payload", i, cr.ID, cr.Status, len(cr.Payload), protocol.StatusError)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("answer %d not received", i)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("OnCommand called %d times, want 1 (a repeat is answered from the cache)", n)
	}
}

// TestTooBigResultInOrder: a message over the learnt frame limit
// that the writer takes while nothing is in flight has its result
// delivered from the writer's goroutine, while the reader's goroutine may
// still be delivering the results of the ack that emptied the window. The
// old client then called OnResult concurrently, and the later message's
// result came first; OnResult must be called once per message, in order,
// one call at a time.
func TestTooBigResultInOrder(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{MaxFrameBytes: 4096, MaxMessageBytes: 4096}, wal.Options{})
	var (
		mu      sync.Mutex
		order   []uint64
		done    []uint64
		running int
		overlap []string
	)
	onResult := func(r client.Result) {
		mu.Lock()
		running++
		if running > 1 {
			overlap = append(overlap, fmt.Sprintf("OnResult(%d) called while another runs", r.N))
		}
		order = append(order, r.N)
		mu.Unlock()
		if r.Err == nil {
			time.Sleep(200 * time.Millisecond) // an OnResult that takes a moment
		}
		mu.Lock()
		done = append(done, r.N)
		running--
		mu.Unlock()
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-o1"), OnResult: onResult, Window: 1,
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := fmt.Appendf(nil, `{"id":1,"s":"%s"}`, strings.Repeat("x", 8000))
	for _, p := range [][]byte{big, msg(2), big} {
		if _, err := c.Send(ctx, p); err != nil && !errors.Is(err, client.ErrTooLarge) {
			t.Fatal(err)
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(overlap) > 0 || len(order) != 3 || order[0] != 1 || order[1] != 2 || order[2] != 3 {
		t.Fatalf("OnResult called in order %v, returned in order %v, want [1 2 3]; %v", order, done, overlap)
	}
}

// TestInvalidAnswerSentAsError: an answer the server would refuse (a
// payload that is not one JSON value, not UTF-8 or nested past the
// frame's depth; a status that is not 1 to 64 printable ASCII bytes) is
// sent as "error" without a payload, as an oversize one is. Before, it was
// sent as it was, refused (invalid_message), and every repeat of the
// command was answered from the cache with the same refused frame: the
// command stayed unanswered until its TTL, and the device's later
// commands waited behind it.
func TestInvalidAnswerSentAsError(t *testing.T) {
	deep := strings.Repeat("[", protocol.MaxCommandPayloadDepth+1) + strings.Repeat("]", protocol.MaxCommandPayloadDepth+1)
	answers := []client.Answer{
		{Status: protocol.StatusOK, Payload: []byte(`done`)},
		{Status: protocol.StatusOK, Payload: []byte(`{"a":1} {"b":2}`)},
		{Status: protocol.StatusOK, Payload: []byte("\"a\xffb\"")},
		{Status: protocol.StatusOK, Payload: []byte(deep)},
		{Status: "bad\nstatus"},
		{Status: strings.Repeat("s", protocol.MaxStatusBytes+1), Payload: []byte(`1`)},
		{Status: "ünicode"},
	}
	// The last command's answer is valid, and sent as it is.
	answers = append(answers, client.Answer{Status: "done-" + strings.Repeat("x", protocol.MaxStatusBytes-5), Payload: []byte(strings.Repeat("[", protocol.MaxCommandPayloadDepth) + strings.Repeat("]", protocol.MaxCommandPayloadDepth))})
	ids := make([]string, len(answers))
	for i := range ids {
		ids[i] = fmt.Sprintf("c%d", i)
	}
	got, hs := commandServer(t, ids...)
	defer hs.Close()
	c, err := client.Dial(context.Background(), client.Options{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ingest", Token: "t",
		OnCommand: func(_ context.Context, cmd client.Command) client.Answer {
			var i int
			fmt.Sscanf(cmd.ID, "c%d", &i)
			return answers[i]
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, a := range answers {
		select {
		case cr := <-got:
			want := client.Answer{Status: protocol.StatusError}
			if i == len(answers)-1 {
				want = a
			}
			if cr.ID != fmt.Sprintf("c%d", i) || cr.Status != want.Status || string(cr.Payload) != string(want.Payload) {
				t.Errorf("answer %d (%q %.40q): id %q status %q payload %.40q; want status %q payload %.40q", i, a.Status, a.Payload, cr.ID, cr.Status, cr.Payload, want.Status, want.Payload)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("answer %d not received", i)
		}
	}
}

// commandServer is a server of the device protocol that sends the client a
// command of each id in turn, reads its answer, and hands the answer over
// decoded as the frontend decodes it: a refused one is reported, and
// handed over as status "refused".
func commandServer(t *testing.T, ids ...string) (<-chan protocol.CommandResult, *httptest.Server) {
	got := make(chan protocol.CommandResult, len(ids))
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.SetReadLimit(1 << 20)
		defer ws.CloseNow()
		for i, id := range ids {
			if ws.Write(r.Context(), websocket.MessageText, fmt.Appendf(nil, `{"type":"command","id":%q,"name":"n","payload":null}`, id)) != nil {
				return
			}
			_, b, err := ws.Read(r.Context())
			if err != nil {
				return
			}
			cr, err := protocol.DecodeCommandResult(b)
			if err != nil {
				t.Errorf("answer %d %.80q refused: %v", i, b, err)
				cr = protocol.CommandResult{ID: id, Status: "refused"}
			}
			cr.Payload = append([]byte(nil), cr.Payload...)
			got <- cr
		}
		ws.Read(r.Context())
	}))
	return got, hs
}
