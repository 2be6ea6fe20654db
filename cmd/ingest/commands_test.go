package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/downlink"
)

// cmdRecord is what the test knows of one command it got accepted.
type cmdRecord struct {
	id, device string
	seq        int  // its place among its device's accepted commands
	short      bool // a time to live short enough to expire while its device is away
	cancelled  bool // a DELETE answered 200
}

// TestCommandsUnderSIGKILL runs two frontends and two middletiers (each
// also a command home) as processes, with devices that answer commands
// through the client package and move between the frontends, and kills a
// random process with SIGKILL every second or so, restarting it, while
// applications submit and cancel commands at either frontend. At the end
// every accepted command is final: acknowledged with its device's answer
// (and its device saw it), or, for those with a short time to live,
// expired, or cancelled (and its device never saw it); each device saw its
// commands first in the order they were accepted.
func TestCommandsUnderSIGKILL(t *testing.T) {
	d := soak(15 * time.Second)
	const devices = 8
	procs, feAddrs := commandTiers(t)
	for _, p := range procs {
		p.start()
	}
	logsOnFailure(t, 30, procs...)
	api := newCommandAPI(t, feAddrs)
	fleet := &commandFleet{t: t, feAddrs: feAddrs, seen: map[string][]string{}, saw: map[string]bool{}}
	for i := range devices {
		fleet.add(fmt.Sprintf("dev-%02d", i), i%2)
	}

	// Applications submit commands for every device, and devices move
	// between the frontends, while the tiers are killed.
	var (
		recMu   sync.Mutex
		records []*cmdRecord
	)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, dv := range fleet.devs {
		wg.Go(func() {
			api.submitUntil(ctx, dv.id, func(r *cmdRecord) {
				recMu.Lock()
				records = append(records, r)
				recMu.Unlock()
			})
		})
	}
	wg.Go(func() { fleet.move(ctx) })
	kills := chaos(procs, d)
	stop()
	wg.Wait()
	t.Logf("kills: %v; %d commands accepted", kills, len(records))

	final := api.finalStates(records)
	fleet.close()
	stopAll(t, procs...)
	checkCommands(t, records, final, fleet)
}

// commandTiers are two middletiers, each also a command home, and two
// frontends that forward to both and reach both homes, and the frontends'
// addresses.
func commandTiers(t *testing.T) (procs []*tierProc, feAddrs []string) {
	secretFile := writeSecret(t)
	var homes, mtIngest []string
	for i := range 2 {
		home := endpoint(t)
		mt := middletierProc(t, fmt.Sprintf("mt-%d", i), t.TempDir(), "--command.addr", home, "--command.redeliver", "500ms")
		homes, mtIngest = append(homes, home), append(mtIngest, mt.ingest)
		procs = append(procs, mt.tierProc)
	}
	for i := range 2 {
		addr := loopback(t)
		feAddrs = append(feAddrs, addr)
		procs = append(procs, frontendProc(t, fmt.Sprintf("fe-%d", i), addr, t.TempDir(), secretFile,
			"--uplink.middletiers", strings.Join(mtIngest, ","), "--commands.homes", strings.Join(homes, ",")))
	}
	return procs, feAddrs
}

// commandAPI is an application at the frontends' command API.
type commandAPI struct {
	t       *testing.T
	feAddrs []string
	token   string
	hc      *http.Client
}

func newCommandAPI(t *testing.T, feAddrs []string) *commandAPI {
	app, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "app", "scope": "commands",
		"exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return &commandAPI{t: t, feAddrs: feAddrs, token: app, hc: &http.Client{Timeout: 6 * time.Second}}
}

// do makes one request at frontend fe; status 0 is a transport error.
func (a *commandAPI) do(fe int, method, path string, body any, out any) int {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, "http://"+a.feAddrs[fe]+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// submitUntil submits commands for device, one at a time, each with its
// own idempotency key, sent again (to either frontend) until accepted;
// some are cancelled at once. It hands each accepted one to accepted,
// until ctx ends.
func (a *commandAPI) submitUntil(ctx context.Context, device string, accepted func(*cmdRecord)) {
	for n := 0; ctx.Err() == nil; n++ {
		short := rand.IntN(5) == 0
		body := map[string]any{"name": "set", "payload": map[string]any{"n": n}, "idempotency_key": fmt.Sprintf("%s-%d", device, n)}
		if short {
			body["ttl_ms"] = 300
		}
		var c downlink.CommandJSON
		for st := 0; st != http.StatusAccepted; {
			if st = a.do(rand.IntN(2), "POST", "/v1/devices/"+device+"/commands", body, &c); st != http.StatusAccepted {
				if st != 0 && st != http.StatusServiceUnavailable {
					a.t.Errorf("submit for %s: HTTP %d", device, st)
					return
				}
				time.Sleep(50 * time.Millisecond) // the application's retry pace
			}
		}
		r := &cmdRecord{id: c.ID, device: device, seq: n, short: short}
		if rand.IntN(8) == 0 {
			var got downlink.CommandJSON
			if a.do(rand.IntN(2), "DELETE", "/v1/commands/"+c.ID, nil, &got) == http.StatusOK {
				r.cancelled = true
			}
		}
		accepted(r)
		time.Sleep(time.Duration(20+rand.IntN(100)) * time.Millisecond) // the application's pace
	}
}

// finalStates waits until every accepted command has reached a final
// state, and returns them by command id.
func (a *commandAPI) finalStates(records []*cmdRecord) map[string]downlink.CommandJSON {
	a.t.Helper()
	final := map[string]downlink.CommandJSON{}
	deadline := time.Now().Add(90 * time.Second)
	for _, r := range records {
		for {
			var c downlink.CommandJSON
			st := a.do(rand.IntN(2), "GET", "/v1/commands/"+r.id, nil, &c)
			if st == http.StatusOK && c.State != "queued" && c.State != "sent" {
				final[r.id] = c
				break
			}
			if st != 0 && st != http.StatusOK && st != http.StatusServiceUnavailable {
				a.t.Fatalf("get %s: HTTP %d", r.id, st)
			}
			if time.Now().After(deadline) {
				a.t.Fatalf("command %s of %s still %q (HTTP %d)", r.id, r.device, c.State, st)
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not a wait for the condition
		}
	}
	return final
}

// commandFleet are devices that answer every command and record the order
// they first saw them in.
type commandFleet struct {
	t       *testing.T
	feAddrs []string
	devs    []*cmdDevice
	mu      sync.Mutex
	seen    map[string][]string // device → command ids, first sight only
	saw     map[string]bool     // command ids seen
}

// cmdDevice is a device of a commandFleet, connected to frontend fe.
type cmdDevice struct {
	id string
	mu sync.Mutex
	c  *client.Client
	fe int
}

func (f *commandFleet) add(id string, fe int) {
	d := &cmdDevice{id: id}
	f.dial(d, fe)
	f.devs = append(f.devs, d)
}

// dial connects d to frontend fe, or to the other if fe is down.
func (f *commandFleet) dial(d *cmdDevice, fe int) {
	for {
		c, err := client.Dial(context.Background(), client.Options{
			URL: "ws://" + f.feAddrs[fe] + "/v1/ingest", Token: token(f.t, d.id),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, DialTimeout: 2 * time.Second,
			OnCommand: func(_ context.Context, cmd client.Command) client.Answer {
				f.mu.Lock()
				if !f.saw[cmd.ID] {
					f.saw[cmd.ID] = true
					f.seen[d.id] = append(f.seen[d.id], cmd.ID)
				}
				f.mu.Unlock()
				return client.Answer{Status: "ok", Payload: fmt.Appendf(nil, `{"device":%q,"id":%q}`, d.id, cmd.ID)}
			},
		})
		if err == nil {
			d.mu.Lock()
			d.c, d.fe = c, fe
			d.mu.Unlock()
			return
		}
		fe = 1 - fe // that frontend is down: try the other
		time.Sleep(50 * time.Millisecond)
	}
}

// move moves devices, one at a time, to the other frontend, some staying
// away for a while, until ctx ends.
func (f *commandFleet) move(ctx context.Context) {
	for ctx.Err() == nil {
		time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond) // the devices' pace
		d := f.devs[rand.IntN(len(f.devs))]
		d.mu.Lock()
		c, fe := d.c, d.fe
		d.mu.Unlock()
		c.Close()
		time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
		f.dial(d, 1-fe)
	}
}

func (f *commandFleet) close() {
	for _, d := range f.devs {
		d.c.Close()
	}
}

// checkCommands checks that every accepted command is final: acknowledged
// with its device's answer (and its device saw it), or, for those with a
// short time to live, expired, or cancelled (and its device never saw it);
// and that each device saw its commands first in the order they were
// accepted.
func checkCommands(t *testing.T, records []*cmdRecord, final map[string]downlink.CommandJSON, fleet *commandFleet) {
	t.Helper()
	saw := fleet.saw
	byDevice := map[string]map[string]*cmdRecord{}
	count := map[string]int{}
	for _, r := range records {
		c := final[r.id]
		count[c.State]++
		if byDevice[r.device] == nil {
			byDevice[r.device] = map[string]*cmdRecord{}
		}
		byDevice[r.device][r.id] = r
		switch {
		case r.cancelled:
			if c.State != "cancelled" || saw[r.id] {
				t.Errorf("%s was cancelled, ends %q, seen by its device %v", r.id, c.State, saw[r.id])
			}
		case c.State == "acknowledged":
			want := fmt.Sprintf(`{"device":%q,"id":%q}`, r.device, r.id)
			if !saw[r.id] || c.Status != "ok" || string(c.Result) != want {
				t.Errorf("%s acknowledged with %s %s, seen by its device %v", r.id, c.Status, c.Result, saw[r.id])
			}
		case c.State == "expired" && r.short:
		default:
			t.Errorf("%s (short %v) of %s ends %q", r.id, r.short, r.device, c.State)
		}
	}
	for device, ids := range fleet.seen {
		last := -1
		for _, id := range ids {
			r := byDevice[device][id]
			if r == nil {
				continue // accepted, but its 202 was not seen: the test does not know its place
			}
			if r.seq <= last {
				t.Errorf("%s saw command %d after %d", device, r.seq, last)
			}
			last = r.seq
		}
	}
	t.Logf("final states: %v", count)
	if count["acknowledged"] == 0 {
		t.Fatal("no command was acknowledged")
	}
}

// TestCommandLogBound: --command.max-bytes bounds the command home's log;
// a quarter of it holds the commands the home keeps, each counting room
// for its device's answer: with 256 KiB, three commands of 4 KiB are
// accepted and the fourth is refused, 503 full.
func TestCommandLogBound(t *testing.T) {
	mt, fe, addr := commandPair(t, t.TempDir(), 30, "--command.max-bytes", "262144")
	defer stopAll(t, fe, mt.tierProc)
	a := newCommandAPI(t, []string{addr})
	body := map[string]any{"name": "n", "payload": strings.Repeat("x", 4<<10)}
	for i := 0; ; i++ {
		var e downlink.ErrorBody
		st := a.do(0, "POST", "/v1/devices/d1/commands", body, &e)
		if st == http.StatusServiceUnavailable && e.Code == downlink.CodeFull {
			if i != 3 {
				t.Fatalf("refused full after %d commands of 4 KiB, want 3", i)
			}
			return
		}
		if st != http.StatusAccepted || i >= 3 {
			t.Fatalf("submit %d: HTTP %d %+v", i, st, e)
		}
	}
}

// TestCommandLogRepair: --wal.repair covers the command home's logs too.
// A command log whose segment was cut short is refused at start with an
// error that names the repair flag; a middletier started again with
// --wal.repair repairs it and serves. Before, the command logs were opened
// without the tier's WAL options, and --wal.repair left the middletier
// refusing to start for good.
func TestCommandLogRepair(t *testing.T) {
	dir := t.TempDir()
	mt := middletierProc(t, "mt-0", dir, "--command.addr", endpoint(t))
	mt.start()
	logsOnFailure(t, 30, mt.tierProc)
	stopOrFail(t, mt.tierProc)
	seg := filepath.Join(dir, "commands", "00000000000000000001")
	if err := os.Truncate(seg, 4096); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runBin(t, "", nil, mt.args...)
	if code != 1 || !strings.Contains(errOut, "open command wal") || !strings.Contains(errOut, "repair option") ||
		!strings.Contains(errOut, "(--wal.repair repairs it)") {
		t.Fatalf("a middletier on a cut command log: exit %d, printed\n%s\nwant exit 1 and the log refused", code, errOut)
	}
	mt.args = append(mt.args, "--wal.repair")
	mt.start()
	if !strings.Contains(mt.logs.String(), "repaired a truncated segment") || !strings.Contains(mt.logs.String(), seg[:len(seg)-len("/00000000000000000001")]) {
		t.Errorf("the command log was not said to be repaired:\n%s", mt.logs.String())
	}
	stopOrFail(t, mt.tierProc)
}

// commandPair starts a middletier with a command home (its data in mtDir,
// flags mtFlags) and a frontend that reaches it, and returns them with the
// frontend's address; on failure their last lines of log are shown. The
// caller stops them.
func commandPair(t *testing.T, mtDir string, lines int, mtFlags ...string) (*mtProc, *tierProc, string) {
	t.Helper()
	home := endpoint(t)
	mt := middletierProc(t, "mt-0", mtDir, append([]string{"--command.addr", home}, mtFlags...)...)
	addr := loopback(t)
	fe := frontendProc(t, "fe-0", addr, t.TempDir(), writeSecret(t), "--uplink.middletiers", mt.ingest, "--commands.homes", home)
	mt.start()
	fe.start()
	logsOnFailure(t, lines, mt.tierProc, fe)
	return mt, fe, addr
}
