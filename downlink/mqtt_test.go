package downlink_test

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/internal/testkit"
)

// mqttDevice is an MQTT client of a real library, as firmware would use.
type mqttDevice interface {
	// subscribe subscribes to topic at QoS 1 and returns the SUBACK's code.
	subscribe(t *testing.T, topic string) byte
	// publish publishes at QoS 1 and returns the PUBACK's reason code
	// (MQTT 3.1.1: 0).
	publish(t *testing.T, topic, payload string) byte
	// received is where the publishes from the server arrive.
	received() <-chan mqttMsg
	close()
}

type mqttMsg struct {
	topic   string
	qos     byte
	payload []byte
}

// pahoV5 is an MQTT 5 device (paho.golang).
type pahoV5 struct {
	c    *paho.Client
	nc   net.Conn
	msgs chan mqttMsg
}

func dialV5(t *testing.T, addr, id string) mqttDevice {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d := &pahoV5{nc: nc, msgs: make(chan mqttMsg, 64)}
	d.c = paho.NewClient(paho.ClientConfig{Conn: nc, ClientID: id,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.msgs <- mqttMsg{pr.Packet.Topic, pr.Packet.QoS, pr.Packet.Payload}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(d.close)
	return d
}

func (d *pahoV5) subscribe(t *testing.T, topic string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := d.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %+v, %v", topic, sa, err)
	}
	return sa.Reasons[0]
}

func (d *pahoV5) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := d.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if r == nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return r.ReasonCode
}

func (d *pahoV5) received() <-chan mqttMsg { return d.msgs }

func (d *pahoV5) close() {
	d.c.Disconnect(&paho.Disconnect{})
	d.nc.Close()
	<-d.c.Done()
}

// pahoV311 is an MQTT 3.1.1 device (paho.mqtt.golang).
type pahoV311 struct {
	c    pahov3.Client
	msgs chan mqttMsg
}

func dialV311(t *testing.T, addr, id string) mqttDevice {
	t.Helper()
	o := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(5 * time.Second).SetWriteTimeout(5 * time.Second)
	d := &pahoV311{msgs: make(chan mqttMsg, 64)}
	d.c = pahov3.NewClient(o)
	if tok := d.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(d.close)
	return d
}

func (d *pahoV311) subscribe(t *testing.T, topic string) byte {
	t.Helper()
	tok := d.c.Subscribe(topic, 1, func(_ pahov3.Client, m pahov3.Message) {
		d.msgs <- mqttMsg{m.Topic(), m.Qos(), m.Payload()}
	})
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("subscribe %s: no SUBACK", topic)
	}
	code, ok := tok.(*pahov3.SubscribeToken).Result()[topic]
	if !ok {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return code
}

func (d *pahoV311) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	if tok := d.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
	return 0
}

func (d *pahoV311) received() <-chan mqttMsg { return d.msgs }
func (d *pahoV311) close()                   { d.c.Disconnect(100) }

// nextCommand waits for the next publish on the device's commands topic and
// decodes its payload, the WebSocket command frame.
func nextCommand(t *testing.T, d mqttDevice, id string) (cid, name string, payload json.RawMessage) {
	t.Helper()
	select {
	case m := <-d.received():
		var f struct {
			Type, ID, Name string
			Payload        json.RawMessage
		}
		if m.topic != "devices/"+id+"/commands" || m.qos != 1 || json.Unmarshal(m.payload, &f) != nil || f.Type != "command" || f.ID == "" {
			t.Fatalf("%s received %q on %s at QoS %d", id, m.payload, m.topic, m.qos)
		}
		return f.ID, f.Name, f.Payload
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no command came", id)
	}
	return
}

// TestMQTTCommands: an MQTT device, 3.1.1 or 5, subscribed to its commands
// topic gets the commands submitted through the API as QoS 1 publishes, one
// unanswered at a time (the home's max in flight), PUBACKs them, and its
// answers on the result topic end them acknowledged or failed as a
// WebSocket command_result does. Another device's commands and other
// topics cannot be subscribed to; a malformed answer is refused (MQTT 5:
// PUBACK 0x99, 0x90 for a topic that names no command) and changes
// nothing; commands submitted while the device is away or not subscribed
// come once it subscribes again.
func TestMQTTCommands(t *testing.T) {
	for _, v := range []struct {
		name string
		dial func(*testing.T, string, string) mqttDevice
	}{{"5", dialV5}, {"3.1.1", dialV311}} {
		t.Run(v.name, func(t *testing.T) {
			h := startHome(t, "home-1", command.Options{})
			tf := startFrontend(t, "fe-1", []string{h.Addr}, false)
			id := "mqtt-" + strings.ReplaceAll(v.name, ".", "")
			mine := "devices/" + id + "/commands"
			v5 := v.name == "5"
			refused := func(v5code byte) byte {
				if v5 {
					return v5code
				}
				return 0x80
			}

			// Queued before the device subscribes: delivered on subscribe.
			early := submit(t, tf, id, "early", nil)
			d := v.dial(t, tf.mqtt, id)
			for topic, want := range map[string]byte{
				"devices/other/commands": refused(0x87),
				"devices/" + id + "/x":   refused(0x8F),
			} {
				if got := d.subscribe(t, topic); got != want {
					t.Fatalf("subscribe %s: code %#x, want %#x", topic, got, want)
				}
			}
			if got := d.subscribe(t, mine); got != 1 {
				t.Fatalf("subscribe %s: granted %#x, want QoS 1", mine, got)
			}
			cid, name, payload := nextCommand(t, d, id)
			if cid != early.ID || name != "early" || string(payload) != `{"v":"early"}` {
				t.Fatalf("got %s %s %s, want %s early", cid, name, payload, early.ID)
			}
			// One unanswered at a time: the next waits in the home.
			next := submit(t, tf, id, "next", nil)
			if c := get(t, tf, next.ID); c.State != "queued" {
				t.Fatalf("second command while the first is unanswered: %+v", c)
			}
			// Answers that name no command, or do not decode, change nothing.
			for _, a := range []struct {
				topic, payload string
				code           byte // MQTT 5's PUBACK
			}{
				{mine, `{"status":"ok"}`, 0x90},
				{mine + "/" + cid, `{"status":"ok"}`, 0x90},
				{mine + "/" + cid + "/result ", `{"status":"ok"}`, 0x90},
				{mine + "/" + cid + "/x/result", `{"status":"ok"}`, 0x90},
				{mine + "/" + cid + "/result/x", `{"status":"ok"}`, 0x90},
				{mine + "//result", `{"status":"ok"}`, 0x90},
				{mine + "/" + cid + "/result", `{"payload":1}`, 0x99},
				{mine + "/" + cid + "/result", `[{"status":"ok"}]`, 0x99},
				{mine + "/" + next.ID + "/result", `{"id":"` + cid + `","status":"ok"}`, 0x99},
				{"devices/other/commands/" + cid + "/result", `{"status":"ok"}`, 0x87},
			} {
				want := a.code
				if !v5 {
					want = 0 // 3.1.1 has no negative PUBACK
				}
				if got := d.publish(t, a.topic, a.payload); got != want {
					t.Fatalf("answer %s %s: PUBACK %#x, want %#x", a.topic, a.payload, got, want)
				}
			}
			if c := get(t, tf, cid); c.State != "sent" {
				t.Fatalf("after refused answers: %+v", c)
			}
			if got := d.publish(t, mine+"/"+cid+"/result", `{"status":"ok","payload":{"n":1}}`); got != 0 {
				t.Fatalf("answer: PUBACK %#x", got)
			}
			if c := waitState(t, tf, cid, "acknowledged"); c.Status != "ok" || string(c.Result) != `{"n":1}` {
				t.Fatalf("answered: %+v", c)
			}
			if got, _, _ := nextCommand(t, d, id); got != next.ID {
				t.Fatalf("got %s, want %s", got, next.ID)
			}
			// The WebSocket command_result, published whole, is an answer too.
			if got := d.publish(t, mine+"/"+next.ID+"/result", `{"__type":"command_result","id":"`+next.ID+`","status":"rejected"}`); got != 0 {
				t.Fatalf("answer: PUBACK %#x", got)
			}
			if c := waitState(t, tf, next.ID, "failed"); c.Status != "rejected" {
				t.Fatalf("answered: %+v", c)
			}
			// PUBACK of each command publish is counted as its delivery.
			testkit.WaitFor(t, "two command publishes acknowledged", 10*time.Second, func() bool {
				return metric(t, tf, "ingest_frontend_mqtt_commands_delivered_total") == 2
			})

			// Queued while away: delivered once the device is back and subscribed.
			d.close()
			// Once the frontend has let the session go, the home is told
			// before it gets the next submit (one connection, in order).
			testkit.WaitFor(t, "session detached", 10*time.Second, func() bool {
				return metric(t, tf, "ingest_downlink_devices") == 0
			})
			away := submit(t, tf, id, "away", nil)
			d = v.dial(t, tf.mqtt, id)
			if c := get(t, tf, away.ID); c.State != "queued" {
				t.Fatalf("connected, not subscribed: %+v", c)
			}
			if got := d.subscribe(t, mine); got != 1 {
				t.Fatalf("subscribe again: %#x", got)
			}
			if got, _, _ := nextCommand(t, d, id); got != away.ID {
				t.Fatalf("got %s, want %s", got, away.ID)
			}
			d.publish(t, mine+"/"+away.ID+"/result", `{"status":"ok"}`)
			waitState(t, tf, away.ID, "acknowledged")
		})
	}
}

// metric is the value of tf's counter or gauge name.
func metric(t *testing.T, tf *testFrontend, name string) float64 {
	t.Helper()
	mfs, err := tf.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestMQTTCommandsMosquitto: the firmware engineer's loop of docs/mqtt.md,
// with Debian's mosquitto_sub and mosquitto_pub, MQTT 3.1.1 and 5: the
// commands queued for the device arrive one per mosquitto_sub, in order,
// the answers sent with mosquitto_pub end them acknowledged, and a
// subscription to another device's commands is denied.
func TestMQTTCommandsMosquitto(t *testing.T) {
	for _, tool := range []string{"mosquitto_sub", "mosquitto_pub", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: make deps installs mosquitto-clients", tool)
		}
	}
	h := startHome(t, "home-1", command.Options{})
	tf := startFrontend(t, "fe-1", []string{h.Addr}, false)
	host, port, _ := net.SplitHostPort(tf.mqtt)
	for _, v := range []string{"mqttv311", "mqttv5"} {
		id := "mosq-" + v
		var want []string
		for _, name := range []string{"reboot", "report"} {
			want = append(want, submit(t, tf, id, name, map[string]any{"payload": map[string]any{"delay_s": 5}}).ID)
		}
		// As docs/mqtt.md has it, for two commands.
		script := `for i in 1 2; do
  cmd=$(mosquitto_sub -h $H -p $P -V $V -q 1 -i $ID -t devices/$ID/commands -C 1 -W 15) || exit 1
  echo "$cmd"
  cid=${cmd#*\"id\":\"}; cid=${cid%%\"*}
  mosquitto_pub -h $H -p $P -V $V -q 1 -i $ID \
    -t "devices/$ID/commands/$cid/result" -m '{"status":"ok","payload":{"rebooting":true}}' || exit 1
done`
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, "bash", "-c", script)
		cmd.Env = append(cmd.Environ(), "H="+host, "P="+port, "V="+v, "ID="+id)
		out, err := cmd.CombinedOutput()
		cancel()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err != nil || len(lines) != 2 {
			t.Fatalf("%s: %v\n%s", v, err, out)
		}
		for i, line := range lines {
			var f struct{ Type, ID, Name string }
			if json.Unmarshal([]byte(line), &f) != nil || f.Type != "command" || f.ID != want[i] {
				t.Fatalf("%s: command %d: %s, want %s", v, i, line, want[i])
			}
			if got := waitState(t, tf, f.ID, "acknowledged"); string(got.Result) != `{"rebooting":true}` {
				t.Fatalf("%s: %+v", v, got)
			}
		}
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
		out, _ = exec.CommandContext(ctx, "mosquitto_sub", "-h", host, "-p", port, "-V", v, "-q", "1", "-i", id,
			"-t", "devices/someone-else/commands", "-C", "1", "-W", "5").CombinedOutput()
		cancel()
		if !strings.Contains(string(out), "denied") {
			t.Fatalf("%s: subscription to another device's commands: %s", v, out)
		}
	}
}

// TestMQTTCommandsMoveToWebSocket: a command sent to a device over MQTT and
// left unanswered goes to the device's WebSocket connection once that takes
// the session over, and the commands after it follow, in order: the home
// treats both transports alike.
func TestMQTTCommandsMoveToWebSocket(t *testing.T) {
	h := startHome(t, "home-1", command.Options{})
	tf := startFrontend(t, "fe-1", []string{h.Addr}, false)
	const id = "mover"
	m := dialV5(t, tf.mqtt, id)
	if got := m.subscribe(t, "devices/"+id+"/commands"); got != 1 {
		t.Fatalf("subscribe: %#x", got)
	}
	first := submit(t, tf, id, "first", nil)
	if cid, _, _ := nextCommand(t, m, id); cid != first.ID {
		t.Fatalf("over MQTT: got %s, want %s", cid, first.ID)
	}
	second := submit(t, tf, id, "second", nil)
	d := &device{id: id}
	connect(t, tf, d) // takes the MQTT session over
	waitState(t, tf, first.ID, "acknowledged")
	waitState(t, tf, second.ID, "acknowledged")
	if got, want := slices.Compact(d.ids()), []string{first.ID, second.ID}; !slices.Equal(got, want) {
		t.Fatalf("over WebSocket: saw %v, want %v", got, want)
	}
}

// TestMQTTCommandExpiresWaiting: an MQTT 5 device that accepts one
// command publish unacknowledged at a time (Receive Maximum 1) and holds
// its PUBACK keeps the frontend's next command waiting. A command that
// expires while it waits is never published: its home reports it expired,
// and a device must not act on it after that. Before, it was published as
// soon as the device acknowledged the one before it.
func TestMQTTCommandExpiresWaiting(t *testing.T) {
	h := startHome(t, "home-1", command.Options{MaxInFlight: 4})
	tf := startFrontend(t, "fe-1", []string{h.Addr}, false)
	const id = "mqtt-held"
	nc, err := net.Dial("tcp", tf.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 64)
	c := paho.NewClient(paho.ClientConfig{Conn: nc, ClientID: id, EnableManualAcknowledgment: true,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	one := uint16(1)
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &one}}); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Disconnect(&paho.Disconnect{}); nc.Close(); <-c.Done() }()
	if sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/" + id + "/commands", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %+v, %v", sa, err)
	}
	next := func() (string, *paho.Publish) {
		t.Helper()
		select {
		case p := <-got:
			var f struct{ Name string }
			if err := json.Unmarshal(p.Payload, &f); err != nil {
				t.Fatalf("publish %q: %v", p.Payload, err)
			}
			return f.Name, p
		case <-ctx.Done():
			t.Fatal("no command came")
		}
		return "", nil
	}

	submit(t, tf, id, "first", nil)
	name, held := next()
	if name != "first" {
		t.Fatalf("first publish: %q", name)
	}
	// Handed to the frontend (sent), which waits for the PUBACK held, and
	// expired there. Its sent time says it was handed over: waiting to see
	// it "sent" would depend on seeing it within its 1.5 s.
	late := submit(t, tf, id, "late", map[string]any{"ttl_ms": 1500})
	if c := waitState(t, tf, late.ID, "expired"); c.Sent == nil {
		t.Fatalf("the command expired before it was handed to the frontend: %+v", c)
	}
	if err := c.Ack(held); err != nil {
		t.Fatal(err)
	}
	submit(t, tf, id, "after", nil)
	for {
		name, p := next()
		if err := c.Ack(p); err != nil {
			t.Fatal(err)
		}
		switch name {
		case "first": // sent again: unanswered
			continue
		case "after":
			return
		}
		t.Fatalf("the device got %q after it expired", name)
	}
}
