package testkit

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// DialToken dials the WebSocket endpoint u within 5 seconds with a token:
// header as the Authorization header, query as the token parameter, each
// only when not empty. A refusal's response is returned with the error.
func DialToken(u, header, query string) (*websocket.Conn, *http.Response, error) {
	if query != "" {
		u += "?token=" + query
	}
	h := http.Header{}
	if header != "" {
		h.Set("Authorization", header)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
}

// CheckRefusal fails the test unless resp's body is the JSON error frame
// of a refused upgrade with code.
func CheckRefusal(t testing.TB, resp *http.Response, code string) {
	t.Helper()
	var body struct{ Type, Code string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Type != "error" || body.Code != code {
		t.Fatalf("refusal body %+v (%v), want an error with code %s", body, err, code)
	}
}

// StalledBody sends head (a request line and headers, each ending in
// \r\n, with a Content-Length of 100) to addr, then ten bytes of the body
// and nothing more, and reads the answer within limit. It returns the
// answer (body read and closed, in Body's place a copy) or the error of
// the read: a server that waits for the rest of the body gives
// i/o timeout.
func StalledBody(t testing.TB, addr, head string, limit time.Duration) (*http.Response, []byte, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, head+"\r\n{\"name\":\"x"); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(limit))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// DialVia dials the WebSocket URL u over a TCP connection to addr,
// whatever host u names: as a browser does whose DNS answer for that name
// is addr (a page's DNS rebinding onto a loopback server).
func DialVia(u, addr string) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	return websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
}
