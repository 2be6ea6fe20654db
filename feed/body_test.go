package feed_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/middletier"
)

// TestStalledBody: a request to the feed's port whose body stops part way
// is answered, and its connection closed, within HandshakeTimeout, as its
// headers would be; it used to be held for as long as the client kept the
// connection open (net/http reads what is left of a body before it
// answers, with no deadline of its own).
func TestStalledBody(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}}, HandshakeTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(fs.url, "ws://"), "/v1/feed"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "POST /v1/feed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	c.SetReadDeadline(start.Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer %v after the body stalled: %v", time.Since(start), err)
	}
	resp.Body.Close()
}
