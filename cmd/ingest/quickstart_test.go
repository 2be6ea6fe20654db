package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/internal/testkit"
)

// Every URL the README's quick start names answers on the engine make run
// starts (on free ports instead of the defaults, which a running engine
// may hold), and each is one the engine logs or serves beside one it logs.
func TestQuickStartURLs(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(readme), "## Quick start")
	end := strings.Index(string(readme), "## Architecture")
	quick := string(readme[start:end])
	ports := map[string]int{"8080": freePort(t), "8081": freePort(t), "9090": freePort(t)}
	p := &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`),
		args: []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(),
			"--listen", fmt.Sprintf("127.0.0.1:%d", ports["8080"]), "--feed.listen", fmt.Sprintf("127.0.0.1:%d", ports["8081"]),
			"--storage.http.listen", fmt.Sprintf("127.0.0.1:%d", ports["9090"]), "--mqtt.listen", "127.0.0.1:0"}}
	p.start()
	defer p.stop()
	urls := regexp.MustCompile("(?:https?|wss?)://127\\.0\\.0\\.1:(8080|8081|9090)[^\\s`)]*").FindAllStringSubmatch(quick, -1)
	if len(urls) < 5 {
		t.Fatalf("the quick start names %d URLs:\n%s", len(urls), quick)
	}
	for _, m := range urls {
		u := strings.Replace(m[0], ":"+m[1], fmt.Sprintf(":%d", ports[m[1]]), 1)
		if strings.HasPrefix(u, "ws") {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, _, err := websocket.Dial(ctx, u+"?device=quick", nil)
			cancel()
			if err != nil {
				t.Errorf("README's %s: %v", m[0], err)
				continue
			}
			c.CloseNow()
			continue
		}
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
