package frontend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/loadgen"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

func benchServer(b *testing.B, opts Options) *testServer {
	opts.InsecureNoAuth = true
	opts.Rate = 1e9
	opts.Burst = 1e9
	// The WAL is never released in a benchmark: give it room.
	// BENCH_WAL_NOPREALLOC=1 runs it with segments that grow as they are
	// written, for comparison.
	return startServer(b, opts, wal.Options{MaxBytes: 8 << 30, SegmentBytes: 4 << 20,
		NoPreallocate: os.Getenv("BENCH_WAL_NOPREALLOC") != ""})
}

// BenchmarkPipelined: 100 connections, 16 frames in flight each, 200-byte
// messages, one message per frame, each frame its own write syscall. The
// load generator (internal/loadgen, the bench command's) runs in a process
// of its own, on the same 2 cores.
func BenchmarkPipelined(b *testing.B) {
	benchPipelined(b, false)
}

// BenchmarkPipelinedCoalesced is BenchmarkPipelined with a generator that
// writes the frames an ack lets it send with one write syscall (a device
// with a queue). The server does the same work per message; the generator
// costs far less CPU per frame.
func BenchmarkPipelinedCoalesced(b *testing.B) {
	benchPipelined(b, true)
}

func benchPipelined(b *testing.B, coalesce bool) {
	raiseFileLimit(b, 4096)
	ts := benchServer(b, Options{})
	b.ResetTimer()
	r := runLoadProcess(b, ts, loadSpec{Addr: ts.addr, Conns: 100, Window: 16, Size: 200,
		Duration: time.Hour, Total: int64(b.N), Coalesce: coalesce}, nil)
	b.StopTimer()
	if r.Acked != int64(b.N) {
		b.Fatalf("acked %d of %d", r.Acked, b.N)
	}
	b.ReportMetric(float64(r.Acked)/r.Elapsed.Seconds(), "acked_msgs/s")
	b.ReportMetric(float64(r.P50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(r.P99.Microseconds()), "p99_µs")
	b.ReportMetric(0, "ns/op")
}

// loadSpec describes a device fleet for the load generator; it goes to the
// child process as JSON.
type loadSpec struct {
	Addr     string        // server host:port
	Conns    int           // connections
	Window   int           // frames in flight per connection
	Rate     float64       // frames per second per connection; 0 = as fast as the window allows
	Size     int           // message size in bytes
	Duration time.Duration // how long to send
	Total    int64         // or: stop after this many frames in all (when > 0)
	Warmup   time.Duration // frames sent this early are acked but not in the quantiles
	Coalesce bool          // loadgen.Options.Coalesce
	Pacers   int           // goroutines pacing a Rate-limited fleet; default 4
}

type loadResult struct {
	Acked    int64
	Measured int64 // frames in the quantiles (sent after the warm-up)
	Elapsed  time.Duration
	P50, P99 time.Duration
	P999     time.Duration
	Max      time.Duration
	Errors   int64
	Skipped  int64         // paced sends skipped because the window was full
	PaceP99  time.Duration // how late the pacers wrote, vs the schedule
	Seconds  []secStat     // per second of sending, by send time
	Proc     []string      // per-second runtime stats of the generator
}

// secStat summarises the latencies of the frames sent in one second of the run.
type secStat struct {
	N             int
	P50, P99, Max time.Duration
}

type sample struct{ at, lat time.Duration } // since start; ack latency

// runLoad drives spec.Conns devices (no auth: the server runs with
// InsecureNoAuth on loopback) and measures each frame's ack latency, from
// just before the write syscall that sends it to just after the read that
// returns the ack covering it. The generator's own delay in waking up for
// the ack is therefore included; its pacing delay (how late a paced frame
// is written) is not, and is reported apart as PaceP99. A paced frame due
// while the window is full is skipped and counted.
func runLoad(spec loadSpec) (loadResult, error) {
	pad := bytes.Repeat([]byte("x"), max(spec.Size-len(`{"id":"0000000000","v":1.25,"p":""}`), 0))
	samples := make([][]sample, spec.Conns) // each written by its device's goroutine only
	lags := make([][]time.Duration, spec.Conns)
	var start, warm int64 // on the fleet's clock, set before sending begins
	fl, err := loadgen.New(loadgen.Options{
		URLs: []string{"ws://" + spec.Addr + protocol.Path}, Devices: spec.Conns, Insecure: true, MaxDials: 64,
		Window: spec.Window, Rate: spec.Rate, Duration: spec.Duration, Total: spec.Total,
		Coalesce: spec.Coalesce, Pacers: spec.Pacers, DialTimeout: 30 * time.Second,
		Message: func(dst []byte, _ int, seq uint64, _ int64) []byte {
			var num [20]byte
			d := strconv.AppendUint(num[:0], seq-1, 10)
			dst = append(dst, `{"id":"`...)
			dst = append(dst, "0000000000"[:max(10-len(d), 0)]...)
			dst = append(dst, d...)
			dst = append(dst, `","v":1.25,"p":"`...)
			dst = append(dst, pad...)
			return append(dst, `"}`...)
		},
		OnSettle: func(dev int, ms []loadgen.Msg, now int64) {
			for _, m := range ms {
				if m.Code != "" {
					continue
				}
				if m.Sent >= warm {
					samples[dev] = append(samples[dev], sample{time.Duration(m.Sent - start), time.Duration(now - m.Sent)})
				}
				if spec.Rate > 0 {
					lags[dev] = append(lags[dev], time.Duration(m.Sent-m.Due))
				}
			}
		},
	})
	if err != nil {
		return loadResult{}, err
	}
	defer fl.Close()
	if _, err := fl.Connect(context.Background()); err != nil {
		return loadResult{}, err
	}
	if st := fl.Stats(); st.DialFailed > 0 {
		return loadResult{}, fmt.Errorf("%d dials failed: %w", st.DialFailed, st.DialErr)
	}

	procStop, procDone := make(chan struct{}), make(chan struct{})
	var procLines []string
	go func() {
		defer close(procDone)
		ps := newProcStats(nil)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				procLines = append(procLines, ps.line())
			case <-procStop:
				return
			}
		}
	}()
	start = fl.Now()
	warm = start + int64(spec.Warmup)
	fl.Send(context.Background())
	// Wait until every frame written is acknowledged (bounded), then close
	// every connection.
	fl.Drain(context.Background(), 10*time.Second)
	fl.Close()
	close(procStop)
	<-procDone

	st := fl.Stats()
	var all []sample
	for _, s := range samples {
		all = append(all, s...)
	}
	var errs int64
	for code, n := range st.Errors {
		fmt.Fprintf(os.Stderr, "%s: %d\n", code, n)
		errs += n
	}
	r := loadResult{Acked: st.Acked, Elapsed: time.Duration(st.LastAck - st.Start), Errors: errs, Skipped: st.Skipped,
		Measured: int64(len(all)), Proc: procLines, Seconds: perSecond(all)}
	lats := make([]time.Duration, len(all))
	for i, s := range all {
		lats[i] = s.lat
	}
	r.P50, r.P99, r.P999, r.Max = quantiles(lats)
	if lag := slices.Concat(lags...); len(lag) > 0 {
		_, r.PaceP99, _, _ = quantiles(lag)
	}
	return r, nil
}

// quantiles sorts d and returns its p50, p99, p99.9 and maximum.
func quantiles(d []time.Duration) (p50, p99, p999, mx time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(int(p*float64(len(d))), len(d)-1)] }
	return q(.5), q(.99), q(.999), d[len(d)-1]
}

func perSecond(ss []sample) []secStat {
	var buckets [][]time.Duration
	for _, s := range ss {
		i := int(s.at / time.Second)
		for len(buckets) <= i {
			buckets = append(buckets, nil)
		}
		buckets[i] = append(buckets[i], s.lat)
	}
	out := make([]secStat, len(buckets))
	for i, b := range buckets {
		if len(b) == 0 {
			continue
		}
		p50, p99, _, mx := quantiles(b)
		out[i] = secStat{N: len(b), P50: p50, P99: p99, Max: mx}
	}
	return out
}

// loadgenEnv makes the test binary a load generator, so that the server is
// measured in a process of its own.
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
	if f := os.Getenv(loadgenEnv + "_CPUPROFILE"); f != "" {
		w, err := os.Create(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		pprof.StartCPUProfile(w)
	}
	r, err := runLoad(s)
	pprof.StopCPUProfile()
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

// runLoadProcess runs the load generator in a child process (the test
// binary again) while sampling the server's runtime once a second, and logs
// both per-second views (shown with -test.v). Setting
// INGEST_FRONTEND_LOADGEN_CPUPROFILE=file profiles the generator. steady,
// when set, is called once every device is connected.
func runLoadProcess(b *testing.B, ts *testServer, spec loadSpec, steady func()) loadResult {
	js, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), loadgenEnv+"="+string(js))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var werr error
	exited := make(chan struct{})
	go func() { werr = cmd.Wait(); close(exited) }()
	testkit.WaitFor(b, "all devices connected", 60*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
			return testutil.ToFloat64(ts.srv.m.connections) == float64(spec.Conns)
		}
	})
	var srvLines []string
	whole := newProcStats(ts.reg)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		ps := newProcStats(ts.reg)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				srvLines = append(srvLines, ps.line())
			case <-stop:
				return
			}
		}
	}()
	if steady != nil {
		steady()
	}
	<-exited
	close(stop)
	<-stopped
	if werr != nil {
		b.Fatalf("load generator: %v\n%s", werr, stderr.String())
	}
	out := stdout.String()
	i := strings.Index(out, "RESULT ")
	if i < 0 {
		b.Fatalf("no result from load generator:\n%s\n%s", out, stderr.String())
	}
	var r loadResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(out[i+len("RESULT "):])), &r); err != nil {
		b.Fatal(err)
	}
	if r.Errors > 0 {
		b.Fatalf("%d errors in the load generator:\n%s", r.Errors, stderr.String())
	}
	for i, s := range r.Seconds {
		b.Logf("second %2d: %6d frames  p50 %9v  p99 %9v  max %9v", i, s.N, s.P50, s.P99, s.Max)
	}
	for i, l := range r.Proc {
		b.Logf("loadgen %2d:%s", i, l)
	}
	for i, l := range srvLines {
		b.Logf("server  %2d:%s", i, l)
	}
	b.Logf("server, whole run:%s", whole.line())
	b.Logf("%d frames acked, %d measured: p50 %v p99 %v p99.9 %v max %v; pacing lag p99 %v, %d paced sends skipped",
		r.Acked, r.Measured, r.P50, r.P99, r.P999, r.Max, r.PaceP99, r.Skipped)
	return r
}

// BenchmarkTenThousandDevices: 10,000 connections each sending one 200-byte
// message per second for 28 s, from a separate load-generator process; the
// first 8 s are a warm-up, left out of the quantiles, so 20 s (200,000
// frames) are measured. Reports ack latency quantiles and the server's heap
// and stack bytes per connection. The memory is measured inside the warm-up
// (once 5 s of messages are acknowledged): it forces a GC cycle and writes
// a profile, which would otherwise stand in the measured seconds as a tail
// of the benchmark's own making. The GC cycles the server's own allocation
// brings about are measured like any other second.
func BenchmarkTenThousandDevices(b *testing.B) {
	const conns = 10000
	raiseFileLimit(b, conns+4096)
	ts := benchServer(b, Options{})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	var perConn float64
	b.ResetTimer()
	r := runLoadProcess(b, ts, loadSpec{Addr: ts.addr, Conns: conns, Window: 4, Rate: 1, Size: 200,
		Warmup: 8 * time.Second, Duration: 28 * time.Second}, func() {
		// Measure in steady state, while every device is sending, and
		// within the warm-up (see above).
		testkit.WaitFor(b, "steady state", 60*time.Second, func() bool {
			return testutil.ToFloat64(ts.srv.m.acked) > 5*conns
		})
		if f := os.Getenv("BENCH_TRACE"); f != "" {
			w, _ := os.Create(f)
			trace.Start(w)
			time.Sleep(3 * time.Second)
			trace.Stop()
			w.Close()
		}
		runtime.GC()
		var during runtime.MemStats
		runtime.ReadMemStats(&during)
		perConn = (float64(during.HeapInuse+during.StackInuse) - float64(before.HeapInuse+before.StackInuse)) / conns
		if f := os.Getenv("BENCH_HEAPPROFILE"); f != "" {
			w, _ := os.Create(f)
			pprof.WriteHeapProfile(w)
			w.Close()
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(r.Acked)/r.Elapsed.Seconds(), "acked_msgs/s")
	b.ReportMetric(float64(r.P50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(r.P99.Microseconds()), "p99_µs")
	b.ReportMetric(float64(r.P999.Microseconds()), "p99.9_µs")
	b.ReportMetric(perConn, "server_bytes/conn")
	b.ReportMetric(0, "ns/op")
}
