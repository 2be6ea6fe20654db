package frontend

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Buffer sizes of an upgraded connection. net/http hands a hijacker a 4 KiB
// reader and a fresh 4 KiB writer, held for the life of the connection: at
// 10,000 devices that is 80 MB of mostly idle buffers. The reader keeps
// 4 KiB so that a pipelining device's frames are read with few syscalls;
// the writer only ever holds one small ack or error frame (a larger frame
// is written past the buffer, straight to the socket).
const (
	readBufBytes  = 4096
	writeBufBytes = 512
)

// hijacker wraps the ResponseWriter given to websocket.Accept: it swaps the
// buffers net/http hands out for smaller ones, and keeps the net.Conn so
// that writes can carry a socket deadline instead of a context with a timer.
type hijacker struct {
	http.ResponseWriter
	nc net.Conn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack: response writer is not a hijacker")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, readBufBytes)
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the device sent right behind its handshake (net/http's
		// background read may hold the first one). They must end up in the
		// new reader's buffer: websocket.Accept carries over only what is
		// buffered there.
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), nc), readBufBytes)
		if _, err := br.Peek(n); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("hijack: carry over buffered bytes: %w", err)
		}
	}
	h.nc = nc
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(nc, writeBufBytes)), nil
}
