package hijack

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/ingest-io/ingest/internal/testkit"
)

// TestReaderCarriesOverBufferedBytes: bytes a client sends right behind its
// request are read first from the new reader, then the rest from the socket.
func TestReaderCarriesOverBufferedBytes(t *testing.T) {
	ln := testkit.Listen(t)
	got := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nc, brw, err := Conn(w)
		if err != nil {
			got <- "hijack: " + err.Error()
			return
		}
		defer nc.Close()
		br, err := Reader(brw, nc, 4096)
		if err != nil {
			got <- "reader: " + err.Error()
			return
		}
		b := make([]byte, len("behind-handshake|later"))
		if _, err := io.ReadFull(br, b); err != nil {
			got <- "read: " + err.Error()
			return
		}
		got <- string(b)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\nbehind-handshake|"); err != nil {
		t.Fatal(err)
	}
	// The handler waits for the rest, which only the socket can give.
	if _, err := io.WriteString(c, "later"); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "behind-handshake|later" {
		t.Fatalf("read %q", s)
	}
}

func TestConnRefusesPlainWriter(t *testing.T) {
	var w struct{ http.ResponseWriter }
	if _, _, err := Conn(w); err == nil {
		t.Fatal("hijacked a writer that is no Hijacker")
	}
}
