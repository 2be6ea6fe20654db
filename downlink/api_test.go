package downlink_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestAPIBadInput: every bad request is answered with its status and
// stable code, and none leaves a command behind.
func TestAPIBadInput(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, true)
	app := appToken(t, "commands")
	deviceTok := func() string {
		s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "dev-1"}).SignedString(testSecret)
		return s
	}()
	wrongKey := func() string {
		s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "app", "scope": "commands"}).SignedString([]byte("another-secret-of-at-least-32-bytes!!"))
		return s
	}()
	post := "POST"
	dev := fe.base() + "/v1/devices/dev-1/commands"
	bigPayload := `{"name":"n","payload":"` + strings.Repeat("x", protocol.MaxCommandPayloadBytes) + `"}`
	for _, tc := range []struct {
		name, method, url, token, body string
		status                         int
		code                           string
	}{
		{"no token", post, dev, "", `{"name":"n"}`, 401, downlink.CodeUnauthorized},
		{"wrong token", post, dev, wrongKey, `{"name":"n"}`, 401, downlink.CodeUnauthorized},
		{"garbage token", post, dev, "not.a.jwt", `{"name":"n"}`, 401, downlink.CodeUnauthorized},
		{"device token as app token", post, dev, deviceTok, `{"name":"n"}`, 403, downlink.CodeForbidden},
		{"token of another scope", post, dev, appToken(t, "feed"), `{"name":"n"}`, 403, downlink.CodeForbidden},
		{"device token on get", "GET", fe.base() + "/v1/commands/cabc", deviceTok, "", 403, downlink.CodeForbidden},
		{"device id too long", post, fe.base() + "/v1/devices/" + strings.Repeat("d", 300) + "/commands", app, `{"name":"n"}`, 400, downlink.CodeInvalidDevice},
		{"bad JSON", post, dev, app, `{"name":`, 400, downlink.CodeInvalidJSON},
		{"not an object", post, dev, app, `["n"]`, 400, downlink.CodeInvalidJSON},
		{"unknown member", post, dev, app, `{"name":"n","colour":1}`, 400, downlink.CodeInvalidJSON},
		{"member of another case", post, dev, app, `{"NAME":"n"}`, 400, downlink.CodeInvalidJSON},
		{"two objects", post, dev, app, `{"name":"n"}{"name":"m"}`, 400, downlink.CodeInvalidJSON},
		{"name of the wrong type", post, dev, app, `{"name":5}`, 400, downlink.CodeInvalidJSON},
		{"no name", post, dev, app, `{"payload":{}}`, 400, downlink.CodeInvalidCommand},
		{"name too long", post, dev, app, `{"name":"` + strings.Repeat("n", 129) + `"}`, 400, downlink.CodeInvalidCommand},
		{"oversize payload", post, dev, app, bigPayload, 413, downlink.CodeTooLarge},
		{"payload nested too deep for the device's frame", post, dev, app, `{"name":"n","payload":` + strings.Repeat("[", protocol.MaxCommandPayloadDepth+1) + strings.Repeat("]", protocol.MaxCommandPayloadDepth+1) + `}`, 400, downlink.CodeInvalidCommand},
		{"payload not UTF-8", post, dev, app, "{\"name\":\"n\",\"payload\":{\"s\":\"a\xffb\"}}", 400, downlink.CodeInvalidCommand},
		{"negative ttl", post, dev, app, `{"name":"n","ttl_ms":-5}`, 400, downlink.CodeInvalidTTL},
		{"zero ttl", post, dev, app, `{"name":"n","ttl_ms":0}`, 400, downlink.CodeInvalidTTL},
		{"ttl past the bound", post, dev, app, `{"name":"n","ttl_ms":999999999999}`, 400, downlink.CodeInvalidTTL},
		{"fractional ttl", post, dev, app, `{"name":"n","ttl_ms":1.5}`, 400, downlink.CodeInvalidJSON},
		{"ttl as a string", post, dev, app, `{"name":"n","ttl_ms":"30s"}`, 400, downlink.CodeInvalidJSON},
		{"unknown state filter", "GET", dev + "?state=lost", app, "", 400, downlink.CodeInvalidState},
		{"unknown command", "GET", fe.base() + "/v1/commands/cnothere", app, "", 404, downlink.CodeNotFound},
		{"cancel unknown command", "DELETE", fe.base() + "/v1/commands/cnothere", app, "", 404, downlink.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e downlink.ErrorBody
			var body any
			if tc.body != "" {
				body = tc.body
			}
			if st := call(t, tc.method, tc.url, tc.token, body, &e); st != tc.status || e.Code != tc.code || e.Message == "" {
				t.Fatalf("HTTP %d %+v, want %d %s", st, e, tc.status, tc.code)
			}
		})
	}
	// Nothing was created for the device.
	var list struct{ Commands []downlink.CommandJSON }
	if st := call(t, "GET", dev, app, nil, &list); st != http.StatusOK || len(list.Commands) != 0 {
		t.Fatalf("after bad input: HTTP %d %+v", st, list)
	}
	// And a good request with the same token goes through; a scope given
	// as an array works too.
	var c downlink.CommandJSON
	if st := call(t, post, dev, appToken(t, []string{"feed", "commands"}), `{"name":"n","payload":{"x":1},"ttl_ms":60000}`, &c); st != http.StatusAccepted || c.State != "queued" || string(c.Payload) != `{"x":1}` {
		t.Fatalf("good request: HTTP %d %+v", st, c)
	}
}

func FuzzDecodeSubmit(f *testing.F) {
	for _, s := range []string{`{"name":"n","payload":{"a":[1]},"ttl_ms":5,"idempotency_key":"k"}`, `{"name":"n","payload":null}`, `{}`, `[]`, `{"Name":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req downlink.SubmitRequest
		if err := downlink.DecodeSubmit(b, &req); err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		var std map[string]any
		if err := json.Unmarshal(b, &std); err != nil {
			t.Fatalf("accepted %q: %v", b, err)
		}
		for k := range std {
			switch k {
			case "name", "payload", "ttl_ms", "idempotency_key":
			default:
				t.Fatalf("accepted member %q", k)
			}
		}
		if req.Payload != nil && !json.Valid(req.Payload) {
			t.Fatalf("payload %q is not JSON", req.Payload)
		}
	})
}

// TestAPIFull: a submit the device's home has no room to keep is answered
// 503 full, and the home goes on: what it keeps can still be read.
func TestAPIFull(t *testing.T) {
	h := commandtest.Start(t, command.Options{ID: "home-1"}, wal.Options{MaxBytes: 256 << 10, SegmentBytes: 32 << 10})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, true)
	app := appToken(t, "commands")
	body := `{"name":"n","payload":"` + strings.Repeat("x", 4<<10) + `"}`
	for i := 0; ; i++ {
		var e downlink.ErrorBody
		st := call(t, "POST", fe.base()+"/v1/devices/dev-1/commands", app, body, &e)
		if st == http.StatusServiceUnavailable {
			if e.Code != downlink.CodeFull || i == 0 || i > 4 {
				t.Fatalf("submit %d: HTTP %d %+v", i, st, e)
			}
			break
		}
		if st != http.StatusAccepted {
			t.Fatalf("submit %d: HTTP %d %+v", i, st, e)
		}
	}
	var list struct{ Commands []downlink.CommandJSON }
	if st := call(t, "GET", fe.base()+"/v1/devices/dev-1/commands", app, nil, &list); st != http.StatusOK || len(list.Commands) == 0 {
		t.Fatalf("list after full: HTTP %d, %d commands", st, len(list.Commands))
	}
}

// TestAPIStalledBody: a submit whose body stops coming is answered within
// the API's bound (the wait for a home's answer, 5 s by default), not held
// with its goroutine and connection for as long as the client keeps the
// connection open, past the frontend's shutdown.
func TestAPIStalledBody(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	start := time.Now()
	head := "POST /v1/devices/dev-1/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
	resp, body, err := testkit.StalledBody(t, fe.addr, head, 12*time.Second)
	if err != nil {
		t.Fatalf("no answer %v after the body stalled: %v", time.Since(start).Round(time.Millisecond), err)
	}
	var e downlink.ErrorBody
	if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != http.StatusBadRequest || e.Code != downlink.CodeInvalidJSON {
		t.Fatalf("stalled body: HTTP %d %+v %v", resp.StatusCode, e, err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("stalled body answered after %v", d)
	}
}

// TestAPICrossSiteRefused: without auth (a loopback listener, make run),
// a command submitted by a browser on behalf of a page of another origin
// is refused, and no command is made: the page is not a local process, and
// a form or a fetch in no-cors mode posts a body the API took as JSON
// whatever its Content-Type. A request of no browser (curl, the Go client,
// no Origin) and the browser's own same-origin request are served as
// before. It used to queue the page's command for the device.
func TestAPICrossSiteRefused(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, false)
	dev := fe.base() + "/v1/devices/dev-x/commands"
	for _, hdr := range []map[string]string{
		{"Origin": "https://evil.example", "Content-Type": "text/plain"},
		{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
		{"Origin": "null", "Content-Type": "text/plain"},
	} {
		req, err := http.NewRequest("POST", dev, strings.NewReader(`{"name":"from-a-page"}`))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("cross-site submit %v: HTTP %d, want 403", hdr, resp.StatusCode)
		}
	}
	var list struct{ Commands []downlink.CommandJSON }
	if st := call(t, "GET", dev, "", nil, &list); st != http.StatusOK || len(list.Commands) != 0 {
		t.Fatalf("after the cross-site submits: HTTP %d, commands %+v, want none", st, list.Commands)
	}
	// Same origin (a page the frontend served), and no browser at all.
	req, _ := http.NewRequest("POST", dev, strings.NewReader(`{"name":"same-origin"}`))
	req.Header.Set("Origin", fe.base())
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("same-origin submit: HTTP %d, want 202", resp.StatusCode)
	}
	submit(t, fe, "dev-x", "no-browser", nil)
}

// TestAPIStalledBodyRefused: a request whose body stops coming is answered
// within the API's bound (5 s by default) on every path, not only once a
// submit reads its body: a request refused before (no token, a device id
// too long) or on a route that takes no body is answered too, not held,
// with its goroutine and connection, while net/http reads what is left of
// the body before it writes the answer.
func TestAPIStalledBodyRefused(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	fe := startFrontend(t, "fe-1", []string{h.Addr}, true)
	app := appToken(t, "commands")
	for _, tc := range []struct {
		name, method, path, token string
	}{
		{"no token", "POST", "/v1/devices/dev-1/commands", ""},
		{"device id too long", "POST", "/v1/devices/" + strings.Repeat("d", 300) + "/commands", app},
		{"cancel with a body", "DELETE", "/v1/commands/cabc", app},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.method + " " + tc.path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
			if tc.token != "" {
				req += "Authorization: Bearer " + tc.token + "\r\n"
			}
			start := time.Now()
			resp, _, err := testkit.StalledBody(t, fe.addr, req, 12*time.Second)
			if err != nil {
				t.Fatalf("no answer %v after the body stalled: %v", time.Since(start).Round(time.Millisecond), err)
			}
			if resp.StatusCode < 400 {
				t.Fatalf("stalled body: HTTP %d", resp.StatusCode)
			}
			if d := time.Since(start); d > 8*time.Second {
				t.Fatalf("stalled body answered after %v", d)
			}
		})
	}
}

// TestAPIOddHomeReplies: a home's Reply that breaks what the API relies on
// (success or not_cancellable without the command, a code the API does not
// know) is answered 503 unavailable with Retry-After, as a home that does
// not answer is. Before, the first two panicked in the handler (the
// connection dropped, a stack logged) and the third was a 502. The home is
// a bare ROUTER that answers every query with the next of these.
func TestAPIOddHomeReplies(t *testing.T) {
	replies := make(chan wire.Reply, 3)
	var home atomic.Pointer[testkit.Router]
	r := testkit.StartRouter(t, func(id []byte, m wire.Message) {
		if q, ok := m.(*wire.Query); ok {
			rep := <-replies
			rep.Req = q.Req
			home.Load().Send(id, wire.Append(nil, &rep))
		}
	})
	home.Store(r)
	fe := startFrontend(t, "fe-1", []string{r.Addr()}, false)
	for _, c := range []struct {
		method string
		rep    wire.Reply
	}{
		{"GET", wire.Reply{}},
		{"DELETE", wire.Reply{Code: wire.CodeNotCancellable}},
		{"GET", wire.Reply{Code: "odd"}},
	} {
		replies <- c.rep
		req, _ := http.NewRequest(c.method, fe.base()+"/v1/commands/c1", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s after a reply %+v: %v", c.method, c.rep, err)
		}
		var body downlink.ErrorBody
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || body.Code != downlink.CodeUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s after a reply %+v: %d %+v, want 503 %s with Retry-After", c.method, c.rep, resp.StatusCode, body, downlink.CodeUnavailable)
		}
	}
}

// TestAPIListOddHomeReply: a home's Reply to a list that carries a code (a
// list has none: it is an error the API does not know) is answered 503
// unavailable with Retry-After, as the other routes answer one; before, it
// was a 200 with the reply's commands, none: the device seemed to have no
// commands.
func TestAPIListOddHomeReply(t *testing.T) {
	var home atomic.Pointer[testkit.Router]
	r := testkit.StartRouter(t, func(id []byte, m wire.Message) {
		if q, ok := m.(*wire.Query); ok {
			home.Load().Send(id, wire.Append(nil, &wire.Reply{Req: q.Req, Code: "odd"}))
		}
	})
	home.Store(r)
	fe := startFrontend(t, "fe-1", []string{r.Addr()}, false)
	resp, err := http.Get(fe.base() + "/v1/devices/dev-1/commands")
	if err != nil {
		t.Fatal(err)
	}
	var body downlink.ErrorBody
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || body.Code != downlink.CodeUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("list after a reply with code \"odd\": %d %+v, want 503 %s with Retry-After", resp.StatusCode, body, downlink.CodeUnavailable)
	}
}
