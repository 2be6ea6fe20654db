package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// logAttrs are the key=value pairs of the first log line matching msg.
func logAttrs(t *testing.T, logs, msg string) map[string]string {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `msg="`+msg) && !strings.Contains(line, "msg="+msg) {
			continue
		}
		m := map[string]string{}
		for _, kv := range regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`).FindAllStringSubmatch(line, -1) {
			m[kv[1]] = strings.Trim(kv[2], `"`)
		}
		return m
	}
	t.Fatalf("no log line %q in:\n%s", msg, logs)
	return nil
}

// get fetches u with hc and returns the status and the body.
func get(t *testing.T, hc *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ingest all with a certificate serves every listener over TLS: devices
// over wss:// (the device client) and MQTT over TLS, dashboards over wss://
// and https://, the query API over https://; the URLs it logs say so. A
// new certificate written over the files is served from the next
// handshake after the check interval, on every listener, without a
// restart.
func TestTLS(t *testing.T) {
	ca := testkit.NewCA(t)
	certDir := t.TempDir()
	leaf := ca.Issue(t)
	certFile, keyFile := leaf.Write(t, certDir)
	e := startAll(t, []string{"INGEST_TLS_CERT_FILE=" + certFile, "INGEST_TLS_KEY_FILE=" + keyFile})
	urls := logAttrs(t, e.logs.String(), "engine running")
	for k, scheme := range map[string]string{"devices": "wss", "live_feed": "wss", "metrics": "https", "query_api": "https", "status": "https"} {
		if !strings.HasPrefix(urls[k], scheme+"://") {
			t.Errorf("logged %s=%s, want a %s:// URL", k, urls[k], scheme)
		}
	}
	mqttAddr := mqttAddrRE.FindStringSubmatch(e.logs.String())
	if mqttAddr == nil {
		t.Fatalf("no mqtt listening line:\n%s", e.logs.String())
	}
	dev, _ := url.Parse(urls["devices"])
	feedU, _ := url.Parse(urls["live_feed"])
	query, _ := url.Parse(urls["query_api"])
	hc := ca.HTTPClient()
	checkPlainRefused(t, dev.Host, feedU.Host, query.Host)
	checkServedOverTLS(t, ca, urls, mqttAddr[1])
	for _, u := range []string{urls["status"], urls["metrics"], "https://" + feedU.Host + "/healthz", "https://" + query.Host + "/-/healthy", "https://" + query.Host + "/metrics"} {
		if code, _ := get(t, hc, u); code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", u, code)
		}
	}

	// A new certificate: every listener presents it from a handshake after
	// the check interval, counted once.
	addrs := []string{dev.Host, feedU.Host, query.Host, mqttAddr[1]}
	for _, addr := range addrs {
		if got := ca.ServedSerial(t, addr); got.Cmp(leaf.Serial) != 0 {
			t.Fatalf("%s presents serial %v, want %v", addr, got, leaf.Serial)
		}
	}
	next := ca.Issue(t)
	next.Write(t, certDir)
	for _, addr := range addrs {
		testkit.WaitFor(t, addr+" presenting the new certificate", 30*time.Second, func() bool {
			return ca.ServedSerial(t, addr).Cmp(next.Serial) == 0
		})
	}
	_, metrics := get(t, hc, urls["metrics"])
	if !strings.Contains(metrics, `ingest_tls_reloads_total{result="ok"} 1`+"\n") || !strings.Contains(metrics, `ingest_tls_reloads_total{result="error"} 0`+"\n") {
		t.Errorf("want one good reload and no failed one in /metrics:\n%s", grepLines(metrics, "ingest_tls_"))
	}
	if !strings.Contains(e.logs.String(), `msg="tls certificate reloaded"`) || !strings.Contains(e.logs.String(), "serial="+next.Serial.String()) {
		t.Errorf("no log line of the reload to serial %v:\n%s", next.Serial, e.logs.String())
	}
	stopOrFail(t, e.tierProc)
}

// checkPlainRefused checks that plain HTTP to each TLS port is refused,
// and that a client that does not trust the CA fails the handshake.
func checkPlainRefused(t *testing.T, addrs ...string) {
	t.Helper()
	for _, addr := range addrs {
		if code, _ := get(t, http.DefaultClient, "http://"+addr+"/healthz"); code != http.StatusBadRequest {
			t.Errorf("plain http://%s/healthz answered %d, want 400 (an HTTP request to an HTTPS server)", addr, code)
		}
		if _, err := http.Get("https://" + addr + "/healthz"); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("https://%s/healthz without the CA: %v, want a certificate error", addr, err)
		}
	}
}

// checkServedOverTLS has a dashboard follow the feed over wss://, a device
// send over wss:// with the device client and an MQTT device publish over
// TLS, and checks that the dashboard is shown the device and that the
// store, asked over https://, holds both devices' messages.
func checkServedOverTLS(t *testing.T, ca *testkit.CA, urls map[string]string, mqttAddr string) {
	t.Helper()
	wsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.TLSConfig()}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	shown, _ := dashboard(t, ctx, urls["live_feed"], &websocket.DialOptions{HTTPClient: wsClient}, `{"type":"subscribe"}`)
	const n = 20
	base := time.Now().UnixMilli() - 1000
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		msgs = append(msgs, fmt.Appendf(nil, `{"n":%d,"ts":%d}`, i, base+int64(i)))
	}
	sendAcked(t, ctx, client.Options{URL: urls["devices"] + "?device=dev-tls", HTTPClient: wsClient}, msgs)
	for seen := false; !seen; {
		select {
		case f := <-shown:
			if seen = f["type"] == "message"; seen && f["device"] != "dev-tls" {
				t.Fatalf("feed showed device %q, want dev-tls", f["device"])
			}
		case <-ctx.Done():
			t.Fatal("the feed showed nothing over wss://")
		}
	}
	publishMQTTOverTLS(t, ca, mqttAddr, base)

	// Both are in the store, asked over https://.
	query, _ := url.Parse(urls["query_api"])
	for _, q := range []string{`count_over_time(n{device="dev-tls"}[1h])`, `count_over_time(n{device="mqtt-tls"}[1h])`} {
		want := map[bool]string{true: fmt.Sprint(n), false: "1"}[strings.Contains(q, "dev-tls")]
		u := "https://" + query.Host + "/api/v1/query?query=" + url.QueryEscape(q)
		testkit.WaitFor(t, q+" = "+want+" over https", 30*time.Second, func() bool {
			code, body := get(t, ca.HTTPClient(), u)
			return code == http.StatusOK && strings.Contains(body, `"`+want+`"]`)
		})
	}
}

// publishMQTTOverTLS publishes one message of mqtt-tls at QoS 1 to the
// MQTT listener at addr over TLS; QoS 1 returns after the fsync.
func publishMQTTOverTLS(t *testing.T, ca *testkit.CA, addr string, ts int64) {
	t.Helper()
	o := pahov3.NewClientOptions().AddBroker("tls://" + addr).SetClientID("mqtt-tls").SetTLSConfig(ca.TLSConfig()).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second)
	mc := pahov3.NewClient(o)
	if tok := mc.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect over tls to %s: %v", addr, tok.Error())
	}
	tok := mc.Publish("devices/mqtt-tls/telemetry", 1, false, fmt.Sprintf(`{"n":1,"ts":%d}`, ts))
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt publish over tls: %v", tok.Error())
	}
	mc.Disconnect(250)
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A tier given half a pair, or a pair it cannot read, does not start, and
// says which flags.
func TestTLSFlagErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frontend", "--wal.dir", dir + "/wal", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--tls.cert-file", dir + "/c.pem"},
			"--tls.cert-file and --tls.key-file go together"},
		{[]string{"feed", "--middletiers", "tcp://127.0.0.1:1", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--tls.key-file", dir + "/k.pem"},
			"--tls.cert-file and --tls.key-file go together"},
		{[]string{"storage", "--data.dir", dir + "/st", "--http.listen", "127.0.0.1:0", "--tls.cert-file", dir + "/c.pem", "--tls.key-file", dir + "/k.pem"},
			"tls (--tls.cert-file, --tls.key-file): certfile: stat " + dir + "/c.pem: no such file or directory"},
		{[]string{"all", "--data.dir", dir + "/all", "--insecure-no-auth", "--tls.cert-file", dir + "/c.pem", "--tls.key-file", dir + "/k.pem"},
			"tls (--tls.cert-file, --tls.key-file): certfile: stat " + dir + "/c.pem"},
	} {
		_, errOut, code := runBin(t, dir, nil, tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("ingest %q: exit %d, stderr %q; want 1 and %q", tc.args, code, errOut, tc.want)
		}
	}
}
