// Package client is a Go client for devices speaking device protocol v1
// (docs/protocol.md) to an ingest frontend.
//
// A Client keeps one WebSocket connection, sends each message as one frame
// with up to Options.Window frames unacknowledged, and reports each message's
// fate once: acknowledged (durable on the frontend), or rejected with a
// *ServerError. Messages that were neither when the connection broke are sent
// again, in their original order, after reconnecting with exponential
// backoff; a retry hint from the server (overloaded, rate_limited, or the
// Retry-After of a handshake refused 503) is the least it waits (up to an
// hour), and it waits up to half the hint more, at random, so that devices
// turned away together do not come back together. Delivery is therefore at least once:
// a message whose ack was lost with the connection is sent again and may be
// stored twice.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/protocol"
)

// Errors.
var (
	// ErrClosed is the result of messages still unsettled when Close is called,
	// and is returned by Send after Close.
	ErrClosed = errors.New("client: closed")
	// ErrRefused wraps a refused handshake that retrying will not fix
	// (HTTP 401/403, or close 1008): the client stops. The error of a
	// refused handshake also wraps the server's code (e.g.
	// protocol.CodeRevoked, protocol.CodeUnauthorized) and message as a
	// *ServerError, for errors.As. With a TokenFunc, a
	// 401 (or a close 1008 "unauthorized") is retried with a fresh token,
	// and the client stops only when the handshake after that is refused
	// 401 again; a 403 (e.g. "revoked") stops it at once.
	ErrRefused = errors.New("client: refused")
	// ErrTooLarge wraps the result of a message larger than the server's
	// frame limit: the server closed the connection with 1009 on it. The
	// client learns the limit from the close (the frontend names it) and
	// Send refuses a larger payload at once from then on.
	ErrTooLarge = errors.New("client: message over the server's frame limit")
	// ErrNotData is returned by Send for a payload led by
	// "__type":"command_result": the server takes such a frame for an
	// answer to a command, not a message, and does not number it, so
	// every later acknowledgement would be read as the one before's.
	// Commands are answered through Options.OnCommand.
	ErrNotData = errors.New(`client: a payload led by "__type":"command_result" is a command's answer, not a message`)
	// ErrBatch is returned by Send for a JSON array: the server takes one
	// as a batch of messages, each durable or refused on its own, and a
	// Send has one result; one refused element would report the whole
	// array refused, and sending it again would store the others twice.
	// Send each message of it instead.
	ErrBatch = errors.New("client: a payload is one JSON object; send each message of an array on its own")
)

// ServerError is a message rejected by the server with an error frame.
type ServerError struct {
	Code       string // stable error code, e.g. protocol.CodeBadTimestamp
	Message    string // human-readable detail
	Index      int    // position in a batch frame, -1 for a single message
	RetryAfter time.Duration
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("client: server rejected message: %s: %s", e.Code, e.Message)
}

// Result is the fate of one message.
type Result struct {
	// N is the number Send returned for the message.
	N uint64
	// Err is nil when the message is durable on the frontend, a *ServerError
	// when the server rejected it, ErrClosed or an error wrapping ErrRefused
	// when the client gave up on it, an error wrapping ErrTooLarge when the
	// message is over the server's frame limit.
	Err error
}

// Options configure a Client. Zero fields mean the defaults noted.
type Options struct {
	// URL of the ingest endpoint, e.g. ws://host:8080/v1/ingest.
	URL string
	// Token is the device JWT, sent as "Authorization: Bearer". TokenFunc,
	// when set, is called before every dial instead (to refresh tokens).
	Token     string
	TokenFunc func(ctx context.Context) (string, error)
	// Window is how many frames may be unacknowledged at once. Default 16.
	Window int
	// MaxQueue bounds messages held by the client, sent or not; Send blocks
	// when it is reached. Default 10,000.
	MaxQueue int
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles on
	// each failed attempt with jitter. Defaults 100ms and 30s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// DialTimeout bounds each handshake and WriteTimeout each frame write.
	// Defaults 10s.
	DialTimeout  time.Duration
	WriteTimeout time.Duration
	// PingInterval is how long the client waits without a pong before it
	// pings the server; it pings sooner when a frame has waited
	// WriteTimeout for its ack. A ping not answered within WriteTimeout
	// (not counting time the client spends handling frames and calling
	// OnResult, when it cannot read the pong) means the connection is
	// dead (a silent network path does not end a TCP connection by
	// itself): the client closes it, reconnects and sends what was
	// unacknowledged again. Default 30s.
	PingInterval time.Duration
	// OnResult, when set, is called once per message, in the order results
	// arrive, one call at a time, from the client's goroutines. It must not block for long,
	// and must not call Close, which waits for those goroutines (call it
	// from a goroutine of its own). Nor may it wait for results: Flush
	// and SendWait would wait for ever, for results that only come once
	// it has returned, and so may Send when MaxQueue messages are held
	// (the queue drains only as results are delivered). To send a
	// message again (a rejected one, fixed), hand it to a goroutine of
	// your own, or give Send a context that ends.
	OnResult func(Result)
	// OnCommand, when set, answers the commands the server sends
	// (docs/commands.md), one at a time in the order they arrive, on a
	// goroutine of the client's. Its answer is sent to the server as a
	// command_result frame. A command may arrive more than once (delivery
	// is at least once): a repeat of one of the last 1,024 answered is
	// answered again with the same Answer without calling OnCommand. The
	// context ends when the client is closed. Without it, commands are
	// ignored, and the server sends them again until they expire. Like
	// OnResult, it must not call Close.
	OnCommand func(ctx context.Context, cmd Command) Answer
	// HTTPClient is used for handshakes. Default http.DefaultClient.
	HTTPClient *http.Client
	// Logger receives connection events. Default: none.
	Logger *slog.Logger
}

// Command is a command from the server.
type Command struct {
	// ID names the command; a repeat has the same ID.
	ID string
	// Name and Payload are what the application submitted; Payload is one
	// JSON value ("null" when it gave none).
	Name    string
	Payload []byte
}

// Answer is a device's answer to a command.
type Answer struct {
	// Status is protocol.StatusOK when the command was carried out, else
	// protocol.StatusError, protocol.StatusRejected or a status of the
	// device's own (printable ASCII, at most 64 bytes).
	Status string
	// Payload, if not empty, is one JSON value sent with the answer, at
	// most protocol.MaxCommandPayloadBytes, UTF-8, nested at most
	// protocol.MaxCommandPayloadDepth deep. An answer the server would
	// refuse (a larger payload, or one that is not such a value; a status
	// that is not 1 to 64 printable ASCII bytes), or one whose frame is
	// over the server's frame limit as the client learnt it, is sent (and
	// repeated) as protocol.StatusError without a payload, and logged.
	Payload []byte
}

// answersKept is how many answers a client remembers to answer repeats.
const answersKept = 1024

type msg struct {
	n     uint64
	data  []byte
	seq   uint64    // frame number on the current connection; 0 while queued
	sent  time.Time // when it went in flight
	err   error     // rejection waiting for the ack that covers it
	waitc chan error
	// tooBig: the server closed with 1009 on this message (when the
	// close did not say the limit); it is failed, not sent again.
	tooBig bool
}

// Client is a device connection that survives reconnects. Its methods are safe
// for concurrent use.
type Client struct {
	opts Options
	lg   *slog.Logger

	mu       sync.Mutex
	cond     *sync.Cond
	queue    []*msg // not yet sent on the current connection, in order
	inflight []*msg // sent on the current connection, in frame order
	// delivering counts messages taken off queue or inflight whose results
	// are being delivered (outside mu); Flush and Pending count them.
	delivering int
	nextN      uint64
	// settled is the number of the last message whose result has been
	// delivered: results are delivered in the order of the numbers.
	settled uint64
	// frameLimit is the server's frame limit in bytes as its last 1009
	// close named it; 0 while unknown.
	frameLimit int
	closed     bool
	fatal      error
	ws         *websocket.Conn

	cmds chan Command // to the command goroutine; nil without OnCommand

	// reading is when the reader last began waiting for a frame, as
	// nanoseconds since epoch plus one; 0 while it is not waiting (it is
	// handling a frame, delivering results, or not started). A pong is
	// read only while it waits, so the keepalive judges a connection
	// dead only by how long it has waited.
	reading atomic.Int64
	epoch   time.Time

	// ctx bounds the client's redials (and the TokenFunc calls before
	// them); Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	done chan struct{}
}

// Dial connects to the frontend and returns a Client that keeps the connection
// up until Close. The first handshake happens before Dial returns, so a bad
// URL or token fails here.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if opts.Window <= 0 {
		opts.Window = 16
	}
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 10000
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 30 * time.Second
	}
	if _, err := url.Parse(opts.URL); err != nil {
		return nil, fmt.Errorf("parse url: %w", err)
	}
	c := &Client{opts: opts, lg: opts.Logger, done: make(chan struct{}), epoch: time.Now()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.lg = lifecycle.Logger(c.lg)
	c.cond = sync.NewCond(&c.mu)
	if opts.OnCommand != nil {
		c.cmds = make(chan Command, 256)
	}
	ws, err := c.dial(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	go c.run(ws)
	return c, nil
}

func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	tok := c.opts.Token
	if c.opts.TokenFunc != nil {
		var err error
		if tok, err = c.opts.TokenFunc(ctx); err != nil {
			return nil, fmt.Errorf("get token: %w", err)
		}
	}
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, c.opts.URL, &websocket.DialOptions{HTTPClient: c.opts.HTTPClient, HTTPHeader: h})
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			// The body says why (unauthorized, token_too_large,
			// revoked...), and what to do differs.
			se := refusalBody(resp)
			if se == nil {
				return nil, &refusal{status: resp.StatusCode, err: fmt.Errorf("dial %s: %w: HTTP %d", c.opts.URL, ErrRefused, resp.StatusCode)}
			}
			return nil, &refusal{status: resp.StatusCode, se: se,
				err: fmt.Errorf("dial %s: %w: HTTP %d %s: %s", c.opts.URL, ErrRefused, resp.StatusCode, se.Code, se.Message)}
		}
		err = fmt.Errorf("dial %s: %w", c.opts.URL, err)
		if resp != nil && (resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests) {
			// At its connection limit, starting or draining, the
			// frontend says when to come back: a retry hint, as in an
			// overloaded error frame.
			if d := retryAfter(resp.Header.Get("Retry-After")); d > 0 {
				return nil, &busy{after: d, err: err}
			}
		}
		return nil, err
	}
	// Acks are small; the server's frames are bounded by its own limits.
	ws.SetReadLimit(1 << 20)
	return ws, nil
}

// Send queues payload, one JSON object, and returns its number once queued;
// its result comes through Options.OnResult. It blocks while MaxQueue messages
// are held. payload is copied. A payload led by "__type":"command_result"
// is refused (ErrNotData), and a JSON array (ErrBatch).
func (c *Client) Send(ctx context.Context, payload []byte) (uint64, error) {
	m, err := c.enqueue(ctx, payload, nil)
	if err != nil {
		return 0, err
	}
	return m.n, nil
}

// SendWait queues payload and waits for its result. If ctx ends first, it
// returns ctx.Err(), whether or not the message was queued by then (Send
// blocks while MaxQueue messages are held): a queued message is not taken
// back, it is still sent, and its result comes through OnResult. Sending
// it again may store it twice.
func (c *Client) SendWait(ctx context.Context, payload []byte) error {
	ch := make(chan error, 1)
	if _, err := c.enqueue(ctx, payload, ch); err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wakeOn wakes whoever waits on c.cond when ctx ends, so that a wait
// bounded by ctx sees it end; the function returned undoes it.
func (c *Client) wakeOn(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
}

func (c *Client) enqueue(ctx context.Context, payload []byte, ch chan error) (*msg, error) {
	defer c.wakeOn(ctx)()
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue)+len(c.inflight) >= c.opts.MaxQueue && !c.closed && c.fatal == nil && ctx.Err() == nil {
		c.cond.Wait()
	}
	switch {
	case c.fatal != nil:
		return nil, c.fatal
	case c.closed:
		return nil, ErrClosed
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case protocol.IsCommandResult(payload):
		return nil, ErrNotData
	case len(bytes.TrimLeft(payload, " \t\r\n")) > 0 && bytes.TrimLeft(payload, " \t\r\n")[0] == '[':
		return nil, ErrBatch
	case c.frameLimit > 0 && len(payload) > c.frameLimit:
		return nil, c.tooLarge(len(payload))
	}
	c.nextN++
	m := &msg{n: c.nextN, data: append([]byte(nil), payload...), waitc: ch}
	c.queue = append(c.queue, m)
	c.cond.Broadcast()
	return m, nil
}

// Flush waits until every message sent so far has its result (OnResult
// has returned for it); not for those sent while it waits.
func (c *Client) Flush(ctx context.Context) error {
	defer c.wakeOn(ctx)()
	c.mu.Lock()
	defer c.mu.Unlock()
	last := c.nextN
	for c.settled < last && !c.closed && ctx.Err() == nil {
		c.cond.Wait()
	}
	if c.closed {
		return ErrClosed
	}
	return ctx.Err()
}

// Pending returns how many messages have no result yet.
func (c *Client) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) + len(c.inflight) + c.delivering
}

// Err returns why the client stopped on its own (a refusal), or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fatal
}

// Close closes the connection and ends the client's goroutines. Messages
// without a result get ErrClosed; they may or may not have been stored.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closed = true
	ws := c.ws
	c.cond.Broadcast()
	c.mu.Unlock()
	if ws != nil {
		c.closeBounded(ws)
	}
	c.cancel() // a redial, or the TokenFunc before it, ends now
	<-c.done
	return nil
}

// closeWait bounds the close handshake of Close.
const closeWait = 500 * time.Millisecond

// closeBounded closes ws with a close handshake, or without one if that
// has not finished within closeWait: a server that does not read (under
// backpressure, or behind a stuck proxy) would otherwise hold a write,
// and the close frame behind it, for seconds. Once ws.Close has begun,
// ws.CloseNow does nothing more; what ends the connection then is
// cancelling c.ctx, which the session's reads and writes use.
func (c *Client) closeBounded(ws *websocket.Conn) {
	done := make(chan struct{})
	go func() {
		ws.Close(websocket.StatusNormalClosure, "")
		close(done)
	}()
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		c.cancel()
		<-done
	}
}

// run owns the connection: it writes frames while a reader goroutine takes
// acks, and reconnects when the connection ends.
func (c *Client) run(ws *websocket.Conn) {
	defer close(c.done)
	defer c.cancel()
	if c.cmds != nil {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { c.commands(ctx) })
		defer wg.Wait()
		defer cancel()
	}
	attempt := 0
	// unauthorized: the last handshake was refused 401 and a fresh token
	// is being tried; another 401 stops the client.
	unauthorized := false
	for {
		acked, retry, fatal := c.session(ws)
		ws.CloseNow()
		if fatal != nil {
			c.failAll(fatal)
			return
		}
		if acked {
			attempt = 0
		}
		for {
			c.mu.Lock()
			c.ws = nil
			closed := c.closed
			c.mu.Unlock()
			if closed {
				c.failAll(ErrClosed)
				return
			}
			d := c.opts.MinBackoff << min(attempt, 20)
			if d > c.opts.MaxBackoff || d <= 0 {
				d = c.opts.MaxBackoff
			}
			d = d/2 + rand.N(d/2+1)
			if retry > 0 {
				// The server's hint is the least wait, up to an hour
				// (maxRetryHint). It sent the same hint to every device
				// it turned away at that moment: up to half of it again
				// spreads them, so that they do not all come back at
				// once (docs/protocol.md: "add random jitter").
				retry = min(retry, maxRetryHint)
				d = max(d, retry+rand.N(retry/2+1))
			}
			attempt++
			retry = 0
			if !c.sleep(d) {
				c.failAll(ErrClosed)
				return
			}
			var err error
			ws, err = c.dial(c.ctx)
			if err == nil {
				c.lg.Debug("reconnected", "attempt", attempt, "backoff", d)
				break
			}
			c.lg.Info("reconnect failed", "err", err, "attempt", attempt)
			var bz *busy
			if errors.As(err, &bz) {
				retry = bz.after
			}
			var rf *refusal
			if errors.As(err, &rf) {
				// 403 (revoked, or a configuration problem) is never
				// fixed by retrying; a 401 may be, by a fresh token, once.
				if rf.status != http.StatusUnauthorized || c.opts.TokenFunc == nil || unauthorized {
					c.failAll(err)
					return
				}
				unauthorized = true
			} else {
				unauthorized = false
			}
		}
		unauthorized = false
	}
}

// busy is a handshake refused with HTTP 503 (or 429) and a Retry-After:
// the next dial waits at least after.
type busy struct {
	after time.Duration
	err   error
}

func (b *busy) Error() string { return b.err.Error() }
func (b *busy) Unwrap() error { return b.err }

// maxRetryHint bounds the wait a server's retry hint asks for: one of
// centuries is a fault, and with its jitter would overflow to no wait.
const maxRetryHint = time.Hour

// retryAfter parses a Retry-After header, seconds or an HTTP date; 0 when
// it holds neither.
func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	if n, err := strconv.ParseUint(h, 10, 32); err == nil {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return time.Until(t)
	}
	return 0
}

// refusal is a handshake refused with HTTP 401 or 403; it wraps ErrRefused,
// and the server's code and message as a *ServerError when its body
// named them.
type refusal struct {
	status int
	err    error
	se     *ServerError
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() []error {
	if r.se == nil {
		return []error{r.err}
	}
	return []error{r.err, r.se}
}

// refusalBody decodes the body of a refused handshake (docs/protocol.md:
// {"type":"error","code":...,"message":...}); nil if it is not one.
func refusalBody(resp *http.Response) *ServerError {
	if resp.Body == nil {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	f, err := protocol.DecodeServerFrame(bytes.TrimSpace(b))
	if err != nil || f.Type != protocol.TypeError || f.Code == "" {
		return nil
	}
	return &ServerError{Code: f.Code, Message: f.Message, Index: -1}
}

// sleep waits d unless the client is closed first. The end of the wait is
// a flag the timer sets under mu, not a reading of the clock: the timer's
// one broadcast could otherwise come while the clock still read "before the
// deadline" (the timer starts before any deadline can be computed), and
// nothing else might ever wake the loop again.
func (c *Client) sleep(d time.Duration) bool {
	expired := false
	t := time.AfterFunc(d, func() {
		c.mu.Lock()
		expired = true
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer t.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.closed && !expired {
		c.cond.Wait()
	}
	return !c.closed
}

// session runs one connection until it ends. It reports whether anything was
// acknowledged, the server's retry hint, and a fatal error if the client must
// stop.
func (c *Client) session(ws *websocket.Conn) (acked bool, retry time.Duration, fatal error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, 0, nil
	}
	c.ws = ws
	// Everything unacknowledged goes out again first, in its original order.
	if len(c.inflight) > 0 {
		for _, m := range c.inflight {
			m.seq, m.err = 0, nil
		}
		c.queue = append(c.inflight, c.queue...)
		c.inflight = nil
	}
	c.mu.Unlock()

	var (
		ended   bool
		readErr error
		rd      sync.WaitGroup
	)
	rd.Go(func() {
		a, r, err := c.read(c.ctx, ws)
		c.mu.Lock()
		acked, retry, readErr, ended = a, r, err, true
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	kctx, stopKeepalive := context.WithCancel(c.ctx)
	rd.Go(func() { c.keepalive(kctx, ws) })

	var seq uint64
	for {
		c.mu.Lock()
		for !ended && !c.closed && (len(c.queue) == 0 || len(c.inflight) >= c.opts.Window) {
			c.cond.Wait()
		}
		if ended || c.closed {
			c.mu.Unlock()
			break
		}
		m := c.queue[0]
		over := m.tooBig || c.frameLimit > 0 && len(m.data) > c.frameLimit
		if over && len(c.inflight) == 0 && c.delivering > 0 {
			// Its result is delivered here, but the reader may still be
			// delivering the results of the ack that emptied the window:
			// this one comes after them, never alongside. It stays queued
			// meanwhile, so that Flush waits for it.
			c.cond.Wait()
			c.mu.Unlock()
			continue
		}
		c.queue[0] = nil
		c.queue = c.queue[1:]
		if over {
			// Never sent: its result comes in order, with the ack of the
			// frame before it, or now if none is waiting.
			err := c.tooLarge(len(m.data))
			if len(c.inflight) > 0 {
				m.seq, m.err, m.sent = seq, err, time.Now()
				c.inflight = append(c.inflight, m)
				c.mu.Unlock()
				continue
			}
			c.delivering++
			c.cond.Broadcast()
			c.mu.Unlock()
			c.deliver(m, err)
			c.delivered([]*msg{m})
			continue
		}
		seq++
		m.seq = seq
		m.sent = time.Now()
		c.inflight = append(c.inflight, m)
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.WriteTimeout)
		err := ws.Write(ctx, websocket.MessageText, m.data)
		cancel()
		if err != nil {
			ws.CloseNow()
			break
		}
	}
	stopKeepalive()
	ws.CloseNow()
	rd.Wait()
	switch code := websocket.CloseStatus(readErr); code {
	case protocol.ClosePolicyViolation:
		var ce websocket.CloseError
		errors.As(readErr, &ce)
		if ce.Reason == protocol.ReasonUnauthorized && c.opts.TokenFunc != nil {
			return acked, retry, nil
		}
		return acked, retry, fmt.Errorf("%w: closed by server with 1008 %q", ErrRefused, ce.Reason)
	case protocol.CloseMessageTooBig:
		var ce websocket.CloseError
		errors.As(readErr, &ce)
		c.lg.Info("a frame was over the server's limit", "reason", ce.Reason)
		c.tooBig(ce.Reason)
	case -1:
		c.lg.Debug("connection ended", "err", readErr)
	default:
		c.lg.Debug("connection closed by server", "code", code, "err", readErr)
	}
	return acked, retry, nil
}

// keepalive pings the server over ws until ctx ends: after PingInterval
// without a pong, and when the oldest frame in flight has waited
// WriteTimeout for its ack (since it was sent or since the last pong). A
// ping whose pong does not come while the reader has waited WriteTimeout
// for a frame (since the ping, or since it began waiting) closes ws: the
// path is dead, and only a new connection gets the messages through.
// While the reader is busy (delivering results to a slow OnResult) the
// pong cannot be read, and frames it reads show the path alive: neither
// counts against the connection.
func (c *Client) keepalive(ctx context.Context, ws *websocket.Conn) {
	t := time.NewTicker(max(min(c.opts.PingInterval, c.opts.WriteTimeout)/4, time.Millisecond))
	defer t.Stop()
	last := time.Now() // the last pong, or the start of the connection
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		due := now.Sub(last) >= c.opts.PingInterval
		c.mu.Lock()
		if len(c.inflight) > 0 {
			since := c.inflight[0].sent
			if last.After(since) {
				since = last
			}
			due = due || now.Sub(since) >= c.opts.WriteTimeout
		}
		c.mu.Unlock()
		if !due {
			continue
		}
		if !c.ping(ctx, ws, t.C) {
			return
		}
		last = time.Now()
	}
}

// ping pings the server over ws and reports whether the pong came. It
// waits, checking at each tick, until the reader has been waiting for a
// frame WriteTimeout since the ping (or since it began waiting, if that
// was later) without the pong; then it closes ws. It also returns false
// when ctx ends or the ping fails.
func (c *Client) ping(ctx context.Context, ws *websocket.Conn, tick <-chan time.Time) bool {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan error, 1)
	sent := time.Since(c.epoch)
	go func() { res <- ws.Ping(pctx) }()
	for {
		select {
		case err := <-res:
			if err != nil && ctx.Err() == nil {
				c.lg.Info("ping failed: closing the connection", "err", err)
				ws.CloseNow()
			}
			return err == nil
		case <-ctx.Done():
			cancel()
			<-res
			return false
		case <-tick:
		}
		r := c.reading.Load()
		if r == 0 {
			continue // busy: the pong may be waiting to be read
		}
		since := max(time.Duration(r-1), sent)
		if waited := time.Since(c.epoch) - since; waited >= c.opts.WriteTimeout {
			c.lg.Info("no pong from the server: closing the connection", "waited", waited)
			ws.CloseNow()
			cancel()
			<-res
			return false
		}
	}
}

// tooLarge is the error of a message of n bytes over the server's frame
// limit, which it names once it is known. c.mu is held.
func (c *Client) tooLarge(n int) error {
	if c.frameLimit > 0 {
		return fmt.Errorf("%w: %d bytes, the server's limit is %d", ErrTooLarge, n, c.frameLimit)
	}
	return fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
}

// tooBig takes note of a close 1009 with reason: the server's frame limit
// if the reason names it (the frontend's "read limited at N bytes" names
// the limit plus one), and which messages in flight were over it. When
// the reason names the limit and no message in flight is over it, the
// frame over it was not a message (a command's answer): no message is
// blamed. When the reason names no limit, the largest message in flight
// is taken for the culprit, so that one message cannot make the client
// resend it first on every connection for ever.
func (c *Client) tooBig(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int
	named := false
	if _, err := fmt.Sscanf(reason, "read limited at %d bytes", &n); err == nil && n > 1 {
		c.frameLimit = n - 1
		named = true
	}
	var largest *msg
	for _, m := range c.inflight {
		if c.frameLimit > 0 && len(m.data) > c.frameLimit {
			return
		}
		if largest == nil || len(m.data) > len(largest.data) {
			largest = m
		}
	}
	if largest != nil && !named {
		largest.tooBig = true
	}
}

// read handles the server's frames until the connection ends.
// Cancelling ctx closes the connection.
func (c *Client) read(ctx context.Context, ws *websocket.Conn) (acked bool, retry time.Duration, err error) {
	defer c.reading.Store(0)
	for {
		c.reading.Store(int64(time.Since(c.epoch)) + 1)
		_, b, err := ws.Read(ctx)
		c.reading.Store(0)
		if err != nil {
			return acked, retry, err
		}
		f, err := protocol.DecodeServerFrame(b)
		if err != nil {
			c.lg.Warn("undecodable frame from server", "err", err)
			continue
		}
		switch f.Type {
		case protocol.TypeAck:
			acked = true
			c.settle(f.Seq)
		case protocol.TypeCommand:
			if c.cmds == nil {
				continue
			}
			var id string
			if err := json.Unmarshal(f.ID, &id); err != nil {
				continue
			}
			select {
			case c.cmds <- Command{ID: id, Name: f.Name, Payload: bytes.Clone(f.Payload)}:
			default:
				// The handler is behind: the server sends it again.
			}
		case protocol.TypeError:
			se := &ServerError{Code: f.Code, Message: f.Message, Index: f.Index, RetryAfter: f.RetryAfter}
			if protocol.EndsConnection(f.Code) {
				// The connection ends; this frame and later ones are sent again.
				retry = max(retry, se.RetryAfter)
			} else {
				c.reject(f.Seq, se)
			}
		}
	}
}

// commands answers commands, one at a time, until ctx ends.
func (c *Client) commands(ctx context.Context) {
	answers := map[string]Answer{}
	var order []string
	for {
		var cmd Command
		select {
		case <-ctx.Done():
			return
		case cmd = <-c.cmds:
		}
		a, ok := answers[cmd.ID]
		if !ok {
			a = c.opts.OnCommand(ctx, cmd)
			if a.Status == "" {
				a.Status = protocol.StatusOK
			}
			// The frontend's own decoder says whether the server would
			// refuse the frame; the repeats of the command would be
			// answered with it until its TTL.
			if _, err := protocol.DecodeCommandResult(protocol.AppendCommandResult(nil, cmd.ID, a.Status, a.Payload)); err != nil {
				c.lg.Warn("command answer the server would refuse: answering error without a payload",
					"id", cmd.ID, "name", cmd.Name, "status", a.Status, "bytes", len(a.Payload), "why", err)
				a = Answer{Status: protocol.StatusError}
			}
			answers[cmd.ID] = a
			order = append(order, cmd.ID)
			if len(order) > answersKept {
				delete(answers, order[0])
				order = order[1:]
			}
		}
		c.mu.Lock()
		ws := c.ws
		limit := c.frameLimit
		c.mu.Unlock()
		if ws == nil {
			continue // the server sends the command again on the next connection
		}
		frame := protocol.AppendCommandResult(nil, cmd.ID, a.Status, a.Payload)
		if limit > 0 && len(frame) > limit && len(a.Payload) > 0 {
			// The server would close the connection on it (1009), and
			// on its every repeat: answer error without the payload,
			// and answer repeats so too.
			c.lg.Warn("command answer over the server's frame limit: answering error without it",
				"id", cmd.ID, "name", cmd.Name, "status", a.Status, "bytes", len(frame), "limit", limit)
			a = Answer{Status: protocol.StatusError}
			answers[cmd.ID] = a
			frame = protocol.AppendCommandResult(nil, cmd.ID, a.Status, nil)
		}
		wctx, cancel := context.WithTimeout(ctx, c.opts.WriteTimeout)
		err := ws.Write(wctx, websocket.MessageText, frame)
		cancel()
		if err != nil {
			c.lg.Debug("command answer not written", "id", cmd.ID, "err", err)
		}
	}
}

// reject records a rejection for frame seq; its result is delivered with the
// ack that covers it, keeping results in order.
func (c *Client) reject(seq uint64, err *ServerError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.inflight {
		if m.seq == seq {
			if m.err == nil {
				m.err = err
			}
			return
		}
	}
}

// settle delivers results for every frame up to seq.
func (c *Client) settle(seq uint64) {
	c.mu.Lock()
	i := 0
	for i < len(c.inflight) && c.inflight[i].seq <= seq {
		i++
	}
	done := append([]*msg(nil), c.inflight[:i]...)
	c.inflight = c.inflight[i:]
	c.delivering += len(done)
	c.cond.Broadcast()
	c.mu.Unlock()
	for _, m := range done {
		c.deliver(m, m.err)
	}
	c.delivered(done)
}

func (c *Client) failAll(err error) {
	c.mu.Lock()
	ms := append(c.inflight, c.queue...)
	c.inflight, c.queue = nil, nil
	if err != ErrClosed && c.fatal == nil {
		c.fatal = err
	}
	c.delivering += len(ms)
	c.cond.Broadcast()
	c.mu.Unlock()
	for _, m := range ms {
		c.deliver(m, err)
	}
	c.delivered(ms)
}

// delivered notes that the results of ms, taken off the queues in order,
// have been delivered.
func (c *Client) delivered(ms []*msg) {
	if len(ms) == 0 {
		return
	}
	c.mu.Lock()
	c.delivering -= len(ms)
	c.settled = max(c.settled, ms[len(ms)-1].n)
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *Client) deliver(m *msg, err error) {
	if m.waitc != nil {
		m.waitc <- err
	}
	if c.opts.OnResult != nil {
		c.opts.OnResult(Result{N: m.n, Err: err})
	}
}
