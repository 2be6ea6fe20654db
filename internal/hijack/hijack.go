// Package hijack takes over the connection of an HTTP request being upgraded
// to a WebSocket, so that the upgraded connection reads and writes through
// buffers and a net.Conn of the server's choosing rather than the ones
// net/http hands out.
package hijack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Conn hijacks w's connection.
func Conn(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack: response writer is not a hijacker")
	}
	return hj.Hijack()
}

// Reader returns a reader of size bytes over src that first yields the
// bytes brw's reader holds: what the peer sent right behind its handshake
// (net/http's background read may hold the first byte). They are read into
// the new reader's buffer, because websocket.Accept carries over only what
// is buffered in the reader it is given. On an error the caller closes the
// connection.
func Reader(brw *bufio.ReadWriter, src io.Reader, size int) (*bufio.Reader, error) {
	n := brw.Reader.Buffered()
	if n == 0 {
		return bufio.NewReaderSize(src, size), nil
	}
	b, _ := brw.Reader.Peek(n)
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), src), size)
	if _, err := br.Peek(n); err != nil {
		return nil, fmt.Errorf("hijack: carry over buffered bytes: %w", err)
	}
	return br, nil
}
