package testkit

import (
	"context"
	"encoding/json"
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
