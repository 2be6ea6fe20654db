package downlink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// startHome runs a real home (commandtest.Home) with id id.
func startHome(t *testing.T, id string, o command.Options) *commandtest.Home {
	t.Helper()
	o.ID = id
	return commandtest.Start(t, o, wal.Options{})
}

// testFrontend is a real frontend with a Link to the homes.
type testFrontend struct {
	addr   string
	mqtt   string // its MQTT listener's address
	reg    *prometheus.Registry
	srv    *frontend.Server
	link   *downlink.Link
	log    *wal.Log
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startFrontend(t *testing.T, id string, homes []string, withAuth bool) *testFrontend {
	t.Helper()
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	link, err := downlink.New(downlink.Options{Frontend: id, Homes: homes, RequestTimeout: 200 * time.Millisecond, PresenceInterval: 200 * time.Millisecond}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln := testkit.Listen(t)
	mln := testkit.Listen(t)
	o := frontend.Options{ID: id, Listener: ln, MQTTListener: mln, Downlink: link, DrainWindow: 100 * time.Millisecond}
	if withAuth {
		o.Auth = auth.Options{HS256Secrets: [][]byte{testSecret}}
	} else {
		o.InsecureNoAuth = true
	}
	srv, err := frontend.New(o, l, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tf := &testFrontend{addr: ln.Addr().String(), mqtt: mln.Addr().String(), reg: reg, srv: srv, link: link, log: l}
	ctx, cancel := context.WithCancel(context.Background())
	tf.cancel = cancel
	tf.wg.Go(func() { link.Run(ctx) })
	tf.wg.Go(func() {
		if err := srv.Run(ctx); err != nil {
			t.Errorf("frontend: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		tf.wg.Wait()
		srv.Close()
		link.Close()
		l.Close()
	})
	return tf
}

func (tf *testFrontend) base() string { return "http://" + tf.addr }

// waitPlaced waits until the homes together have want devices placed at a
// frontend (ingest_command_devices_placed): a frontend's word that a
// device connected or left has reached its home.
func waitPlaced(t *testing.T, want float64, homes ...*commandtest.Home) {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%v devices placed", want), 10*time.Second, func() bool {
		var n float64
		for _, h := range homes {
			n += testkit.Metric(t, h.Reg, "ingest_command_devices_placed")
		}
		return n == want
	})
}

// device is a client that answers every command and records what it saw.
type device struct {
	id string
	c  *client.Client

	mu   sync.Mutex
	seen []string // command ids, each time one arrived
}

func (d *device) ids() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.seen...)
}

// connect dials tf as device id, which answers every command ok with
// {"n": how many it has seen}.
func connect(t *testing.T, tf *testFrontend, d *device) {
	t.Helper()
	d.c = dialDevice(t, tf, d.id, func(_ context.Context, cmd client.Command) client.Answer {
		d.mu.Lock()
		d.seen = append(d.seen, cmd.ID)
		n := len(d.seen)
		d.mu.Unlock()
		return client.Answer{Status: "ok", Payload: fmt.Appendf(nil, `{"n":%d}`, n)}
	})
}

// dialDevice dials tf as device id within 5 s, with on answering its
// commands; the client is closed at the test's end.
func dialDevice(t *testing.T, tf *testFrontend, id string, on func(context.Context, client.Command) client.Answer) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{URL: "ws://" + tf.addr + "/v1/ingest?device=" + id, OnCommand: on,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("dial %s: %v", id, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (d *device) disconnect() {
	if d.c != nil {
		d.c.Close()
		d.c = nil
	}
}

// call makes one API request and decodes the JSON answer into out.
func call(t *testing.T, method, url, token string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: HTTP %d, body %q: %v", method, url, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

func submit(t *testing.T, tf *testFrontend, device, name string, extra map[string]any) downlink.CommandJSON {
	t.Helper()
	body := map[string]any{"name": name, "payload": map[string]any{"v": name}}
	for k, v := range extra {
		body[k] = v
	}
	var c downlink.CommandJSON
	if st := call(t, "POST", tf.base()+"/v1/devices/"+device+"/commands", "", body, &c); st != http.StatusAccepted {
		t.Fatalf("submit %s for %s: HTTP %d", name, device, st)
	}
	if c.ID == "" || c.State != "queued" && c.State != "sent" && c.State != "acknowledged" {
		t.Fatalf("submit %s: answered %+v", name, c)
	}
	return c
}

func get(t *testing.T, tf *testFrontend, cid string) downlink.CommandJSON {
	t.Helper()
	var c downlink.CommandJSON
	if st := call(t, "GET", tf.base()+"/v1/commands/"+cid, "", nil, &c); st != http.StatusOK {
		t.Fatalf("get %s: HTTP %d", cid, st)
	}
	return c
}

func waitState(t *testing.T, tf *testFrontend, cid, state string) downlink.CommandJSON {
	t.Helper()
	var c downlink.CommandJSON
	testkit.WaitFor(t, "command "+cid+" "+state, 20*time.Second, func() bool {
		c = get(t, tf, cid)
		return c.State == state
	})
	return c
}

func appToken(t *testing.T, scope any) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": "app-1", "exp": time.Now().Add(time.Hour).Unix()}
	if scope != nil {
		claims["scope"] = scope
	}
	return testkit.SignHS256(t, testSecret, claims)
}
