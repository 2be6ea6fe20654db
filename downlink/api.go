package downlink

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/bodyread"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wire"
)

// Scope is the scope an application token must carry to use the API. A
// device's token has none, so it is refused.
const Scope = "commands"

// Routes are the API's routes, as net/http patterns. docs/commands.yaml
// describes each.
var Routes = []string{
	"POST /v1/devices/{id}/commands",
	"GET /v1/devices/{id}/commands",
	"GET /v1/commands/{cid}",
	"DELETE /v1/commands/{cid}",
}

// API error codes: the "code" of every error body. They never change
// meaning.
const (
	CodeUnauthorized   = "unauthorized"    // 401: no token, or a token that does not verify
	CodeForbidden      = "forbidden"       // 403: a token without the commands scope (a device's token); without auth, a browser's request from another origin
	CodeInvalidDevice  = "invalid_device"  // 400: the device id is empty or too long
	CodeInvalidJSON    = "invalid_json"    // 400: the body is not one JSON object of the documented members
	CodeInvalidCommand = "invalid_command" // 400: no name, a name too long, or a payload that is not JSON (UTF-8) or nested too deep
	CodeInvalidTTL     = "invalid_ttl"     // 400: ttl_ms negative, not an integer or over the bound
	CodeInvalidState   = "invalid_state"   // 400: ?state= names no state
	CodeTooLarge       = "too_large"       // 413: the payload or the body over its bound
	CodeNotFound       = "not_found"       // 404: no such command
	CodeNotCancellable = "not_cancellable" // 409: the command was sent already, or is final
	CodeKeyReused      = "key_reused"      // 409: the idempotency key names a command with another name or payload
	CodeUnavailable    = "unavailable"     // 503: the device's home did not answer; try again
	CodeFull           = "full"            // 503: the device's home keeps as many commands as its log has room for; try again once some finish
)

// APIOptions configure the API handler.
type APIOptions struct {
	// Verifier checks application tokens; nil serves without auth (on a
	// loopback listener only: the caller checks).
	Verifier *auth.Verifier
	// MaxTTL bounds a command's time to live; it must not exceed the
	// homes' own bound. Default 7 days.
	MaxTTL time.Duration
	// Timeout bounds the wait for a home's answer, and the reading of a
	// request's body. Default 5s.
	Timeout time.Duration
}

// NewAPI returns the HTTP handler of the command API over l. lg may be nil.
func NewAPI(l *Link, o APIOptions, lg *slog.Logger) http.Handler {
	if o.MaxTTL <= 0 {
		o.MaxTTL = 7 * 24 * time.Hour
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	lg = lifecycle.Logger(lg)
	a := &api{l: l, o: o, lg: lg, cross: http.NewCrossOriginProtection()}
	mux := http.NewServeMux()
	mux.Handle(Routes[0], a.bounded(a.auth(a.submit)))
	mux.Handle(Routes[1], a.bounded(a.auth(a.list)))
	mux.Handle(Routes[2], a.bounded(a.auth(a.get)))
	mux.Handle(Routes[3], a.bounded(a.auth(a.cancel)))
	return mux
}

// bounded reads a request's body, if it has one, within the API's bound,
// on every route and whatever the answer (bodyread): a body submit reads,
// and one net/http reads after the handler (a request refused before its
// body is read, or on a route that takes none). submit lifts the bound
// once it has read its body.
func (a *api) bounded(h http.HandlerFunc) http.Handler { return bodyread.Bound(h, a.o.Timeout) }

type api struct {
	l     *Link
	o     APIOptions
	lg    *slog.Logger
	cross *http.CrossOriginProtection
}

// auth checks the application's token. Without auth, a browser's request
// on behalf of a page of another origin is refused instead: the API has no
// token then to tell an application from any page the user opens, whose
// form or no-cors fetch can post a body the API takes as JSON whatever its
// Content-Type. Requests of no browser (no Origin, no Sec-Fetch-Site) and
// same-origin ones are served; GET is always.
func (a *api) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.o.Verifier == nil {
			if err := a.cross.Check(r); err != nil {
				fail(w, http.StatusForbidden, CodeForbidden, "a browser request from another origin is refused without auth")
				return
			}
		}
		if a.o.Verifier != nil {
			tok, ok := auth.BearerToken(r)
			if !ok {
				fail(w, http.StatusUnauthorized, CodeUnauthorized, "missing bearer token")
				return
			}
			var c auth.ScopedClaims
			if err := a.o.Verifier.Verify(tok, &c); err != nil {
				fail(w, http.StatusUnauthorized, CodeUnauthorized, err.Error())
				return
			}
			if !c.Scope.Has(Scope) {
				fail(w, http.StatusForbidden, CodeForbidden, "token lacks scope "+Scope+" (a device's token is not an application's)")
				return
			}
		}
		h(w, r)
	}
}

// SubmitRequest is the body of POST /v1/devices/{id}/commands.
type SubmitRequest struct {
	Name           string          `json:"name"`
	Payload        json.RawMessage `json:"payload,omitempty"`
	TTLMS          *int64          `json:"ttl_ms,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
}

// CommandJSON is a command as the API shows it.
type CommandJSON struct {
	ID          string          `json:"id"`
	Device      string          `json:"device"`
	Name        string          `json:"name"`
	Payload     json.RawMessage `json:"payload,omitempty"`
	State       string          `json:"state"`
	Created     *time.Time      `json:"created,omitempty"`
	Expires     *time.Time      `json:"expires,omitempty"`
	Sent        *time.Time      `json:"sent,omitempty"`
	Done        *time.Time      `json:"done,omitempty"`
	Status      string          `json:"status,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
	Idempotency string          `json:"idempotency_key,omitempty"`
}

func toJSON(c *wire.Command) CommandJSON {
	t := func(ns int64) *time.Time {
		if ns == 0 {
			return nil
		}
		v := time.Unix(0, ns).UTC()
		return &v
	}
	j := CommandJSON{ID: c.ID, Device: c.Device, Name: c.Name, State: c.State.String(),
		Created: t(c.Created), Expires: t(c.Expires), Sent: t(c.Sent), Done: t(c.Done), Status: c.Status}
	if len(c.Payload) > 0 {
		j.Payload = c.Payload
	}
	if len(c.Result) > 0 {
		j.Result = c.Result
	}
	if !strings.HasPrefix(c.Key, autoKeyPrefix) {
		j.Idempotency = c.Key
	}
	return j
}

// autoKeyPrefix marks the keys the API draws for submits without one, so
// that its own retries to a home never create a second command.
const autoKeyPrefix = "\x00auto-"

// maxBody bounds a submit's body: the largest payload and the rest.
const maxBody = protocol.MaxCommandPayloadBytes + 4<<10

func (a *api) submit(w http.ResponseWriter, r *http.Request) {
	device := r.PathValue("id")
	if envelope.CheckID(device) != nil || len(device) > wire.MaxNameLen {
		fail(w, http.StatusBadRequest, CodeInvalidDevice, "device id must be 1 to 255 bytes")
		return
	}
	// The body is read within the API's bound (bounded set it): a client
	// that stops sending it must not hold the request.
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		// The connection is closed after the answer: net/http would read
		// what is left of the body first.
		w.Header().Set("Connection", "close")
		fail(w, http.StatusBadRequest, CodeInvalidJSON, "read body: "+err.Error())
		return
	}
	if len(body) > maxBody {
		w.Header().Set("Connection", "close") // the rest is not read
		fail(w, http.StatusRequestEntityTooLarge, CodeTooLarge, "body over the payload bound")
		return
	}
	// Read whole: the wait for the home is bounded by its context; the
	// body's deadline has no more to do.
	http.NewResponseController(w).SetReadDeadline(time.Time{})
	var req SubmitRequest
	if err := DecodeSubmit(body, &req); err != nil {
		fail(w, http.StatusBadRequest, CodeInvalidJSON, err.Error())
		return
	}
	if k := r.Header.Get("Idempotency-Key"); k != "" && req.IdempotencyKey == "" {
		req.IdempotencyKey = k
	}
	s := wire.Submit{Device: device, Name: req.Name, Payload: req.Payload, Key: req.IdempotencyKey}
	payloadErr := protocol.CheckCommandPayload(req.Payload)
	switch {
	case req.Name == "" || len(req.Name) > protocol.MaxCommandNameBytes:
		fail(w, http.StatusBadRequest, CodeInvalidCommand, "name must be 1 to 128 bytes")
		return
	case len(req.Payload) > protocol.MaxCommandPayloadBytes:
		fail(w, http.StatusRequestEntityTooLarge, CodeTooLarge, "payload over 16384 bytes")
		return
	case payloadErr != nil:
		fail(w, http.StatusBadRequest, CodeInvalidCommand, payloadErr.Error())
		return
	case len(req.IdempotencyKey) > 200 || strings.HasPrefix(req.IdempotencyKey, "\x00"):
		fail(w, http.StatusBadRequest, CodeInvalidCommand, "idempotency key must be at most 200 bytes")
		return
	case req.TTLMS != nil && (*req.TTLMS <= 0 || time.Duration(*req.TTLMS) > a.o.MaxTTL/time.Millisecond):
		fail(w, http.StatusBadRequest, CodeInvalidTTL, "ttl_ms must be from 1 to "+a.o.MaxTTL.String()+" in milliseconds")
		return
	}
	if req.TTLMS != nil {
		s.TTLMS = uint64(*req.TTLMS)
	}
	if s.Key == "" {
		var b [12]byte
		rand.Read(b[:])
		s.Key = autoKeyPrefix + hex.EncodeToString(b[:])
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.o.Timeout)
	defer cancel()
	rep, err := a.l.Submit(ctx, s)
	if err != nil {
		unavailable(w, err)
		return
	}
	switch {
	case rep.Code == "" && len(rep.Commands) == 1:
		writeJSON(w, http.StatusAccepted, toJSON(&rep.Commands[0]))
	case rep.Code == CodeKeyReused:
		fail(w, http.StatusConflict, CodeKeyReused, "the idempotency key names another command")
	case rep.Code == wire.CodeInvalid:
		fail(w, http.StatusBadRequest, CodeInvalidCommand, "the home refused the command")
	case rep.Code == wire.CodeFull:
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusServiceUnavailable, CodeFull, "the device's home keeps as many commands as its log has room for")
	default:
		oddReply(w, rep)
	}
}

// oddReply answers a request whose home replied what it never should: a
// code the API does not know, or a reply without the command it names.
func oddReply(w http.ResponseWriter, rep *wire.Reply) {
	unavailable(w, fmt.Errorf("the home answered %q with %d commands", rep.Code, len(rep.Commands)))
}

// DecodeSubmit decodes a submit's body strictly: one JSON object with only
// the members of SubmitRequest, named exactly.
func DecodeSubmit(body []byte, req *SubmitRequest) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return errors.New("body is not a JSON object")
	}
	if members == nil {
		return errors.New("body is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the object")
	}
	for k := range members {
		switch k {
		case "name", "payload", "ttl_ms", "idempotency_key":
		default:
			return errors.New("unknown member " + k)
		}
	}
	if p, ok := members["payload"]; ok && string(bytes.TrimSpace(p)) == "null" {
		req.Payload = nil
	}
	return nil
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	a.byID(w, r, wire.QueryGet)
}

func (a *api) cancel(w http.ResponseWriter, r *http.Request) {
	a.byID(w, r, wire.QueryCancel)
}

func (a *api) byID(w http.ResponseWriter, r *http.Request, op uint8) {
	cid := r.PathValue("cid")
	if cid == "" || len(cid) > protocol.MaxCommandIDBytes {
		fail(w, http.StatusNotFound, CodeNotFound, "no such command")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.o.Timeout)
	defer cancel()
	rep, err := a.l.Query(ctx, wire.Query{Op: op, CID: cid})
	if err != nil {
		unavailable(w, err)
		return
	}
	switch {
	case rep.Code == "" && len(rep.Commands) == 1:
		writeJSON(w, http.StatusOK, toJSON(&rep.Commands[0]))
	case rep.Code == wire.CodeNotFound:
		fail(w, http.StatusNotFound, CodeNotFound, "no such command")
	case rep.Code == wire.CodeNotCancellable && len(rep.Commands) == 1:
		fail(w, http.StatusConflict, CodeNotCancellable, "the command is "+rep.Commands[0].State.String()+"; only a queued command can be cancelled")
	default:
		oddReply(w, rep)
	}
}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	device := r.PathValue("id")
	if envelope.CheckID(device) != nil || len(device) > wire.MaxNameLen {
		fail(w, http.StatusBadRequest, CodeInvalidDevice, "device id must be 1 to 255 bytes")
		return
	}
	q := wire.Query{Op: wire.QueryList, Device: device}
	if s := r.URL.Query().Get("state"); s != "" {
		st, ok := wire.ParseCommandState(s)
		if !ok {
			fail(w, http.StatusBadRequest, CodeInvalidState, "state must be one of queued, sent, acknowledged, failed, expired, cancelled")
			return
		}
		q.State = st
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.o.Timeout)
	defer cancel()
	rep, err := a.l.Query(ctx, q)
	if err != nil {
		unavailable(w, err)
		return
	}
	if rep.Code != "" {
		// A home answers a list with its commands, never a code.
		oddReply(w, rep)
		return
	}
	out := struct {
		Commands []CommandJSON `json:"commands"`
	}{Commands: make([]CommandJSON, 0, len(rep.Commands))}
	for i := range rep.Commands {
		out.Commands = append(out.Commands, toJSON(&rep.Commands[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func unavailable(w http.ResponseWriter, err error) {
	w.Header().Set("Retry-After", "1")
	fail(w, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
}

// ErrorBody is the body of every API error.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ingest", scope="`+Scope+`"`)
	}
	writeJSON(w, status, ErrorBody{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
