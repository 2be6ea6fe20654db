// Package loopback tells a request a web page's DNS rebinding sent to a
// loopback server from one of a local client.
//
// A server that accepts anyone on a loopback listener (the engine without
// auth: every local process is trusted) is reached by a web page too: the
// page's own host name, made to resolve to 127.0.0.1, is same-origin with
// the server for the browser, so neither Origin checks nor CORS stop the
// page from reading and writing. Only the Host the request names tells it
// apart: the name of a domain on the Internet (the attacker's), where a
// local client names localhost, an IP address, or a name of one label
// (the machine's own, which Debian maps to 127.0.1.1).
package loopback

import (
	"net"
	"net/http"
	"strings"
)

// Refused is the message a refusal of a foreign Host gives.
const Refused = "without auth a request naming a host of the DNS (a web page rebound to this listener) is refused: connect to localhost or 127.0.0.1"

// Only serves h the requests whose Host is Local; the others go to refuse
// (a server's own error body, 403 and Refused).
func Only(h http.Handler, refuse func(w http.ResponseWriter)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Local(r.Host) {
			refuse(w)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Local reports whether host, a request's Host (with or without a port),
// is one a local client names: empty (a request of HTTP/1.0 without one,
// never a browser's), an IP address, a name without a dot, or localhost
// and the names below it (RFC 6761: never sent to DNS). A name with a dot,
// a domain of the DNS a page's server may answer for, is not.
func Local(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ".")
	if !strings.Contains(host, ".") || net.ParseIP(host) != nil {
		return true
	}
	l := strings.ToLower(host)
	return strings.HasSuffix(l, ".localhost")
}
