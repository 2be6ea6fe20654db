package frontend

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/ingest-io/ingest/internal/hijack"
)

// Buffer sizes of an upgraded connection. net/http hands a hijacker a 4 KiB
// reader and a fresh 4 KiB writer, held for the life of the connection: at
// 10,000 devices that is 80 MB of mostly idle buffers. Over TCP the reads
// hold no buffer while the device is idle (hijack.Idle): a read takes a
// 4 KiB buffer from a pool only while what has arrived is read, so that a
// pipelining device's frames are still read with few syscalls. Where the
// connection is not plain TCP (TLS), the reader keeps its own 4 KiB. The
// writer only ever holds one small ack or error frame (a larger frame is
// written past the buffer, straight to the socket).
const (
	readBufBytes  = 4096
	writeBufBytes = 512
)

// hijacker wraps the ResponseWriter given to websocket.Accept: it swaps the
// buffers net/http hands out for smaller ones, and keeps the net.Conn so
// that writes can carry a socket deadline instead of a context with a timer.
// With writeTimeout set, over TCP, the writer bounds each write itself
// (hijack.Bounded: a deadline only for a write that has to wait), and
// bounded says so.
type hijacker struct {
	http.ResponseWriter
	writeTimeout time.Duration
	nc           net.Conn
	bounded      bool
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := hijack.Conn(h.ResponseWriter)
	if err != nil {
		return nil, nil, err
	}
	h.nc = nc
	var w io.Writer = nc
	if bw, ok := hijack.Bounded(nc, h.writeTimeout); ok {
		w, h.bounded = bw, true
	}
	if ic, br, ok := hijack.Idle(nc, brw.Reader); ok {
		return ic, bufio.NewReadWriter(br, bufio.NewWriterSize(w, writeBufBytes)), nil
	}
	br, err := hijack.Reader(brw, nc, readBufBytes)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(w, writeBufBytes)), nil
}
