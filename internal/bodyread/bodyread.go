// Package bodyread bounds how long an HTTP server waits for a request's
// body.
//
// net/http bounds the headers (ReadHeaderTimeout) but, without a
// ReadTimeout, not the body: a client that sends part of a body and then
// nothing holds its request's goroutine and connection for as long as it
// keeps the connection open, even when the handler never reads the body
// (net/http reads what is left of it, up to 256 KiB, before it answers).
// The engine's servers cannot set a ReadTimeout: their WebSocket
// connections live long. Bound sets a read deadline on requests that have
// a body, and on no other: a WebSocket handshake has none.
package bodyread

import (
	"net/http"
	"time"
)

// Bound returns h with the body of each request that has one (a Content
// Length other than zero, or chunked) to be read within d of the start of
// its handler, by the handler and by net/http after it; past d the read
// fails and the connection is closed after the answer. net/http clears the
// deadline before it reads the connection's next request.
func Bound(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 { // -1: chunked, length unknown
			http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		}
		h.ServeHTTP(w, r)
	})
}
