package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
)

// writeRegistry replaces the registry file at path with body, by rename
// as an editor or a ConfigMap update does.
func writeRegistry(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// mqtt5 connects an MQTT 5 device over TCP with its token as password.
func mqtt5(t *testing.T, addr, device, tok string) (*paho.Client, *paho.Connack, <-chan *paho.Disconnect, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	disc := make(chan *paho.Disconnect, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: nc, ClientID: device, OnServerDisconnect: func(d *paho.Disconnect) { disc <- d }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: device, CleanStart: true, KeepAlive: 30, PasswordFlag: true, Password: []byte(tok)})
	t.Cleanup(func() {
		c.Disconnect(&paho.Disconnect{})
		nc.Close()
		<-c.Done()
	})
	return c, ca, disc, err
}

// TestRevokedProcess: `ingest frontend --registry.file F` with devices
// connected over WebSocket and MQTT. F is edited to disable two of them:
// their connections are closed once the frontend has taken the new file
// (WebSocket 1008 revoked, MQTT 5 DISCONNECT 0x98), the third device goes
// on, and a reconnect with a valid token is refused (HTTP 403 revoked,
// CONNACK 0x8A). Enabled again, the device connects.
func TestRevokedProcess(t *testing.T) {
	reg := filepath.Join(t.TempDir(), "devices.yaml")
	writeRegistry(t, reg, "devices:\n  - id: rev-ws\n  - id: rev-mqtt\n  - id: rev-keep\n")
	fe := &tierProc{t: t, name: "frontend", ready: addrRE,
		env: []string{"INGEST_AUTH_HS256_SECRET_FILE=" + writeSecret(t)},
		args: []string{"frontend", "--listen", "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0", "--wal.dir", t.TempDir(),
			"--registry.file", reg, "--log.level", "debug"}}
	fe.start()
	defer fe.stop()
	url := "ws://" + addrRE.FindStringSubmatch(fe.logs.String())[1] + "/v1/ingest"
	testkit.WaitFor(t, "the MQTT listener's address logged", 10*time.Second, func() bool { return mqttAddrRE.MatchString(fe.logs.String()) })
	mqttAddr := mqttAddrRE.FindStringSubmatch(fe.logs.String())[1]

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dial := func(dev string) *client.Client {
		c, err := client.Dial(ctx, client.Options{URL: url, Token: token(t, dev), MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
		if err != nil {
			t.Fatalf("device %s: %v", dev, err)
		}
		if err := c.SendWait(ctx, []byte(`{"v":1}`)); err != nil {
			t.Fatalf("device %s: %v", dev, err)
		}
		return c
	}
	ws, keep := dial("rev-ws"), dial("rev-keep")
	defer ws.Close()
	defer keep.Close()
	_, ca, disc, err := mqtt5(t, mqttAddr, "rev-mqtt", token(t, "rev-mqtt"))
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("MQTT 5 device: %v %+v", err, ca)
	}

	edited := time.Now()
	writeRegistry(t, reg, "devices:\n  - id: rev-ws\n    disabled: true\n  - id: rev-mqtt\n    disabled: true\n  - id: rev-keep\n")
	testkit.WaitFor(t, "the disabled WebSocket device's connection closed", 30*time.Second, func() bool { return ws.Err() != nil })
	if err := ws.Err(); !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), `closed by server with 1008 "revoked"`) {
		t.Fatalf("the disabled device's client ended with %v, want 1008 revoked", err)
	}
	t.Logf("closed %v after the registry was edited (the registry polls every 2s and takes a content read twice)", time.Since(edited).Round(time.Millisecond))
	select {
	case d := <-disc:
		if d.ReasonCode != 0x98 {
			t.Errorf("MQTT 5 DISCONNECT reason %#x, want 0x98 (administrative action)", d.ReasonCode)
		}
	case <-ctx.Done():
		t.Fatal("no DISCONNECT for the disabled MQTT 5 device")
	}
	if err := keep.SendWait(ctx, []byte(`{"v":2}`)); err != nil {
		t.Errorf("the device left enabled: %v", err)
	}

	// A reconnect, with a valid token, is refused with the documented
	// answers.
	checkRevokedRefused(ctx, t, url, mqttAddr, fe)

	// Enabled again, it connects once the frontend has taken the file.
	writeRegistry(t, reg, "devices:\n  - id: rev-ws\n  - id: rev-mqtt\n  - id: rev-keep\n")
	testkit.WaitFor(t, "the device enabled again connecting", 30*time.Second, func() bool {
		c, err := client.Dial(ctx, client.Options{URL: url, Token: token(t, "rev-ws")})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.SendWait(ctx, []byte(`{"v":3}`)) == nil
	})
}

// checkRevokedRefused: the disabled devices rev-ws (WebSocket at url) and
// rev-mqtt (MQTT 5 at mqttAddr) are refused, with a valid token, with the
// documented answers, and fe logs the refusal.
func checkRevokedRefused(ctx context.Context, t *testing.T, url, mqttAddr string, fe *tierProc) {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + token(t, "rev-ws")}}
	_, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("reconnect of the disabled device: %v, %+v; want HTTP 403", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	var refusal struct{ Type, Code, Message string }
	if json.Unmarshal(body, &refusal) != nil || refusal.Type != "error" || refusal.Code != protocol.CodeRevoked {
		t.Errorf("refusal body %q, want an error with code %q", body, protocol.CodeRevoked)
	}
	if _, err := client.Dial(ctx, client.Options{URL: url, Token: token(t, "rev-ws")}); !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "HTTP 403") {
		t.Errorf("the client's reconnect: %v, want refused with HTTP 403", err)
	}
	if _, ca, _, err := mqtt5(t, mqttAddr, "rev-mqtt", token(t, "rev-mqtt")); err == nil || ca == nil || ca.ReasonCode != 0x8A {
		t.Errorf("MQTT 5 reconnect of the disabled device: %v %+v, want CONNACK 0x8A (banned)", err, ca)
	}
	if !regexp.MustCompile(`msg="handshake of a disabled device refused" device=rev-ws`).MatchString(fe.logs.String()) {
		t.Errorf("the refusal is not logged:\n%s", fe.logs.String())
	}
}
