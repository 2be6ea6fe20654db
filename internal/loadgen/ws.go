package loadgen

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// Close codes a device sends or reads without a close frame's payload
// (RFC 6455 §7.4.1).
const (
	closeNormal   = 1000
	closeNoStatus = 1005 // a close frame without a code
)

// maxServerFrame bounds a server frame's payload. The frontend's frames are
// acks, errors and control frames of a few hundred bytes at most.
const maxServerFrame = 1 << 20

// mask is the masking key of every frame a device sends. RFC 6455 asks
// clients for an unpredictable key so that a browser's page cannot aim
// bytes at a proxy's cache; a device that writes only its own JSON has no
// such page, and a fixed key keeps the cost of a frame a copy. As a word,
// for masking 8 bytes at a time.
var (
	mask     = [4]byte{0x12, 0x34, 0x56, 0x78}
	mask64   = binary.LittleEndian.Uint64([]byte{0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78})
	errShort = errors.New("short close payload")
)

// appendFrame appends one masked client frame (FIN set) of opcode op
// carrying p to dst.
func appendFrame(dst []byte, op byte, p []byte) []byte {
	dst = append(dst, 0x80|op)
	switch n := len(p); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, p...)
	b := dst[start:]
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^mask64)
	}
	for ; i < len(b); i++ {
		b[i] ^= mask[i&3]
	}
	return dst
}

// frame is one server frame as decodeFrame reads it. payload aliases the
// buffer it was decoded from.
type frame struct {
	fin     bool
	op      byte
	payload []byte
}

// errProtocol wraps every way a server frame breaks RFC 6455.
var errProtocol = errors.New("websocket protocol error")

// decodeFrame decodes the server frame at the start of b. It returns the
// bytes the frame takes, or 0 and no error when b holds only part of it.
// A server frame is never masked, uses no reserved bit (no extension is
// negotiated), has a known opcode, states its length in the fewest bytes,
// and is at most limit bytes; a control frame is whole (FIN) and at most 125
// bytes.
func decodeFrame(b []byte, limit int) (frame, int, error) {
	if len(b) < 2 {
		return frame{}, 0, nil
	}
	h0, h1 := b[0], b[1]
	f := frame{fin: h0&0x80 != 0, op: h0 & 0x0f}
	if h0&0x70 != 0 {
		return frame{}, 0, fmt.Errorf("%w: reserved bits set", errProtocol)
	}
	if h1&0x80 != 0 {
		return frame{}, 0, fmt.Errorf("%w: masked server frame", errProtocol)
	}
	switch f.op {
	case opContinuation, opText, opBinary:
	case opClose, opPing, opPong:
		if !f.fin {
			return frame{}, 0, fmt.Errorf("%w: fragmented control frame", errProtocol)
		}
	default:
		return frame{}, 0, fmt.Errorf("%w: opcode %#x", errProtocol, f.op)
	}
	n, hdr := uint64(h1&0x7f), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return frame{}, 0, nil
		}
		n, hdr = uint64(binary.BigEndian.Uint16(b[2:])), 4
		if n < 126 {
			return frame{}, 0, fmt.Errorf("%w: length %d not in its shortest form", errProtocol, n)
		}
	case 127:
		if len(b) < 10 {
			return frame{}, 0, nil
		}
		n, hdr = binary.BigEndian.Uint64(b[2:]), 10
		if n <= 0xffff {
			return frame{}, 0, fmt.Errorf("%w: length %d not in its shortest form", errProtocol, n)
		}
	}
	if f.op >= opClose && n > 125 {
		return frame{}, 0, fmt.Errorf("%w: control frame of %d bytes", errProtocol, n)
	}
	if n > uint64(limit) {
		return frame{}, 0, fmt.Errorf("%w: frame of %d bytes, over %d", errProtocol, n, limit)
	}
	end := hdr + int(n)
	if len(b) < end {
		return frame{}, 0, nil
	}
	f.payload = b[hdr:end]
	return f, end, nil
}

// parseClose reads a close frame's payload: a 2-byte code and a UTF-8
// reason, or nothing (closeNoStatus).
func parseClose(p []byte) (code int, reason string, err error) {
	switch {
	case len(p) == 0:
		return closeNoStatus, "", nil
	case len(p) == 1:
		return 0, "", fmt.Errorf("%w: %w", errProtocol, errShort)
	}
	code = int(binary.BigEndian.Uint16(p))
	if !utf8.Valid(p[2:]) {
		return 0, "", fmt.Errorf("%w: close reason not UTF-8", errProtocol)
	}
	return code, string(p[2:]), nil
}

// closePayload is the payload of a close frame with code.
func closePayload(code int) []byte {
	return binary.BigEndian.AppendUint16(nil, uint16(code))
}

// HandshakeError is a refused WebSocket handshake: the server answered with
// HTTP status Status instead of 101.
type HandshakeError struct {
	Status     int
	Code       string        // the "code" of the JSON body, when it has one
	RetryAfter time.Duration // the Retry-After header
}

func (e *HandshakeError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("handshake refused: HTTP %d %s", e.Status, e.Code)
	}
	return fmt.Sprintf("handshake refused: HTTP %d", e.Status)
}

// refused reports whether retrying the handshake with the same credentials
// cannot help (401, 403).
func (e *HandshakeError) refused() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// target is a device endpoint, parsed once.
type target struct {
	mqtt     byte // 4 (mqtt://) or 5 (mqtt5://): an MQTT target; 0: WebSocket
	tls      bool
	addr     string // host:port
	host     string // the Host header
	resource string // path and query
}

func parseTarget(raw string) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("parse url: %w", err)
	}
	t := target{host: u.Host, resource: u.RequestURI()}
	port := u.Port()
	switch u.Scheme {
	case "ws":
		if port == "" {
			port = "80"
		}
	case "wss":
		t.tls = true
		if port == "" {
			port = "443"
		}
	case "mqtt", "mqtt5":
		t.mqtt = 4
		if u.Scheme == "mqtt5" {
			t.mqtt = 5
		}
		if port == "" {
			port = mqttPort
		}
	default:
		return target{}, fmt.Errorf("parse url %q: scheme %q, want ws, wss, mqtt or mqtt5", raw, u.Scheme)
	}
	if u.Hostname() == "" {
		return target{}, fmt.Errorf("parse url %q: no host", raw)
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)
	return t, nil
}

// withQuery returns t with name=value added to its query.
func (t target) withQuery(name, value string) target {
	sep := "?"
	if strings.Contains(t.resource, "?") {
		sep = "&"
	}
	t.resource += sep + name + "=" + url.QueryEscape(value)
	return t
}

// dialTCP dials addr from local (nil: any address) within timeout, with
// Nagle's algorithm off: a device's frames go out as they are written.
func dialTCP(ctx context.Context, addr string, local net.Addr, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{LocalAddr: local, Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	return nc, nil
}

// handshakeWithin gives a handshake on nc the dial's time, ending it
// early when ctx ends; call what it returns when the handshake is over
// (the deadline it set stays until the caller clears it).
func handshakeWithin(ctx context.Context, nc net.Conn, timeout time.Duration) (stop func() bool) {
	nc.SetDeadline(time.Now().Add(timeout))
	return context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
}

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// dial opens a WebSocket connection to t from local (nil: any address),
// presenting token as "Authorization: Bearer" when it is not empty. It
// returns the connection and the bytes the server sent after its
// handshake response, which belong to the first frames.
func dial(ctx context.Context, t target, local net.Addr, token string, timeout time.Duration) (net.Conn, []byte, error) {
	nc, err := dialTCP(ctx, t.addr, local, timeout)
	if err != nil {
		return nil, nil, err
	}
	if t.tls {
		host, _, _ := net.SplitHostPort(t.addr)
		tc := tls.Client(nc, &tls.Config{ServerName: host})
		nc = tc
	}
	stop := handshakeWithin(ctx, nc, timeout)
	defer stop()
	rest, err := handshake(nc, t, token)
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	if !stop() {
		nc.Close()
		return nil, nil, ctx.Err()
	}
	nc.SetDeadline(time.Time{})
	return nc, rest, nil
}

func handshake(nc net.Conn, t target, token string) ([]byte, error) {
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	var req strings.Builder
	req.WriteString("GET " + t.resource + " HTTP/1.1\r\nHost: " + t.host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\n")
	if token != "" {
		req.WriteString("Authorization: Bearer " + token + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(nc, req.String()); err != nil {
		return nil, fmt.Errorf("write handshake: %w", err)
	}
	br := bufio.NewReaderSize(nc, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("read handshake: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		he := &HandshakeError{Status: resp.StatusCode}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			he.RetryAfter = time.Duration(s) * time.Second
		}
		var body struct {
			Code string `json:"code"`
		}
		if json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&body) == nil {
			he.Code = body.Code
		}
		resp.Body.Close()
		return nil, he
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return nil, fmt.Errorf("%w: bad handshake response", errProtocol)
	}
	if resp.Header.Get("Sec-WebSocket-Extensions") != "" {
		return nil, fmt.Errorf("%w: server chose an extension none was offered", errProtocol)
	}
	rest, _ := br.Peek(br.Buffered())
	return append([]byte(nil), rest...), nil
}
