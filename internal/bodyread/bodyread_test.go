package bodyread_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/bodyread"
	"github.com/ingest-io/ingest/internal/testkit"
)

// stalled sends h a request whose body stops part way, and reports
// whether it was answered within limit.
func stalled(t *testing.T, h http.Handler, limit time.Duration) (answered bool, took time.Duration) {
	t.Helper()
	ts := httptest.NewServer(h)
	defer ts.Close()
	start := time.Now()
	_, _, err := testkit.StalledBody(t, ts.Listener.Addr().String(), "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n", limit)
	return err == nil, time.Since(start)
}

// A request whose body stops part way is answered, and its connection
// closed, once the bound has passed, whether its handler reads the body or
// not; without the bound it is held past any limit.
func TestStalledBody(t *testing.T) {
	ignores := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	reads := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	for name, h := range map[string]http.Handler{"ignores the body": ignores, "reads the body": reads} {
		if ok, took := stalled(t, bodyread.Bound(h, 200*time.Millisecond), 5*time.Second); !ok {
			t.Errorf("%s, bounded: no answer %v after the body stalled", name, took)
		}
		if ok, took := stalled(t, h, time.Second); ok {
			t.Errorf("%s, unbounded: answered after %v: the test shows nothing", name, took)
		}
	}
}

// A request without a body (a WebSocket handshake's kind) gets no
// deadline: its connection may stay open past the bound.
func TestNoBodyNoDeadline(t *testing.T) {
	held := make(chan error, 1)
	h := bodyread.Bound(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nc, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			held <- err
			return
		}
		defer nc.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n\r\n")
		brw.Flush()
		_, err = brw.ReadString('\n') // waits for the client, past the bound
		held <- err
	}), 50*time.Millisecond)
	ts := httptest.NewServer(h)
	defer ts.Close()
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	io.WriteString(c, "still here\n")
	if err := <-held; err != nil {
		t.Fatalf("a connection without a body was cut: %v", err)
	}
}
