package frontend

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// mqttServer is a real frontend with an MQTT listener on 127.0.0.1:0 as well.
type mqttTestServer struct {
	*testServer
	mqttAddr string
}

func (ts *mqttTestServer) wsURL() string { return "ws://" + ts.addr + MQTTPath }

func startMQTTServer(t testing.TB, opts Options, wopts wal.Options) *mqttTestServer {
	t.Helper()
	ln := testkit.Listen(t)
	opts.MQTTListener = ln
	ts := startServer(t, opts, wopts)
	return &mqttTestServer{testServer: ts, mqttAddr: ln.Addr().String()}
}

// v5 connects a paho.golang (MQTT 5) client over TCP or, with ws, over
// WebSocket at /mqtt.
func v5(t testing.TB, ts *mqttTestServer, ws bool, clientID, token string, mod func(*paho.Connect)) (*paho.Client, *paho.Connack, <-chan *paho.Disconnect, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var nc net.Conn
	if ws {
		c, _, err := websocket.Dial(ctx, ts.wsURL(), &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Fatalf("dial websocket: %v", err)
		}
		// paho.golang writes one packet in several writes, from several
		// goroutines: each write is a WebSocket message of its own.
		nc = packets.NewThreadSafeConn(websocket.NetConn(context.Background(), c, websocket.MessageBinary))
	} else {
		var err error
		if nc, err = net.Dial("tcp", ts.mqttAddr); err != nil {
			t.Fatal(err)
		}
	}
	disc := make(chan *paho.Disconnect, 1)
	c := paho.NewClient(paho.ClientConfig{
		Conn:               nc,
		ClientID:           clientID,
		OnServerDisconnect: func(d *paho.Disconnect) { disc <- d },
	})
	cp := &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30}
	if token != "" {
		cp.PasswordFlag, cp.Password = true, []byte(token)
	}
	if mod != nil {
		mod(cp)
	}
	ca, err := c.Connect(ctx, cp)
	t.Cleanup(func() {
		c.Disconnect(&paho.Disconnect{})
		nc.Close()
		<-c.Done()
	})
	return c, ca, disc, err
}

// v311 connects a paho.mqtt.golang (MQTT 3.1.1) client.
func v311(t testing.TB, broker, clientID, token string) (pahov3.Client, error) {
	t.Helper()
	o := pahov3.NewClientOptions().AddBroker(broker).SetClientID(clientID).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(5 * time.Second).SetWriteTimeout(5 * time.Second).
		SetMaxResumePubInFlight(64)
	if token != "" {
		o.SetUsername(clientID).SetPassword(token)
	}
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func TestMQTTPublishGoClients(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	const n = 200
	for _, ws := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "websocket"}[ws]
		t.Run("v5/"+name, func(t *testing.T) {
			dev := "v5-" + name
			c, ca, _, err := v5(t, ts, ws, dev, hsToken(t, dev, nil), nil)
			if err != nil || ca.ReasonCode != 0 {
				t.Fatalf("connect: %v %+v", err, ca)
			}
			if ca.Properties.ReceiveMaximum == nil || int(*ca.Properties.ReceiveMaximum) != defaultReceiveMaximum ||
				ca.Properties.RetainAvailable || ca.Properties.MaximumPacketSize == nil {
				t.Fatalf("CONNACK properties %+v", ca.Properties)
			}
			// Pipelined: many publishes in flight share group commits.
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					qos := byte(1 + i%2)
					r, err := c.Publish(ctx, &paho.Publish{QoS: qos, Topic: "devices/" + dev + "/telemetry", Payload: []byte(fmt.Sprintf(`{"v":%d}`, i))})
					if err == nil && r.ReasonCode != 0 {
						err = fmt.Errorf("reason %#x", r.ReasonCode)
					}
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			t.Logf("closes: %v", gatherCloses(t, ts.testServer))
			for err := range errs {
				if err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
		})
		t.Run("v3.1.1/"+name, func(t *testing.T) {
			dev := "v311-" + name
			broker := "tcp://" + ts.mqttAddr
			if ws {
				broker = ts.wsURL()
			}
			c, err := v311(t, broker, dev, hsToken(t, dev, nil))
			if err != nil {
				t.Fatal(err)
			}
			toks := make([]pahov3.Token, n)
			for i := range n {
				toks[i] = c.Publish("devices/"+dev, byte(1+i%2), false, fmt.Sprintf(`{"v":%d}`, i))
			}
			for _, tok := range toks {
				if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Fatalf("publish: %v", tok.Error())
				}
			}
		})
	}
	acked := testutil.ToFloat64(ts.srv.m.mqtt.acked)
	if acked != 4*n {
		t.Fatalf("acked %v messages, want %d", acked, 4*n)
	}
	ts.stop(t)
	// Every message is in the WAL once, each device's in the order sent
	// (a QoS 1 and a QoS 2 publish may pass each other in the client).
	got := map[string]int{}
	for _, e := range testkit.WALEnvelopes(t, ts.dir) {
		got[e.Device]++
		want := ""
		if strings.HasPrefix(e.Device, "v5-") {
			want = "telemetry"
		}
		if e.Topic != want || e.Frontend != "fe-test" {
			t.Fatalf("envelope %+v: topic %q, want %q", e, e.Topic, want)
		}
	}
	for _, d := range []string{"v5-tcp", "v5-websocket", "v311-tcp", "v311-websocket"} {
		if got[d] != n {
			t.Fatalf("device %s: %d messages in the WAL, want %d (all: %v)", d, got[d], n, got)
		}
	}
}

func TestMQTTRefusals(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	for _, ws := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "websocket"}[ws]
		t.Run("v5/"+name, func(t *testing.T) {
			dev := "dev-" + name
			for _, tc := range []struct {
				name     string
				clientID string
				token    string
				want     byte
			}{
				{"no password", dev, "", connackBadAuth},
				{"bad token", dev, "not-a-token", connackBadAuth},
				{"expired token", dev, hsToken(t, dev, func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour)) }), connackBadAuth},
				{"client id of another device", "other", hsToken(t, dev, nil), connackBadClientID},
			} {
				_, ca, _, err := v5(t, ts, ws, tc.clientID, tc.token, nil)
				if err == nil || ca == nil || ca.ReasonCode != tc.want {
					t.Fatalf("%s: connect gave %v, %+v; want reason %#x", tc.name, err, ca, tc.want)
				}
			}
			// An empty client id is given the device id.
			c, ca, _, err := v5(t, ts, ws, "", hsToken(t, dev, nil), nil)
			if err != nil || ca.Properties.AssignedClientID != dev {
				t.Fatalf("connect without client id: %v %+v", err, ca)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, tc := range []struct {
				name    string
				topic   string
				payload string
				want    byte
			}{
				{"another device's topic", "devices/other/x", `{"v":1}`, rcNotAuthorized},
				{"topic outside devices/", "sensors/" + dev, `{"v":1}`, rcTopicNameInvalid},
				{"prefix of the device id", "devices/" + dev + "x", `{"v":1}`, rcNotAuthorized},
				{"empty level", "devices/" + dev + "/", `{"v":1}`, rcTopicNameInvalid},
				{"not JSON", "devices/" + dev, `{"v":`, rcPayloadInvalid},
				{"not an object", "devices/" + dev, `42`, rcPayloadInvalid},
				{"device mismatch", "devices/" + dev, `{"device":"other","v":1}`, rcPayloadInvalid},
				{"bad ts in a batch", "devices/" + dev, `[{"v":1},{"ts":5,"v":2}]`, rcPayloadInvalid},
				{"reserved field name", "devices/" + dev, `{"__name__":1}`, rcPayloadInvalid},
				{"NUL in a string in a batch", "devices/" + dev, `[{"v":1},{"s":"a\u0000"}]`, rcPayloadInvalid},
				{"good", "devices/" + dev + "/a/b", `[{"v":1},{"v":2}]`, 0},
			} {
				for _, qos := range []byte{1, 2} {
					r, err := c.Publish(ctx, &paho.Publish{QoS: qos, Topic: tc.topic, Payload: []byte(tc.payload)})
					// paho.golang reports a refused QoS 1 publish as an
					// error too, a refused QoS 2 one (PUBREC) only in r.
					if r == nil || r.ReasonCode != tc.want || qos == 1 && (tc.want == 0) != (err == nil) || qos == 2 && err != nil {
						t.Fatalf("%s (QoS %d): %+v, %v; want reason %#x", tc.name, qos, r, err, tc.want)
					}
					if tc.want != 0 && (r.Properties == nil || r.Properties.ReasonString == "") {
						t.Fatalf("%s: no reason string", tc.name)
					}
				}
			}
		})
	}
	// The field rules are the WebSocket's, and counted the same way.
	for _, rule := range []string{protocol.RuleNameReserved, protocol.RuleStringInvalid} {
		if testutil.ToFloat64(ts.srv.m.fieldRules.WithLabelValues(rule)) == 0 {
			t.Errorf("field_rejections{rule=%q} not counted for MQTT publishes", rule)
		}
	}
	// MQTT 3.1.1: refused CONNECTs get the 3.1.1 return codes.
	for _, tc := range []struct {
		name, clientID, token string
		want                  string
	}{
		{"bad token", "d", "junk", "not Authorized"},
		{"client id of another device", "other", hsToken(t, "d", nil), "identifier rejected"},
	} {
		_, err := v311(t, "tcp://"+ts.mqttAddr, tc.clientID, tc.token)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("3.1.1 %s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// 3.1.1 has no negative acknowledgement: a refused publish is
	// acknowledged and dropped, and counted.
	c, err := v311(t, "tcp://"+ts.mqttAddr, "d311", hsToken(t, "d311", nil))
	if err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(ts.srv.m.mqtt.refusedPublishes.WithLabelValues("payload_invalid"))
	tok := c.Publish("devices/d311", 1, false, `{"v":`)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	if d := testutil.ToFloat64(ts.srv.m.mqtt.refusedPublishes.WithLabelValues("payload_invalid")) - before; d != 1 {
		t.Fatalf("payload_invalid refusals rose by %v, want 1", d)
	}
	// Every message received is acknowledged or rejected: the good
	// messages of a refused batch too.
	received := testkit.Metric(t, ts.reg, "ingest_frontend_messages_received_total")
	acked := testkit.Metric(t, ts.reg, "ingest_frontend_messages_acked_total")
	rejected := testkit.Metric(t, ts.reg, "ingest_frontend_messages_rejected_total")
	if received != acked+rejected {
		t.Fatalf("%v messages received, %v acknowledged and %v rejected", received, acked, rejected)
	}
	ts.stop(t)
	n := 0
	for _, e := range testkit.WALEnvelopes(t, ts.dir) {
		if e.Device == "d311" {
			t.Fatalf("a refused 3.1.1 publish was stored: %+v", e)
		}
		if e.Topic != "a/b" {
			t.Fatalf("envelope %+v: topic %q, want a/b", e, e.Topic)
		}
		n++
	}
	if n != 2*2*2 { // two transports × two QoS × a batch of two
		t.Fatalf("%d envelopes stored, want 8", n)
	}
}

func gatherCloses(t testing.TB, ts *testServer) map[string]float64 {
	out := map[string]float64{}
	mfs, _ := ts.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "ingest_frontend_closes_total" {
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// A CONNECT header that announces a large packet holds no memory for the
// bytes not sent: a packet is read into a buffer that grows as its bytes
// arrive. Before, each such connection, unauthenticated and not yet
// counted against MaxConnections, made the server allocate the whole
// packet (256 KiB) for ConnectTimeout: 400 of them held 101 MiB.
func TestAnnouncedPacketHoldsNoMemory(t *testing.T) {
	ts := startMQTTServer(t, Options{MaxConnections: 10}, wal.Options{})
	const n = 400
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		nc, err := net.Dial("tcp", ts.mqttAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		// CONNECT, remaining length 262,143 (0xFF 0xFF 0x0F), then 10 bytes.
		if _, err := nc.Write([]byte{0x10, 0xFF, 0xFF, 0x0F, 0, 4, 'M', 'Q', 'T', 'T', 5, 0, 0, 60}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second) // the server reads the headers
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d connections that announced 256 KiB and sent 10 bytes: the heap in use grew by %.1f MiB (%.1f KiB each)", n, float64(grew)/(1<<20), float64(grew)/1024/n)
	if grew > 32<<20 {
		t.Fatalf("the heap in use grew by %d MiB for %d connections that sent 14 bytes each", grew>>20, n)
	}
}
