package feed

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/auth"
)

// Close codes of the live feed beside the standard ones.
const (
	// StatusTooSlow closes a reader that stayed too slow (Options.SlowGrace,
	// Options.MaxMissed); a missed notice precedes it.
	StatusTooSlow websocket.StatusCode = 4000
)

// readerClaims are a reader token's claims: the registered ones and scope.
type readerClaims struct {
	jwt.RegisteredClaims
	Scope scopes `json:"scope"`
}

// scopes reads "scope" as a space-separated string (RFC 8693) or an array.
type scopes []string

func (s *scopes) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		*s = strings.Fields(str)
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("scope is neither a string nor an array of strings")
	}
	*s = list
	return nil
}

func (s scopes) has(want string) bool {
	for _, v := range s {
		if v == want {
			return true
		}
	}
	return false
}

// handleFeed authenticates a reader, upgrades and serves the connection.
func (s *Server) handleFeed(w http.ResponseWriter, r *http.Request) {
	var exp time.Time
	reader := "anonymous"
	if s.auth != nil {
		tok, ok := auth.BearerToken(r)
		if !ok {
			s.refuse(w, http.StatusUnauthorized, "unauthorized", "missing bearer token")
			return
		}
		var claims readerClaims
		if err := s.auth.Verify(tok, &claims); err != nil {
			s.lg.Debug("feed: token refused", "remote", r.RemoteAddr, "err", err)
			code := "unauthorized"
			if errors.Is(err, auth.ErrTokenTooLarge) {
				code = "token_too_large"
			}
			s.refuse(w, http.StatusUnauthorized, code, err.Error())
			return
		}
		if !claims.Scope.has(s.opts.Scope) {
			s.refuse(w, http.StatusForbidden, "forbidden", "token lacks scope "+s.opts.Scope)
			return
		}
		if claims.ExpiresAt != nil {
			exp = claims.ExpiresAt.Time
		}
		reader = claims.Subject
	}
	if s.nreaders.Add(1) > int64(s.opts.MaxReaders) {
		s.nreaders.Add(-1)
		w.Header().Set("Retry-After", "5")
		s.refuse(w, http.StatusServiceUnavailable, "too_many_readers", "too many readers")
		return
	}
	defer s.nreaders.Add(-1)
	s.connMu.Lock()
	if s.closing {
		s.connMu.Unlock()
		s.refuse(w, http.StatusServiceUnavailable, "shutting_down", "server shutting down")
		return
	}
	s.connWG.Add(1)
	s.connMu.Unlock()
	defer s.connWG.Done()

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		CompressionMode: websocket.CompressionDisabled,
		OriginPatterns:  s.opts.OriginPatterns,
	})
	if err != nil {
		s.m.handshakes.WithLabelValues("upgrade_failed").Inc()
		return
	}
	s.m.handshakes.WithLabelValues("ok").Inc()
	s.m.readers.Inc()
	defer s.m.readers.Dec()
	reason := s.serveConn(ws, exp)
	s.m.disconnects.WithLabelValues(reason).Inc()
	s.lg.Debug("feed: reader disconnected", "reader", reader, "remote", r.RemoteAddr, "reason", reason)
}

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.m.handshakes.WithLabelValues(code).Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ingest"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(errorFrame(code, msg), '\n'))
}

// serveConn runs one reader connection: a reader goroutine (coder/websocket
// needs one always reading: it answers pings and sees the close), a pinger,
// and this goroutine as the only writer of data frames. It returns why the
// connection ended.
func (s *Server) serveConn(ws *websocket.Conn, exp time.Time) (reason string) {
	// The reader and the pinger do not use the shutdown context: a read or
	// ping whose context ends closes the connection at once, and shutdown
	// closes it with 1001 instead.
	rctx, rcancel := context.WithCancel(context.Background())
	ws.SetReadLimit(int64(s.opts.MaxFrameBytes))
	c := newClient(&s.opts, s.m)
	defer s.hub.unregister(c)

	subs := make(chan []byte, 1)
	readerGone := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer rcancel()
	wg.Go(func() {
		defer close(readerGone)
		for {
			typ, b, err := ws.Read(rctx)
			if err != nil {
				return
			}
			if typ != websocket.MessageText {
				b = nil // answered as invalid
			}
			select {
			case subs <- b:
			case <-rctx.Done():
				return
			}
		}
	})
	wg.Go(func() {
		t := time.NewTicker(s.opts.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-readerGone:
				return
			case <-t.C:
			}
			pctx, pcancel := context.WithTimeout(rctx, s.opts.PongTimeout)
			err := ws.Ping(pctx)
			pcancel()
			if err != nil {
				ws.CloseNow() // the reader sees it and ends
				return
			}
		}
	})

	write := func(b []byte) error {
		wctx, wcancel := context.WithTimeout(s.conns, s.opts.WriteTimeout)
		defer wcancel()
		return ws.Write(wctx, websocket.MessageText, b)
	}
	var expired <-chan time.Time
	if !exp.IsZero() {
		t := time.NewTimer(time.Until(exp))
		defer t.Stop()
		expired = t.C
	}
	subTimer := time.NewTimer(s.opts.SubscribeTimeout)
	defer subTimer.Stop()
	subscribed := false

	for {
		select {
		case <-s.conns.Done():
			ws.Close(websocket.StatusGoingAway, "server shutting down")
			return "shutdown"
		case <-readerGone:
			ws.CloseNow()
			return "closed"
		case <-expired:
			ws.Close(websocket.StatusPolicyViolation, "unauthorized")
			return "unauthorized"
		case <-subTimer.C:
			if !subscribed {
				ws.Close(websocket.StatusPolicyViolation, "subscribe expected")
				return "subscribe_timeout"
			}
		case <-c.slow:
			s.hub.unregister(c)
			n := c.abandon()
			if write(missedFrame(n, "slow", "", 0, 0)) != nil {
				ws.CloseNow()
				return "slow"
			}
			ws.Close(StatusTooSlow, "too slow")
			return "slow"
		case b := <-subs:
			sub, err := DecodeSubscribe(b, s.opts.MaxFilters)
			if err != nil {
				if write(errorFrame("invalid_subscribe", err.Error())) != nil {
					ws.CloseNow()
					return "write_error"
				}
				continue
			}
			if len(sub.From) > 0 && subscribed {
				if write(errorFrame("invalid_subscribe", "from is allowed in the first subscribe only")) != nil {
					ws.CloseNow()
					return "write_error"
				}
				continue
			}
			subscribed = true
			live := s.hub.register(c, newFilter(sub))
			if write(subscribedFrame(live)) != nil {
				ws.CloseNow()
				return "write_error"
			}
			if len(sub.From) > 0 {
				if err := s.replay(s.conns, sub, live, write); err != nil {
					ws.CloseNow()
					return "write_error"
				}
			}
		case it := <-c.queue:
			if it.missed > 0 {
				if write(missedFrame(it.missed, "slow", "", 0, 0)) != nil {
					ws.CloseNow()
					return "write_error"
				}
			}
			if write(it.frame) != nil {
				ws.CloseNow()
				return "write_error"
			}
			if !it.notice {
				s.m.delivered.Inc()
			}
			if len(c.queue) > 0 {
				c.stillBehind()
			} else {
				if n := c.caughtUp(); n > 0 {
					if write(missedFrame(n, "slow", "", 0, 0)) != nil {
						ws.CloseNow()
						return "write_error"
					}
				}
			}
		}
	}
}

// replay writes, before any live message, the records each middletier in
// sub.From holds from the asked sequence up to where the reader's live
// messages start, filtered like them.
func (s *Server) replay(ctx context.Context, sub *Subscription, live map[string]uint64, write func([]byte) error) error {
	f := newFilter(sub)
	for mt, from := range sub.From {
		src := s.hub.source(mt)
		to, known := live[mt]
		if src == nil || !known || src.resume == nil {
			if err := write(errorFrame("resume_unavailable", "no resume from middletier "+strconv.Quote(mt)+": not followed, no records seen yet, or no consumer endpoint")); err != nil {
				return err
			}
			continue
		}
		if from >= to {
			continue
		}
		if to-from > uint64(s.opts.MaxResume) {
			cut := to - uint64(s.opts.MaxResume)
			if err := write(missedFrame(cut-from, "resume_limit", mt, from, cut-1)); err != nil {
				return err
			}
			from = cut
		}
		for from < to {
			r, err := src.resume.fetch(ctx, from, min(to-from, maxFetch))
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := write(missedFrame(to-from, "released", mt, from, to-1)); err != nil {
					return err
				}
				break
			}
			if r.First > from {
				n := min(r.First, to)
				if err := write(missedFrame(n-from, "released", mt, from, n-1)); err != nil {
					return err
				}
				from = n
			}
			if from >= to {
				break
			}
			if len(r.Records) == 0 {
				if err := write(missedFrame(to-from, "released", mt, from, to-1)); err != nil {
					return err
				}
				break
			}
			recs := r.Records[:min(uint64(len(r.Records)), to-from)]
			s.m.replayed.Add(float64(len(recs)))
			for i, rb := range recs {
				ev, _, ok := s.decode(mt, from+uint64(i), rb, false)
				if !ok || !f.match(ev.device, ev.group) {
					continue
				}
				if err := write(ev.frame); err != nil {
					return err
				}
				s.m.delivered.Inc()
			}
			from += uint64(len(recs))
		}
	}
	return nil
}
