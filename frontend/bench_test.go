package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/wal"
)

// loadSpec describes a device fleet for the load generator.
type loadSpec struct {
	Addr     string        // server host:port
	Conns    int           // connections
	Window   int           // frames in flight per connection
	Rate     float64       // frames per second per connection; 0 = as fast as the window allows
	Size     int           // message size in bytes
	Duration time.Duration // how long to send
	Total    int64         // or: stop after this many frames in all (when > 0)
}

type loadResult struct {
	Acked     int64
	Elapsed   time.Duration
	Latencies []time.Duration `json:"-"`
	P50, P99  time.Duration
	P999      time.Duration
	Errors    int64
}

// runLoad drives spec.Conns raw WebSocket devices (no auth: the server runs
// with InsecureNoAuth on loopback) and measures ack latency per frame, from
// the write of the frame to the read of the ack that covers it.
func runLoad(spec loadSpec) (loadResult, error) {
	var (
		mu      sync.Mutex
		lats    []time.Duration
		acked   atomic.Int64
		errs    atomic.Int64
		sent    atomic.Int64
		wg      sync.WaitGroup
		conns   = make([]*websocket.Conn, spec.Conns)
		dialSem = make(chan struct{}, 64)
	)
	pad := strings.Repeat("x", max(spec.Size-len(`{"id":"0000000000","v":1.25,"p":""}`), 0))
	for i := range conns {
		wg.Go(func() {
			dialSem <- struct{}{}
			defer func() { <-dialSem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, fmt.Sprintf("ws://%s/v1/ingest?device=dev-%d", spec.Addr, i), nil)
			if err != nil {
				errs.Add(1)
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if n := errs.Load(); n > 0 {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
		return loadResult{}, fmt.Errorf("%d dials failed", n)
	}
	start := time.Now()
	stopAt := start.Add(spec.Duration)
	for i, c := range conns {
		wg.Go(func() {
			var (
				window  = make(chan struct{}, spec.Window)
				sentAt  = make([]time.Time, 0, 1024)
				sentMu  sync.Mutex
				local   = make([]time.Duration, 0, 1024)
				readerD = make(chan struct{})
			)
			go func() {
				defer close(readerD)
				var ackedSeq uint64
				for {
					_, b, err := c.Read(context.Background())
					if err != nil {
						return
					}
					now := time.Now()
					if !bytes.HasPrefix(b, []byte(`{"type":"ack","seq":`)) {
						fmt.Fprintf(os.Stderr, "unexpected frame: %s\n", b)
						errs.Add(1)
						continue
					}
					rest := b[len(`{"type":"ack","seq":`):]
					end := bytes.IndexAny(rest, ",}")
					seq, _ := strconv.ParseUint(string(rest[:end]), 10, 64)
					sentMu.Lock()
					for ; ackedSeq < seq; ackedSeq++ {
						local = append(local, now.Sub(sentAt[ackedSeq]))
						acked.Add(1)
						<-window
					}
					sentMu.Unlock()
				}
			}()
			var tick *time.Ticker
			if spec.Rate > 0 {
				// Spread the fleet's sends evenly over the first interval.
				interval := time.Duration(float64(time.Second) / spec.Rate)
				first := time.NewTimer(time.Duration(i) * interval / time.Duration(spec.Conns))
				<-first.C
				tick = time.NewTicker(interval)
				defer tick.Stop()
			}
			msg := make([]byte, 0, spec.Size+32)
			for n := 0; ; n++ {
				if time.Now().After(stopAt) || spec.Total > 0 && sent.Add(1) > spec.Total {
					break
				}
				window <- struct{}{}
				msg = fmt.Appendf(msg[:0], `{"id":"%010d","v":1.25,"p":"%s"}`, n, pad)
				sentMu.Lock()
				sentAt = append(sentAt, time.Now())
				sentMu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.Write(ctx, websocket.MessageText, msg)
				cancel()
				if err != nil {
					fmt.Fprintf(os.Stderr, "write: %v\n", err)
					errs.Add(1)
					break
				}
				if tick != nil {
					<-tick.C
				}
			}
			// Wait for the last acks (bounded), then close.
			deadline := time.Now().Add(10 * time.Second)
			for len(window) > 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			c.Close(websocket.StatusNormalClosure, "")
			<-readerD
			sentMu.Lock()
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
			sentMu.Unlock()
		})
	}
	wg.Wait()
	r := loadResult{Acked: acked.Load(), Elapsed: time.Since(start), Errors: errs.Load(), Latencies: lats}
	if len(lats) > 0 {
		slices.Sort(lats)
		q := func(p float64) time.Duration { return lats[min(int(p*float64(len(lats))), len(lats)-1)] }
		r.P50, r.P99, r.P999 = q(0.50), q(0.99), q(0.999)
	}
	return r, nil
}

func benchServer(b *testing.B, opts Options) *testServer {
	opts.InsecureNoAuth = true
	opts.Rate = 1e9
	opts.Burst = 1e9
	// The WAL is never released in a benchmark: give it room.
	return startServer(b, opts, wal.Options{MaxBytes: 8 << 30, SegmentBytes: 4 << 20})
}

// BenchmarkPipelined: 100 connections, 16 frames in flight each, 200-byte
// messages, one message per frame. Client and server share the machine.
func BenchmarkPipelined(b *testing.B) {
	raiseFileLimit(b, 4096)
	ts := benchServer(b, Options{})
	b.ResetTimer()
	r, err := runLoad(loadSpec{Addr: ts.addr, Conns: 100, Window: 16, Size: 200, Duration: time.Hour, Total: int64(b.N)})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if r.Errors > 0 || r.Acked != int64(b.N) {
		b.Fatalf("acked %d of %d, %d errors", r.Acked, b.N, r.Errors)
	}
	b.ReportMetric(float64(r.Acked)/r.Elapsed.Seconds(), "acked_msgs/s")
	b.ReportMetric(float64(r.P50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(r.P99.Microseconds()), "p99_µs")
	b.ReportMetric(0, "ns/op")
}

// loadgenEnv makes the test binary a load generator, so that the server's
// memory can be measured in a process of its own.
const loadgenEnv = "INGEST_FRONTEND_LOADGEN"

func init() {
	spec := os.Getenv(loadgenEnv)
	if spec == "" {
		return
	}
	var s loadSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	raiseFileLimit(exitTB{}, uint64(s.Conns)+1000)
	r, err := runLoad(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", out)
	os.Exit(0)
}

// exitTB lets raiseFileLimit run outside a test.
type exitTB struct{ testing.TB }

func (exitTB) Helper()                  {}
func (exitTB) Fatal(a ...any)           { fmt.Fprintln(os.Stderr, a...); os.Exit(1) }
func (exitTB) Skipf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...); os.Exit(1) }

// BenchmarkTenThousandDevices: 10,000 connections each sending one 200-byte
// message per second for 20 s, from a separate load-generator process.
// Reports ack latency quantiles and the server's heap and stack bytes per
// connection.
func BenchmarkTenThousandDevices(b *testing.B) {
	const conns = 10000
	raiseFileLimit(b, conns+4096)
	ts := benchServer(b, Options{})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	spec, _ := json.Marshal(loadSpec{Addr: ts.addr, Conns: conns, Window: 4, Rate: 1, Size: 200, Duration: 20 * time.Second})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), loadgenEnv+"="+string(spec))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	b.ResetTimer()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	waitFor(b, "all devices connected", 60*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.connections) == conns
	})
	// Measure in steady state, while every device is sending.
	waitFor(b, "steady state", 60*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.acked) > 5*conns
	})
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	perConn := (float64(during.HeapInuse+during.StackInuse) - float64(before.HeapInuse+before.StackInuse)) / conns
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load generator: %v\n%s", err, stderr.String())
	}
	b.StopTimer()
	line := stdout.String()
	i := strings.Index(line, "RESULT ")
	if i < 0 {
		b.Fatalf("no result from load generator:\n%s\n%s", line, stderr.String())
	}
	var r loadResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(line[i+len("RESULT "):])), &r); err != nil {
		b.Fatal(err)
	}
	if r.Errors > 0 {
		b.Fatalf("%d errors in the load generator", r.Errors)
	}
	b.ReportMetric(float64(r.Acked)/r.Elapsed.Seconds(), "acked_msgs/s")
	b.ReportMetric(float64(r.P50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(r.P99.Microseconds()), "p99_µs")
	b.ReportMetric(float64(r.P999.Microseconds()), "p99.9_µs")
	b.ReportMetric(perConn, "server_bytes/conn")
	b.ReportMetric(0, "ns/op")
}
