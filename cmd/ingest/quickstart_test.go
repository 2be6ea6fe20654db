package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ingest-io/ingest/internal/testkit"
)

// quickStart is the README's quick start section.
func quickStart(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(readme), "## Quick start")
	end := strings.Index(string(readme), "## Architecture")
	if start < 0 || end < start {
		t.Fatal("README has no quick start before its architecture")
	}
	return string(readme[start:end])
}

// logLine is a log line's level and message; the attributes that change
// from run to run (times, durations, loopback ports) are left out.
var logLine = regexp.MustCompile(`(?m)time=\S+ level=(\w+) msg=("[^"]*"|\S+)`)

// Every URL the README's quick start names answers on the engine make run
// starts (on free ports instead of the defaults, which a running engine
// may hold): HTTP with 200, WebSocket with an upgrade, MQTT with a
// CONNACK that accepts. The log it shows is the one the engine prints,
// line by line, and the engine's own line of URLs is the README's. The
// endpoints a new user looks for are all among them.
func TestQuickStartURLs(t *testing.T) {
	quick := quickStart(t)
	for _, want := range []string{"ws://127.0.0.1:8080/v1/ingest", "tcp://127.0.0.1:1883", "ws://127.0.0.1:8080/mqtt",
		"http://127.0.0.1:8080/v1/devices/tracker-001/commands", "ws://127.0.0.1:8081/v1/feed", "http://127.0.0.1:8081/status/",
		"http://127.0.0.1:9090/api/v1/", "http://127.0.0.1:9090/-/healthy", "http://127.0.0.1:9090/-/ready", "http://127.0.0.1:8080/metrics"} {
		if !strings.Contains(quick, "`"+want) {
			t.Errorf("the quick start does not name %s", want)
		}
	}
	ports := map[string]int{"8080": freePort(t), "8081": freePort(t), "9090": freePort(t), "1883": freePort(t)}
	local := func(u, port string) string { return strings.Replace(u, ":"+port, fmt.Sprintf(":%d", ports[port]), 1) }
	p := &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`),
		args: []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(),
			"--listen", fmt.Sprintf("127.0.0.1:%d", ports["8080"]), "--feed.listen", fmt.Sprintf("127.0.0.1:%d", ports["8081"]),
			"--storage.http.listen", fmt.Sprintf("127.0.0.1:%d", ports["9090"]), "--mqtt.listen", fmt.Sprintf("127.0.0.1:%d", ports["1883"])}}
	p.start()
	defer p.kill() // a no-op once it has stopped
	checkQuickStartLog(t, quick, p, false, local)

	urls := regexp.MustCompile("(?:https?|wss?|tcp)://127\\.0\\.0\\.1:(8080|8081|9090|1883)[^\\s`)]*").FindAllStringSubmatch(quick, -1)
	if len(urls) < 10 {
		t.Fatalf("the quick start names %d URLs:\n%s", len(urls), quick)
	}
	for _, m := range urls {
		u := local(m[0], m[1])
		switch {
		case strings.HasPrefix(u, "tcp://"):
			if err := mqttConnect(strings.TrimPrefix(u, "tcp://")); err != nil {
				t.Errorf("README's %s: %v", m[0], err)
			}
		case strings.HasPrefix(u, "ws"):
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			o := &websocket.DialOptions{}
			if strings.HasSuffix(u, "/mqtt") {
				o.Subprotocols = []string{"mqtt"}
			}
			c, _, err := websocket.Dial(ctx, u+"?device=quick", o)
			cancel()
			if err != nil {
				t.Errorf("README's %s: %v", m[0], err)
				continue
			}
			c.CloseNow()
		default:
			if _, err := url.Parse(u); err != nil {
				t.Errorf("README's %s: %v", m[0], err)
				continue
			}
			testkit.WaitFor(t, "README's "+m[0]+" answering 200", 30*time.Second, func() bool {
				resp, err := http.Get(u)
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
		}
	}
	if err := p.stop(); err != nil {
		t.Error(err)
	}
	checkQuickStartLog(t, quick, p, true, local)
}

// checkQuickStartLog checks that each log line the quick start shows is
// one the engine prints: before it stops, those of its start (waiting
// for the engine to print them); once stopped, those of its stop. The
// line with the URLs names the same ones as the engine's.
func checkQuickStartLog(t *testing.T, quick string, p *tierProc, stopped bool, local func(u, port string) string) {
	t.Helper()
	missing := func() []string {
		printed := map[string]bool{}
		for _, m := range logLine.FindAllStringSubmatch(p.logs.String(), -1) {
			printed[m[1]+" "+m[2]] = true
		}
		var out []string
		for _, m := range logLine.FindAllStringSubmatch(quick, -1) {
			atStop := strings.Contains(m[0], "shutting down") || strings.Contains(m[0], "drained") ||
				strings.Contains(m[0], "flushed") || strings.Contains(m[0], "stopped")
			if atStop == stopped && !printed[m[1]+" "+m[2]] {
				out = append(out, "level="+m[1]+" msg="+m[2])
			}
		}
		return out
	}
	if n := len(logLine.FindAllStringSubmatch(quick, -1)); n < 8 {
		t.Fatalf("the quick start shows %d log lines", n)
	}
	testkit.WaitFor(t, fmt.Sprintf("the engine to print the quick start's lines %q", missing()), 30*time.Second, func() bool { return len(missing()) == 0 })
	engine := regexp.MustCompile(`msg="engine running[^\n]*`)
	attrs := regexp.MustCompile(`(devices|metrics|live_feed|query_api|status)=(\S+)`)
	readme, logged := engine.FindString(quick), engine.FindString(p.logs.String())
	shown := attrs.FindAllStringSubmatch(readme, -1)
	if len(shown) != 5 {
		t.Errorf("the quick start's engine line names %d URLs, want 5: %s", len(shown), readme)
	}
	for _, m := range shown {
		port := regexp.MustCompile(`:(\d+)`).FindStringSubmatch(m[2])[1]
		if !strings.Contains(logged, m[1]+"="+local(m[2], port)) {
			t.Errorf("the quick start's engine line has %s=%s; the engine logs %s", m[1], m[2], logged)
		}
	}
}

// mqttConnect connects an MQTT 5 device without a password, as make run
// takes them, and reports whether the CONNACK accepts it.
func mqttConnect(addr string) error {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	c := paho.NewClient(paho.ClientConfig{Conn: nc, ClientID: "quick"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: "quick", CleanStart: true, KeepAlive: 30})
	if err != nil {
		return err
	}
	defer func() {
		c.Disconnect(&paho.Disconnect{})
		<-c.Done()
	}()
	if ca.ReasonCode != 0 {
		return fmt.Errorf("CONNACK %#x", ca.ReasonCode)
	}
	return nil
}
