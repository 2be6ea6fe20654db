package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

var mqttAddrRE = regexp.MustCompile(`msg="mqtt listening" addr=(\S+)`)

// startFrontendMQTT runs `ingest frontend` with an MQTT listener and
// returns once it has logged both addresses.
func startFrontendMQTT(t *testing.T, walDir, listen, mqttListen string) (*proc, string) {
	t.Helper()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "frontend", "--listen", listen, "--mqtt.listen", mqttListen, "--id", "fe-e2e", "--drain-window", "500ms")
	cmd.Env = append(os.Environ(), "INGEST_WAL_DIR="+walDir, "INGEST_AUTH_HS256_SECRET_FILE="+secretFile)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: &syncBuf{}}
	found := make(chan [2]string, 1)
	go func() {
		var ws, mq string
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			if m := mqttAddrRE.FindStringSubmatch(line); m != nil {
				mq = m[1]
			}
			if m := addrRE.FindStringSubmatch(line); m != nil {
				ws = m[1]
			}
			if ws != "" && mq != "" {
				select {
				case found <- [2]string{ws, mq}:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case a := <-found:
		p.addr = a[0]
		return p, a[1]
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("frontend did not report its addresses; logs:\n%s", p.logs)
	}
	return nil, ""
}

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
	p, mqttAddr := startFrontendMQTT(t, walDir, "127.0.0.1:0", "127.0.0.1:0")
	var (
		mu       sync.Mutex
		acked    = map[string]map[uint64]bool{}
		ackCount atomic.Int64
		addrMu   sync.Mutex
		addr     = mqttAddr
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for i := range devices {
		acked[fmt.Sprintf("mq-%02d", i)] = map[uint64]bool{}
	}
	for i := range devices {
		dev := fmt.Sprintf("mq-%02d", i)
		d := &mqttDevice{id: dev, version: byte(4 + i%2), token: token(t, dev), n: perDevice, window: 16,
			onAck: func(n int) {
				mu.Lock()
				acked[dev][uint64(n)] = true
				mu.Unlock()
				ackCount.Add(1)
			}}
		wg.Go(func() {
			errs <- d.run(func() string { addrMu.Lock(); defer addrMu.Unlock(); return addr }, stop)
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for ackCount.Load() < devices*perDevice/4 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks before the kill; logs:\n%s", ackCount.Load(), p.logs)
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	mu.Lock()
	ackedAtKill := map[string][]uint64{}
	for dev, ids := range acked {
		for id := range ids {
			ackedAtKill[dev] = append(ackedAtKill[dev], id)
		}
	}
	mu.Unlock()
	t.Logf("killed after %d PUBACKs", ackCount.Load())
	stored := walOrder(t, walDir)
	for dev, ids := range ackedAtKill {
		count := map[uint64]int{}
		for _, id := range stored[dev] {
			count[id]++
		}
		for _, id := range ids {
			if count[id] != 1 {
				t.Fatalf("PUBACKed message %s/%d is in the WAL %d times after SIGKILL, want once", dev, id, count[id])
			}
		}
	}

	// Restart on the same addresses: devices reconnect and publish again
	// from their first unacknowledged message.
	p2, _ := startFrontendMQTT(t, walDir, p.addr, mqttAddr)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("devices did not finish after the restart; logs:\n%s", p2.logs)
	}
	close(stop)
	for range devices {
		if err := <-errs; err != nil {
			t.Fatalf("device: %v", err)
		}
	}
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.cmd.Wait(); err != nil {
		t.Fatalf("frontend exit after SIGTERM: %v; logs:\n%s", err, p2.logs)
	}
	order := walOrder(t, walDir)
	for dev, ids := range acked {
		if len(ids) != perDevice {
			t.Fatalf("%s: %d acknowledged, want %d", dev, len(ids), perDevice)
		}
		seen := map[uint64]int{}
		var last uint64
		for _, id := range order[dev] {
			seen[id]++
			if seen[id] > 1 {
				continue
			}
			if id != last+1 {
				t.Fatalf("%s: message %d first stored after %d: order broken", dev, id, last)
			}
			last = id
		}
		if last != perDevice {
			t.Fatalf("%s: %d stored, want %d", dev, last, perDevice)
		}
		for _, id := range ackedAtKill[dev] {
			if seen[id] != 1 {
				t.Fatalf("%s/%d, PUBACKed before the kill, is in the WAL %d times", dev, id, seen[id])
			}
		}
	}
}
