package frontend

import (
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/protocol"
)

// session is one connection of a device, whatever carries it: a WebSocket
// (*conn) or an MQTT session (*mqttConn). The server keeps at most one per
// device id across both: a newer one replaces the older, so that a device's
// messages stay in order whichever transport it moves to.
type session interface {
	// finish stops taking messages, waits until everything already taken
	// has been appended and acknowledged, and ends the connection. code is
	// the WebSocket close code; an MQTT session maps reason to its own
	// reason codes instead.
	finish(code websocket.StatusCode, reason string)
	// closeNow ends the connection at once, acknowledging nothing more.
	closeNow()
	// ended is closed once the session's reader has returned and its
	// rate-limit bucket has been handed back.
	ended() <-chan struct{}
}

func (c *conn) closeNow()              { c.ws.CloseNow() }
func (c *conn) ended() <-chan struct{} { return c.done }

// revoked reports whether device is disabled (Options.Revoked).
func (s *Server) revoked(device string) bool { return s.opts.Revoked != nil && s.opts.Revoked(device) }

// registration is why register added a session, or did not.
type registration int

const (
	registered      registration = iota
	refusedDraining              // the server drains
	refusedRevoked               // the device is disabled (Options.Revoked)
)

// register adds a connected session to the registry and returns the
// device's previous session, if any. It adds nothing while the server
// drains, or if the device is disabled: the registry may have disabled it
// after its handshake was checked, and CloseRevoked, which the change
// calls, may have run before the session was here to close. Both look
// under s.mu, so one of them sees the other. The session counts in s.wg
// already: its handshake was admitted (admit).
func (s *Server) register(se session, device string) (old session, r registration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil, refusedDraining
	}
	if s.revoked(device) {
		return nil, refusedRevoked
	}
	old = s.devices[device]
	s.devices[device] = se
	s.conns[se] = struct{}{}
	return old, registered
}

// unregister removes a session that has ended.
func (s *Server) unregister(se session, device string) {
	s.mu.Lock()
	delete(s.conns, se)
	if s.devices[device] == se {
		delete(s.devices, device)
	}
	s.mu.Unlock()
}

// takeOver ends a device's older session before its newer one starts
// reading: one session per device keeps its messages in order. The older
// one acknowledges what it had taken first, within one write timeout.
func (s *Server) takeOver(old session, device string) {
	if old == nil {
		return
	}
	s.lg.Info("device reconnected, closing its older connection", "device", device)
	s.wg.Go(func() { old.finish(protocol.ClosePolicyViolation, reasonReplaced) })
	t := time.NewTimer(s.opts.WriteTimeout)
	select {
	case <-old.ended():
	case <-t.C:
		old.closeNow()
		<-old.ended()
	}
	t.Stop()
}

// CloseRevoked closes the open connections of every device that
// Options.Revoked reports, as a newer connection closes an older one: each
// acknowledges what it had taken, then ends, a WebSocket with 1008 and the
// reason revoked, an MQTT 5 session with DISCONNECT 0x98 (administrative
// action), an MQTT 3.1.1 session by closing the connection. It returns how
// many it closes, and does not wait for them. Call it when the registry
// behind Options.Revoked changes.
func (s *Server) CloseRevoked() int {
	if s.opts.Revoked == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return 0 // drain closes every connection
	}
	n := 0
	for device, se := range s.devices {
		if !s.revoked(device) {
			continue
		}
		n++
		s.lg.Info("device disabled in the registry: closing its connection", "device", device)
		// Added under s.mu, as register does: drain waits for s.wg only
		// after it has set draining under s.mu.
		s.wg.Go(func() { se.finish(protocol.ClosePolicyViolation, reasonRevoked) })
	}
	return n
}

// expiryGrace is how long after its token's expiry (past the leeway) a
// session is ended even if it sends nothing: a frame or publish that
// arrives first is refused at once, as unauthorized.
const expiryGrace = time.Second

// endAtExpiry ends se, as a newer connection ends an older one, once its
// token (expiring at exp; zero: never) has expired, past the leeway and
// expiryGrace: a device that only receives commands, or only pings, is not
// served on an expired token. The caller stops the timer it returns (nil
// for a token that never expires) once the session has ended.
func (s *Server) endAtExpiry(se session, device string, exp time.Time) *time.Timer {
	if exp.IsZero() {
		return nil
	}
	return time.AfterFunc(time.Until(exp.Add(s.opts.Auth.Leeway+expiryGrace)), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.draining || s.devices[device] != se {
			return // drain closes every connection; a newer one replaced it
		}
		s.lg.Info("device token expired: closing its connection", "device", device)
		// Added under s.mu, as register does (CloseRevoked).
		s.wg.Go(func() { se.finish(protocol.ClosePolicyViolation, reasonExpired) })
	})
}
