package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/frontendtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var secret = []byte("0123456789abcdef0123456789abcdef-loadgen-test")

type server = frontendtest.Server

// start serves a frontend on addr ("127.0.0.1:0" for any port) with its WAL
// in dir. Without auth keys in opts it runs without auth.
func start(t *testing.T, addr, dir string, opts frontend.Options) *server {
	t.Helper()
	opts.ID = "fe-loadgen-test"
	opts.InsecureNoAuth = len(opts.Auth.HS256Secrets) == 0
	if opts.Rate == 0 {
		opts.Rate, opts.Burst = 1e9, 1e9
	}
	opts.DrainWindow = 20 * time.Millisecond
	return frontendtest.Start(t, addr, dir, opts, wal.Options{})
}

// stored returns every message in the WAL in dir, in WAL order, by device.
func stored(t *testing.T, dir string) map[string][][]byte {
	t.Helper()
	out := map[string][][]byte{}
	for _, env := range testkit.WALEnvelopes(t, dir) {
		out[env.Device] = append(out[env.Device], env.Payload)
	}
	return out
}

// message is a test payload: the device and message numbers, the device
// time, and padding to size bytes in all.
func message(size int) func(dst []byte, dev int, seq uint64, ts int64) []byte {
	return func(dst []byte, dev int, seq uint64, ts int64) []byte {
		start := len(dst)
		dst = fmt.Appendf(dst, `{"dev":%d,"seq":%d,"ts":%d,"p":"`, dev, seq, ts)
		for len(dst)-start < size-2 {
			dst = append(dst, 'x')
		}
		return append(dst, `"}`...)
	}
}

// settled collects OnSettle calls.
type settled struct {
	mu  sync.Mutex
	got map[int][]Msg
}

func (s *settled) add(dev int, ms []Msg, now int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.got == nil {
		s.got = map[int][]Msg{}
	}
	s.got[dev] = append(s.got[dev], ms...)
}

// checkSettled checks that every device settled messages 1..n once each,
// in order, and returns how many were acknowledged.
func (s *settled) check(t *testing.T, f *Fleet, devices int) int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	acked := 0
	for dev := range devices {
		n, notAcked := f.Acked(dev)
		ms := s.got[dev]
		if uint64(len(ms)) != n {
			t.Fatalf("device %d: %d messages settled, Acked says %d", dev, len(ms), n)
		}
		var not []uint64
		for i, m := range ms {
			if m.Seq != uint64(i+1) {
				t.Fatalf("device %d: settled message %d as number %d", dev, m.Seq, i+1)
			}
			if m.Code != "" {
				not = append(not, m.Seq)
				continue
			}
			acked++
			if m.Sent < m.Due || m.Sent == 0 {
				t.Fatalf("device %d: message %d due %d, sent %d", dev, m.Seq, m.Due, m.Sent)
			}
		}
		if fmt.Sprint(not) != fmt.Sprint(notAcked) {
			t.Fatalf("device %d: not acknowledged %v, Acked says %v", dev, not, notAcked)
		}
	}
	return acked
}

// A closed loop against a real frontend: every frame the fleet encodes is
// one the server reads as the message it holds (the WAL has each payload
// byte for byte, in order), and every message is acknowledged once.
func TestClosedLoop(t *testing.T) {
	for _, coalesce := range []bool{false, true} {
		t.Run(fmt.Sprintf("coalesce=%v", coalesce), func(t *testing.T) {
			s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{})
			var got settled
			const devices, total = 5, 2000
			opts := Options{URLs: []string{s.URL()}, Devices: devices, Insecure: true, Window: 8, Total: total,
				Duration: time.Minute, Coalesce: coalesce, Message: message(200), OnSettle: got.add}
			f, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if n, err := f.Connect(context.Background()); err != nil || n != devices {
				t.Fatalf("connected %d: %v", n, err)
			}
			f.Send(context.Background())
			if !f.Drain(context.Background(), 10*time.Second) {
				t.Fatal("not drained")
			}
			f.Close()
			st := f.Stats()
			if st.Sent != total || st.Acked != total || st.Rejected != 0 || len(st.Errors) != 0 || st.Connected != devices {
				t.Fatalf("stats %+v", st)
			}
			if n := got.check(t, f, devices); n != total {
				t.Fatalf("%d acknowledged, want %d", n, total)
			}
			checkStoredAsSettled(t, s, &got, devices, f.ID, true)
		})
	}
}

// Frames of every length encoding (7-bit, 16-bit, 64-bit) reach the server
// intact; a message over the server's limit is rejected with its error
// frame, which the fleet reads and settles the message with.
func TestFrameLengths(t *testing.T) {
	// The messages are padded with one string: its limit is raised past
	// the largest, so that only the message limit is met.
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{MaxMessageBytes: 70_000, MaxFrameBytes: 256 << 10, MaxStringBytes: 100_000})
	sizes := []int{16, 125, 126, 127, 200, 65535, 65536, 69_999, 70_001, 100_000}
	var got settled
	f := connect(t, Options{URLs: []string{s.URL()}, Devices: 1, Insecure: true, Window: 4, Total: int64(len(sizes)),
		Duration: time.Minute, Coalesce: true, OnSettle: got.add,
		Message: func(dst []byte, _ int, seq uint64, ts int64) []byte { return message(sizes[seq-1])(dst, 0, seq, ts) }})
	f.Send(context.Background())
	if !f.Drain(context.Background(), 10*time.Second) {
		t.Fatal("not drained")
	}
	f.Close()
	st := f.Stats()
	if st.Sent != int64(len(sizes)) || st.Acked != int64(len(sizes)-2) || st.Rejected != 2 || st.Errors[protocol.CodeTooLarge] != 2 || len(st.Errors) != 1 {
		t.Fatalf("stats %+v", st)
	}
	got.check(t, f, 1)
	if _, not := f.Acked(0); fmt.Sprint(not) != "[9 10]" {
		t.Fatalf("not acknowledged: %v, want messages 9 and 10", not)
	}
	for _, m := range got.got[0] {
		if want := map[bool]string{true: protocol.CodeTooLarge, false: ""}[sizes[m.Seq-1] > 70_000]; m.Code != want {
			t.Fatalf("message %d of %d bytes settled with %q, want %q", m.Seq, sizes[m.Seq-1], m.Code, want)
		}
	}
	s.Stop(t)
	payloads := stored(t, s.Dir)[f.ID(0)]
	if len(payloads) != len(sizes)-2 {
		t.Fatalf("%d stored, want %d", len(payloads), len(sizes)-2)
	}
	for i, p := range payloads {
		m := got.got[0][i]
		if want := message(sizes[i])(nil, 0, m.Seq, m.TS); !bytes.Equal(p, want) {
			t.Fatalf("message %d of %d bytes stored as %d bytes", i+1, sizes[i], len(p))
		}
	}
}

// A device presents its token as "Authorization: Bearer"; the server
// stores its messages under the token's subject. A token the server does
// not accept fails the first dial with HTTP 401.
func TestToken(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{Auth: auth.Options{HS256Secrets: [][]byte{secret}}})
	sign := func(key []byte) func(int) (string, error) {
		return func(i int) (string, error) {
			return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
				Subject: "tok-" + strconv.Itoa(i), ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(key)
		}
	}
	st, err := Run(context.Background(), Options{URLs: []string{s.URL()}, Devices: 3, Token: sign(secret),
		DeviceID: func(i int) string { return "tok-" + strconv.Itoa(i) }, Window: 4, Total: 30, Duration: time.Minute,
		Message: message(100)}, 10*time.Second)
	if err != nil || st.Acked != 30 || len(st.Errors) != 0 {
		t.Fatalf("stats %+v: %v", st, err)
	}
	_, err = Run(context.Background(), Options{URLs: []string{s.URL()}, Devices: 1, Token: sign([]byte("another secret of at least 32 bytes")),
		Total: 1, Duration: time.Minute, Message: message(100)}, time.Second)
	var he *HandshakeError
	if !errors.As(err, &he) || he.Status != 401 || he.Code != protocol.CodeUnauthorized {
		t.Fatalf("dial with a bad token: %v", err)
	}
	s.Stop(t)
	all := stored(t, s.Dir)
	for i := range 3 {
		if n := len(all["tok-"+strconv.Itoa(i)]); n == 0 {
			t.Fatalf("nothing stored for tok-%d: %v", i, all)
		}
	}
}

// Paced devices send at their rate, from phases spread over the period;
// the server's pings in the silences between are answered (a pong missing
// for PongTimeout would close the connection: an error here).
func TestPaced(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{PingInterval: 20 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	var got settled
	const devices, rate = 10, 4.0
	dur := 1500 * time.Millisecond
	f := connect(t, Options{URLs: []string{s.URL()}, Devices: devices, Insecure: true, Rate: rate, Duration: dur,
		Message: message(100), OnSettle: got.add})
	f.Send(context.Background())
	f.Drain(context.Background(), 5*time.Second)
	f.Close()
	st := f.Stats()
	want := int64(devices * rate * dur.Seconds())
	if st.Sent != want || st.Acked != want || st.Skipped != 0 || len(st.Errors) != 0 {
		t.Fatalf("stats %+v, want %d sent and acknowledged", st, want)
	}
	got.check(t, f, devices)
	interval := int64(time.Second / rate)
	for dev, ms := range got.got {
		for k, m := range ms {
			if due := st.Start + int64(k)*interval + interval*int64(dev)/devices; m.Due != due {
				t.Fatalf("device %d message %d due at %d, want %d", dev, m.Seq, m.Due, due)
			}
		}
	}
}

// A paced fleet of fewer devices than pacers (Options.Pacers, 4 by
// default) sends for its duration and then stops, as a larger one does:
// a pacer with no device of its own has nothing to pace.
func TestPacedFewerDevicesThanPacers(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{})
	var got settled
	const devices, rate = 3, 20.0
	dur := 500 * time.Millisecond
	f := connect(t, Options{URLs: []string{s.URL()}, Devices: devices, Insecure: true, Rate: rate, Duration: dur,
		Message: message(100), OnSettle: got.add})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sent := make(chan struct{})
	go func() { defer close(sent); f.Send(ctx) }()
	select {
	case <-sent:
	case <-time.After(20 * time.Second):
		t.Fatalf("Send of a %v run of %d devices at %g/s had not returned after 20 s (sent %d)", dur, devices, rate, f.Stats().Sent)
	}
	f.Drain(context.Background(), 5*time.Second)
	f.Close()
	st := f.Stats()
	if want := int64(devices * rate * dur.Seconds()); st.Sent != want || st.Acked != want {
		t.Fatalf("stats %+v, want %d sent and acknowledged", st, want)
	}
	got.check(t, f, devices)
}

// Devices reconnect when their frontend goes away and send again what was
// not acknowledged: after a restart on the same address, and after the
// server closes the connection for the rate limit (with a retry hint), every
// acknowledged message is stored, in order, and no message is settled
// twice.
func TestReconnect(t *testing.T) {
	t.Run("restart", func(t *testing.T) {
		dir1, dir2 := t.TempDir(), t.TempDir()
		s := start(t, "127.0.0.1:0", dir1, frontend.Options{})
		var got settled
		const devices = 4
		f := connect(t, Options{URLs: []string{s.URL()}, Devices: devices, Insecure: true, Window: 8, Duration: time.Minute,
			Reconnect: true, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			Message: message(100), OnSettle: got.add})
		stop := sendInBackground(f)
		testkit.WaitFor(t, "acks", 20*time.Second, func() bool { return f.Stats().Acked > 1000 })
		s.Stop(t)
		s2 := start(t, s.Addr, dir2, frontend.Options{})
		testkit.WaitFor(t, "reconnects", 20*time.Second, func() bool { return f.Stats().Reconnects >= devices })
		before := f.Stats().Acked
		testkit.WaitFor(t, "acks after the restart", 20*time.Second, func() bool { return f.Stats().Acked > before+1000 })
		stop()
		if !f.Drain(context.Background(), 10*time.Second) {
			t.Fatal("not drained")
		}
		f.Close()
		st := f.Stats()
		t.Logf("%+v", st)
		if st.Errors["close_1001"] != devices || st.Errors[CodeClosed] != 0 || st.Acked != st.Sent || st.Resent == 0 {
			t.Fatalf("stats %+v", st)
		}
		got.check(t, f, devices)
		s2.Stop(t)
		checkStored(t, f, &got, devices, stored(t, dir1), stored(t, dir2))
	})
	t.Run("rate limited", func(t *testing.T) {
		// A rate any machine exceeds: a device with a window of 16 sends
		// 17 messages as soon as the first is acknowledged, and more than
		// rate a second for as long as it runs.
		const rate, burst = 10, 16
		s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{Rate: rate, Burst: burst, MaxBatchMessages: burst})
		var got settled
		began := time.Now()
		st, err := Run(context.Background(), Options{URLs: []string{s.URL()}, Devices: 2, Insecure: true, Window: 16,
			Duration: 1500 * time.Millisecond, Reconnect: true, Message: message(50), OnSettle: got.add}, 10*time.Second)
		elapsed := time.Since(began)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%+v", st)
		if st.Errors[protocol.CodeRateLimited] == 0 || st.Errors["close_1013"] != st.Errors[protocol.CodeRateLimited] || st.Reconnects == 0 || st.Acked != st.Sent {
			t.Fatalf("stats %+v", st)
		}
		s.Stop(t)
		all := stored(t, s.Dir)
		for dev := range 2 {
			// Messages the server refused for the rate were never stored:
			// each is stored once, in order.
			var seqs []uint64
			for _, p := range all["dev-"+strconv.Itoa(dev)] {
				seqs = append(seqs, seqOf(t, p))
			}
			for i, s := range seqs {
				if s != uint64(i+1) {
					t.Fatalf("device %d: stored %d as message %d", dev, s, i+1)
				}
			}
			if uint64(len(seqs)) != uint64(len(got.got[dev])) {
				t.Fatalf("device %d: %d stored, %d acknowledged", dev, len(seqs), len(got.got[dev]))
			}
			// The server took no more than the bucket allows.
			if allowed := burst + rate*elapsed.Seconds(); float64(len(seqs)) > allowed {
				t.Fatalf("device %d: %d stored in %v, over the %v the rate allows", dev, len(seqs), elapsed, allowed)
			}
		}
	})
}

// checkStoredAsSettled stops s and checks that its WAL holds, for each of
// the devices (named by id), the messages settled as acknowledged, in
// order, each as message(200) made it; with increasingTS, that their
// device times increase too.
func checkStoredAsSettled(t *testing.T, s *server, got *settled, devices int, id func(int) string, increasingTS bool) {
	t.Helper()
	s.Stop(t)
	all := stored(t, s.Dir)
	gen := message(200)
	for dev := range devices {
		got.mu.Lock()
		ms := got.got[dev]
		got.mu.Unlock()
		payloads := all[id(dev)]
		if len(payloads) != len(ms) {
			t.Fatalf("device %d: %d stored, %d acknowledged", dev, len(payloads), len(ms))
		}
		for i, m := range ms {
			if want := gen(nil, dev, m.Seq, m.TS); !bytes.Equal(payloads[i], want) {
				t.Fatalf("device %d message %d stored as %s, want %s", dev, m.Seq, payloads[i], want)
			}
			if increasingTS && i > 0 && m.TS <= ms[i-1].TS {
				t.Fatalf("device %d: device time %d after %d", dev, m.TS, ms[i-1].TS)
			}
		}
	}
}

// connect makes a fleet of opts and connects its devices; the fleet is
// closed when the test ends.
func connect(t *testing.T, opts Options) *Fleet {
	t.Helper()
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	if _, err := f.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

// sendInBackground runs f.Send until stop is called, which returns once
// Send has.
func sendInBackground(f *Fleet) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan struct{})
	go func() { defer close(sent); f.Send(ctx) }()
	return func() {
		cancel()
		<-sent
	}
}

// checkStored checks that every acknowledged message is in one of the WALs
// and that each WAL holds a device's messages in order (repeats of
// messages sent again allowed).
func checkStored(t *testing.T, f *Fleet, got *settled, devices int, wals ...map[string][][]byte) {
	t.Helper()
	for dev := range devices {
		have := map[uint64]bool{}
		for _, w := range wals {
			var last uint64
			for _, p := range w[f.ID(dev)] {
				s := seqOf(t, p)
				if s > last+1 && last > 0 {
					t.Fatalf("device %d: message %d stored after %d", dev, s, last)
				}
				last = max(last, s)
				have[s] = true
			}
		}
		for _, m := range got.got[dev] {
			if m.Code == "" && !have[m.Seq] {
				t.Fatalf("device %d: message %d acknowledged, not stored", dev, m.Seq)
			}
		}
	}
}

func seqOf(t *testing.T, p []byte) uint64 {
	t.Helper()
	i := bytes.Index(p, []byte(`"seq":`))
	if i < 0 {
		t.Fatalf("no seq in %s", p)
	}
	rest := p[i+len(`"seq":`):]
	n, err := strconv.ParseUint(string(rest[:bytes.IndexByte(rest, ',')]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A device whose connection ends without Reconnect stops and settles what
// it had in flight as closed; Close settles what is still in flight the
// same way.
func TestNoReconnect(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{})
	var got settled
	f := connect(t, Options{URLs: []string{s.URL()}, Devices: 2, Insecure: true, Window: 4, Duration: time.Minute,
		Message: message(100), OnSettle: got.add})
	stop := sendInBackground(f)
	testkit.WaitFor(t, "acks", 20*time.Second, func() bool { return f.Stats().Acked > 100 })
	s.Stop(t)
	testkit.WaitFor(t, "both devices stopped", 20*time.Second, func() bool { return f.Stats().Errors["close_1001"] == 2 })
	stop()
	f.Close()
	st := f.Stats()
	if st.Reconnects != 0 || st.Acked+st.Rejected != st.Sent || st.Errors[CodeClosed] != st.Rejected {
		t.Fatalf("stats %+v", st)
	}
	got.check(t, f, 2)
}

// Dialing an address nothing listens on fails Connect.
func TestConnectFails(t *testing.T) {
	ln := testkit.Listen(t)
	addr := ln.Addr().String()
	ln.Close()
	f, err := New(Options{URLs: []string{"ws://" + addr + protocol.Path}, Devices: 3, Duration: time.Second, Message: message(10)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := f.Connect(context.Background()); n != 0 || err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("connected %d: %v", n, err)
	}
	if st := f.Stats(); st.DialFailed != 3 || st.Connected != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestOptions(t *testing.T) {
	good := Options{URLs: []string{"ws://127.0.0.1:1/v1/ingest"}, Devices: 1, Duration: time.Second, Message: message(10)}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	for _, mod := range []func(*Options){
		func(o *Options) { o.URLs = nil },
		func(o *Options) { o.URLs = []string{"http://x/v1/ingest"} },
		func(o *Options) { o.URLs = []string{"ws:///v1/ingest"} },
		func(o *Options) { o.Devices = 0 },
		func(o *Options) { o.Message = nil },
		func(o *Options) { o.Duration = 0 },
		func(o *Options) { o.Rate = -1 },
	} {
		o := good
		mod(&o)
		if _, err := New(o); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
}
