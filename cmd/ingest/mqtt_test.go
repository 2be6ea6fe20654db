package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

var mqttAddrRE = regexp.MustCompile(`msg="mqtt listening" addr=(\S+)`)

// mqttDevice publishes messages 1..n at QoS 1, window in flight, and keeps
// each until its PUBACK: on a lost connection it reconnects and publishes
// again from the first unacknowledged one, in order, as a device that keeps
// its data until acknowledged does.
type mqttDevice struct {
	id      string
	version byte
	token   string
	n       int
	window  int
	onAck   func(n int)
}

func (d *mqttDevice) run(addr func() string, stop <-chan struct{}) error {
	next := 1 // first unacknowledged
	for next <= d.n {
		select {
		case <-stop:
			return errors.New("stopped")
		default:
		}
		acked, err := d.session(addr(), next)
		next += acked
		if err != nil && next <= d.n {
			time.Sleep(20 * time.Millisecond) // the device's reconnect backoff
		}
	}
	return nil
}

// session runs one connection from message first on and returns how many
// were acknowledged.
func (d *mqttDevice) session(addr string, first int) (int, error) {
	nc, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	var b bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: d.version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: d.id, Keepalive: 30,
			UsernameFlag: true, Username: []byte(d.id), PasswordFlag: true, Password: []byte(d.token)}}
	pk.ConnectEncode(&b)
	if _, err := nc.Write(b.Bytes()); err != nil {
		return 0, err
	}
	br := bufio.NewReader(nc)
	read := func() (*packets.Packet, error) {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		hb, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		p := &packets.Packet{ProtocolVersion: d.version}
		if err := p.FixedHeader.Decode(hb); err != nil {
			return nil, err
		}
		n, _, err := packets.DecodeLength(br)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		p.FixedHeader.Remaining = n
		switch p.FixedHeader.Type {
		case packets.Connack:
			err = p.ConnackDecode(buf)
		case packets.Puback:
			err = p.PubackDecode(buf)
		}
		return p, err
	}
	ca, err := read()
	if err != nil {
		return 0, err
	}
	if ca.FixedHeader.Type != packets.Connack || ca.ReasonCode != 0 {
		return 0, fmt.Errorf("connack %+v", ca)
	}
	sent, acked := first, 0
	for first+acked <= d.n {
		b.Reset()
		for sent <= d.n && sent-(first+acked) < d.window {
			p := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: d.version,
				TopicName: "devices/" + d.id + "/seq", PacketID: uint16((sent-1)%65535 + 1),
				// ts makes a message sent twice one sample in the store.
				Payload: fmt.Appendf(nil, `{"id":%d,"ts":%d,"v":%d}`, sent, 1_700_000_000_000+sent, sent)}
			p.PublishEncode(&b)
			sent++
		}
		if b.Len() > 0 {
			if _, err := nc.Write(b.Bytes()); err != nil {
				return acked, err
			}
		}
		pa, err := read()
		if err != nil {
			return acked, err
		}
		n := first + acked
		if pa.FixedHeader.Type != packets.Puback || pa.PacketID != uint16((n-1)%65535+1) || pa.ReasonCode != 0 {
			return acked, fmt.Errorf("%s: got %+v for message %d", d.id, pa, n)
		}
		d.onAck(n)
		acked++
	}
	return acked, nil
}

// TestFrontendMQTTSurvivesSIGKILL: MQTT devices (3.1.1 and 5) publish at
// QoS 1 while the frontend is killed with SIGKILL and restarted. Every
// message PUBACKed before the kill is in the WAL exactly once; every message
// is there in the end, each device's first copies in order (a message in
// flight at the kill may be there twice: its PUBACK was lost, so the device
// sent it again, with the same ts).
func TestFrontendMQTTSurvivesSIGKILL(t *testing.T) {
	const (
		devices   = 16
		perDevice = 500
	)
	walDir := t.TempDir()
	p, addr := startFrontend(t, walDir, "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0")
	mqttAddr := mqttAddrRE.FindStringSubmatch(p.logs.String())[1]
	ids := deviceIDs("mq", devices)
	acked := newAcks(ids)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for i, dev := range ids {
		d := &mqttDevice{id: dev, version: byte(4 + i%2), token: token(t, dev), n: perDevice, window: 16,
			onAck: func(n int) { acked.add(dev, uint64(n)) }}
		wg.Go(func() { errs <- d.run(func() string { return mqttAddr }, stop) })
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	ackedAtKill := killMidStream(t, p, acked, devices*perDevice, "PUBACKed", "PUBACKs")
	checkStoredOnce(t, ackedAtKill, walOrder(t, walDir), "after SIGKILL")

	// Restart on the same addresses: devices reconnect and publish again
	// from their first unacknowledged message.
	p2, _ := startFrontend(t, walDir, addr, "--mqtt.listen", mqttAddr)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatal("devices did not finish after the restart")
	}
	close(stop)
	for range devices {
		if err := <-errs; err != nil {
			t.Fatalf("device: %v", err)
		}
	}
	stopOrFail(t, p2)
	order := walOrder(t, walDir)
	checkOrder(t, acked.snapshot(), order, perDevice)
	checkStoredOnce(t, ackedAtKill, order, "in the end")
}

// checkStoredOnce fails the test unless each message in acked is in order
// (what a WAL holds of each device) once.
func checkStoredOnce(t *testing.T, acked map[string]map[uint64]bool, order map[string][]uint64, when string) {
	t.Helper()
	for dev, ids := range acked {
		count := map[uint64]int{}
		for _, id := range order[dev] {
			count[id]++
		}
		for id := range ids {
			if count[id] != 1 {
				t.Fatalf("PUBACKed message %s/%d is in the WAL %d times %s, want once", dev, id, count[id], when)
			}
		}
	}
}

// TestMQTTReceiveMaximumAsHelpSays: the default --help shows for
// --mqtt.receive-maximum is the Receive Maximum a frontend started without
// the flag tells an MQTT 5 client in its CONNACK.
func TestMQTTReceiveMaximumAsHelpSays(t *testing.T) {
	_, help := helpFlags(t, "frontend")
	m := regexp.MustCompile(`(?m)^  --mqtt\.receive-maximum .*\n.*\(default (\d+)\)$`).FindStringSubmatch(help)
	if m == nil {
		t.Fatalf("ingest frontend --help shows no default for --mqtt.receive-maximum:\n%s", help)
	}
	p, _ := startFrontend(t, t.TempDir(), "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0")
	defer stopOrFail(t, p)
	nc, err := net.DialTimeout("tcp", mqttAddrRE.FindStringSubmatch(p.logs.String())[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var b bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "rm-1", Keepalive: 30,
			UsernameFlag: true, Username: []byte("rm-1"), PasswordFlag: true, Password: []byte(token(t, "rm-1"))}}
	if err := pk.ConnectEncode(&b); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	hb, err := br.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	ca := packets.Packet{ProtocolVersion: 5}
	if err := ca.FixedHeader.Decode(hb); err != nil {
		t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(br)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	ca.FixedHeader.Remaining = n
	if ca.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, want CONNACK", ca.FixedHeader.Type)
	}
	if err := ca.ConnackDecode(body); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("CONNACK %+v: %v", ca, err)
	}
	told := "none (65,535)"
	if rm := ca.Properties.ReceiveMaximum; rm != 0 {
		told = fmt.Sprint(rm)
	}
	if told != m[1] {
		t.Errorf("ingest frontend --help says --mqtt.receive-maximum defaults to %s; the frontend tells MQTT 5 clients Receive Maximum %s", m[1], told)
	}
}
