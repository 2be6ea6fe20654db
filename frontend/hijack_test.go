package frontend

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/wal"
)

// TestFrameBehindHandshake sends the handshake and the first frame in one
// write, so that the frame is already buffered when the server takes over
// the connection: it must not be lost.
func TestFrameBehindHandshake(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	payload := []byte(`{"id":"first"}`)
	mask := [4]byte{1, 2, 3, 4}
	frame := []byte{0x81, 0x80 | byte(len(payload))}
	frame = append(frame, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	req := "GET /v1/ingest HTTP/1.1\r\nHost: " + ts.addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + hsToken(t, "dev-1", nil) + "\r\n\r\n"
	if _, err := nc.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: HTTP %d", resp.StatusCode)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		t.Fatal(err)
	}
	if hdr[0] != 0x81 || hdr[1] >= 126 {
		t.Fatalf("server frame header % x, want a short text frame", hdr)
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	if want := `{"type":"ack","seq":1,"ids":["first"]}`; !strings.EqualFold(string(body), want) {
		t.Fatalf("server frame %s, want %s", body, want)
	}
}
