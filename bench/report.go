package main

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ingest-io/ingest/internal/loadgen"
)

// result is what a run measured; it is also the JSON output.
type result struct {
	Scenario struct {
		Devices  int     `json:"devices"`
		Rate     float64 `json:"rate_per_device"`
		Window   int     `json:"window"`
		Size     int     `json:"size_bytes"`
		Shape    string  `json:"shape"`
		Duration string  `json:"duration"`
	} `json:"scenario"`
	Connected    int                  `json:"connected"`
	DialFailed   int64                `json:"dial_failed"`
	Sent         int64                `json:"sent"`
	Acked        int64                `json:"acked"`
	AckedPerSec  float64              `json:"acked_per_second"`
	Errors       map[string]int64     `json:"errors_by_code"`
	Reconnects   int64                `json:"reconnects"`
	Resent       int64                `json:"resent"`
	Skipped      int64                `json:"skipped,omitempty"`
	Writes       int64                `json:"write_syscalls"`
	Reads        int64                `json:"read_syscalls"`
	AckLatency   latency              `json:"ack_latency_ms"`
	SendLag      *latency             `json:"send_lag_ms,omitempty"`
	CPU          *cpuResult           `json:"cpu,omitempty"`
	Dial         latency              `json:"connect_ms"`
	PerSecond    []int64              `json:"acked_each_second"`
	Percentiles  []point              `json:"ack_latency_distribution"`
	Completeness *completeness        `json:"completeness,omitempty"`
	Feed         *feedResult          `json:"live_feed,omitempty"`
	Chaos        map[string]*recovery `json:"chaos,omitempty"`
	Intervals    []interval           `json:"intervals,omitempty"`
	Tiers        []tierFigure         `json:"tiers,omitempty"`
	Engine       *engineFigures       `json:"engine,omitempty"`
}

// feedResult is what a dashboard on the live feed saw.
type feedResult struct {
	Shown   int64   `json:"shown"`
	Missed  int64   `json:"missed_notices"`
	Latency latency `json:"device_to_dashboard_ms"`
	// Closed is how the feed ended the dashboard's connection before the
	// run did ("4000 too slow"); empty if it did not.
	Closed string `json:"closed_by_feed,omitempty"`
}

type latency struct {
	P50, P90, P99, P999, Max, Mean float64
}

type point struct {
	Percentile float64 `json:"percentile"`
	Ms         float64 `json:"ms"`
}

// newResult summarises a run. The rate counts what was acknowledged while
// sending went on; acknowledgements that came in the drain afterwards count
// in Acked and in the latencies.
func newResult(c config, fs loadgen.Stats, st *stats, connected int, sendTime time.Duration, ackedInWindow int64) *result {
	r := &result{Connected: connected, DialFailed: int64(fs.DialFailed), Sent: fs.Sent, Acked: fs.Acked,
		Errors: fs.Errors, Reconnects: fs.Reconnects, Resent: fs.Resent, Skipped: fs.Skipped,
		Writes: fs.Writes, Reads: fs.Reads}
	r.Scenario.Devices, r.Scenario.Rate, r.Scenario.Window = c.Devices, c.Rate, c.Window
	r.Scenario.Size, r.Scenario.Shape, r.Scenario.Duration = c.Size, c.Shape, c.Duration.String()
	r.AckedPerSec = float64(ackedInWindow) / sendTime.Seconds()
	// The seconds after the last acknowledgement are not part of the run.
	r.PerSecond = st.perSec.counts()
	for _, d := range fs.Dials {
		st.dials.RecordValue(micros(int64(d)))
	}
	r.Dial = latencyOf(st.dials)
	h := merged(st.shards)
	r.AckLatency = latencyOf(h)
	for _, p := range []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100} {
		r.Percentiles = append(r.Percentiles, point{p, float64(h.ValueAtQuantile(p)) / 1000})
	}
	if st.late != nil {
		l := latencyOf(merged(st.late))
		r.SendLag = &l
	}
	return r
}

func latencyOf(h interface {
	ValueAtQuantile(float64) int64
	Max() int64
	Mean() float64
}) latency {
	ms := func(v int64) float64 { return float64(v) / 1000 }
	return latency{P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000}
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "scenario: %d devices, ", r.Scenario.Devices)
	if r.Scenario.Rate > 0 {
		fmt.Fprintf(w, "%g msg/s each", r.Scenario.Rate)
	} else {
		fmt.Fprintf(w, "closed loop, %d in flight each", r.Scenario.Window)
	}
	fmt.Fprintf(w, ", %d-byte %s messages, %s\n", r.Scenario.Size, r.Scenario.Shape, r.Scenario.Duration)
	fmt.Fprintf(w, "connected:  %d (failed %d); connect p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		r.Connected, r.DialFailed, r.Dial.P50, r.Dial.P99, r.Dial.Max)
	fmt.Fprintf(w, "messages:   sent %d, acknowledged %d, %.0f acknowledged/s\n", r.Sent, r.Acked, r.AckedPerSec)
	fmt.Fprintf(w, "ack latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
		r.AckLatency.P50, r.AckLatency.P90, r.AckLatency.P99, r.AckLatency.P999, r.AckLatency.Max, r.AckLatency.Mean)
	if l := r.SendLag; l != nil {
		fmt.Fprintf(w, "send lag ms (schedule → write): p50 %.3f  p99 %.3f  max %.3f; %d skipped\n", l.P50, l.P99, l.Max, r.Skipped)
	}
	if r.Reconnects > 0 {
		fmt.Fprintf(w, "reconnects: %d, %d messages sent again\n", r.Reconnects, r.Resent)
	}
	if r.Writes > 0 && r.Reads > 0 {
		fmt.Fprintf(w, "syscalls:   %d writes (%.1f messages each), %d reads (%.1f messages acknowledged each)\n",
			r.Writes, float64(r.Sent+r.Resent)/float64(r.Writes), r.Reads, float64(r.Acked)/float64(r.Reads))
	}
	if cp := r.CPU; cp != nil {
		fmt.Fprintf(w, "cpu:        bench %.2f s (%.2f µs per acknowledged message)", cp.BenchSeconds, cp.BenchMicrosPerMsg)
		if cp.EngineSeconds > 0 {
			fmt.Fprintf(w, ", engine %.2f s (%.2f µs per message)", cp.EngineSeconds, cp.EngineMicrosPerMsg)
		}
		fmt.Fprintf(w, " while sending; load average %.2f\n", cp.LoadAverage)
	}
	if f := r.Feed; f != nil {
		fmt.Fprintf(w, "live feed:  %d shown, %d missed; device → dashboard ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
			f.Shown, f.Missed, f.Latency.P50, f.Latency.P90, f.Latency.P99, f.Latency.P999, f.Latency.Max)
		if f.Closed != "" {
			fmt.Fprintf(w, "live feed:  the feed closed the dashboard (%s): it showed nothing after that\n", f.Closed)
		}
	}
	if cp := r.Completeness; cp != nil {
		fmt.Fprintf(w, "store:      %d acknowledged, %d stored, lost %d, duplicated %d", cp.Acked, cp.Stored, cp.Lost, cp.Duplicated)
		if cp.AheadMS > 0 {
			fmt.Fprintf(w, " (queried as of the latest device time, %.1f s ahead of the clock)", float64(cp.AheadMS)/1000)
		}
		fmt.Fprintln(w)
		if len(cp.LostExamples) > 0 {
			fmt.Fprintf(w, "lost, e.g.: %s\n", strings.Join(cp.LostExamples, " "))
		}
	}
	if len(r.Chaos) > 0 {
		kinds := slices.Sorted(maps.Keys(r.Chaos))
		fmt.Fprint(w, "chaos:     ")
		for _, k := range kinds {
			rc := r.Chaos[k]
			fmt.Fprintf(w, " %s killed %d× (back in %.0f ms mean, %.0f ms max)", k, rc.Kills, rc.MeanMs, rc.MaxMs)
		}
		fmt.Fprintln(w)
	}
	printTiers(w, r.Tiers)
	printEngine(w, r.Engine)
	if len(r.Errors) == 0 {
		fmt.Fprintln(w, "errors:     none")
		return
	}
	codes := slices.Sorted(maps.Keys(r.Errors))
	fmt.Fprint(w, "errors:    ")
	for _, c := range codes {
		fmt.Fprintf(w, " %s=%d", c, r.Errors[c])
	}
	fmt.Fprintln(w)
}

// svg plots the acknowledgement latency against percentile, on the usual
// log scale of "nines", and the acknowledged rate per second beside it.
func (r *result) svg() []byte {
	const W, H, pad = 900, 380, 60
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`, W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`)
	title := fmt.Sprintf("ack latency: %d devices, %.0f acked/s", r.Scenario.Devices, r.AckedPerSec)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">%s</text>`, pad, title)

	// Left: latency by percentile; x = -log10(1 - p/100), 0 .. 4 (99.99).
	x0, x1, y0, y1 := float64(pad), float64(W/2-20), float64(H-pad), float64(40)
	maxMs := 0.0
	for _, p := range r.Percentiles {
		maxMs = math.Max(maxMs, p.Ms)
	}
	maxMs = niceCeil(maxMs)
	xOf := func(p float64) float64 {
		n := math.Min(-math.Log10(math.Max(1-p/100, 1e-4)), 4)
		return x0 + (x1-x0)*n/4
	}
	yOf := func(ms float64) float64 { return y0 - (y0-y1)*ms/maxMs }
	axes(&b, x0, x1, y0, y1)
	for i, lbl := range []string{"0%", "90%", "99%", "99.9%", "99.99%"} {
		x := x0 + (x1-x0)*float64(i)/4
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`, x, y0+18, lbl)
	}
	for i := 0; i <= 4; i++ {
		v := maxMs * float64(i) / 4
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">%g ms</text>`, x0-6, yOf(v)+4, roundTo(v))
	}
	var path bytes.Buffer
	for i, p := range r.Percentiles {
		if p.Percentile >= 100 {
			continue
		}
		cmd := "L"
		if i == 0 {
			cmd = "M"
		}
		fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, xOf(p.Percentile), yOf(p.Ms))
	}
	fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#1f77b4" stroke-width="2"/>`, path.String())
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">percentile</text>`, (x0+x1)/2, y0+36)

	// Right: acknowledged per second.
	x0, x1 = float64(W/2+60), float64(W-20)
	maxRate := 1.0
	for _, n := range r.PerSecond {
		maxRate = math.Max(maxRate, float64(n))
	}
	maxRate = niceCeil(maxRate)
	axes(&b, x0, x1, y0, y1)
	for i := 0; i <= 4; i++ {
		v := maxRate * float64(i) / 4
		y := y0 - (y0-y1)*float64(i)/4
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">%g</text>`, x0-6, y+4, roundTo(v))
	}
	path.Reset()
	n := max(len(r.PerSecond), 2)
	for i, v := range r.PerSecond {
		cmd := "L"
		if i == 0 {
			cmd = "M"
		}
		fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, x0+(x1-x0)*float64(i)/float64(n-1), y0-(y0-y1)*float64(v)/maxRate)
	}
	fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#2ca02c" stroke-width="2"/>`, path.String())
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">second of the run (acknowledged/s)</text>`, (x0+x1)/2, y0+36)
	b.WriteString(`</svg>`)
	return b.Bytes()
}

func axes(b *bytes.Buffer, x0, x1, y0, y1 float64) {
	fmt.Fprintf(b, `<path d="M%.0f,%.0f L%.0f,%.0f L%.0f,%.0f" fill="none" stroke="black"/>`, x0, y1, x0, y0, x1, y0)
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func roundTo(v float64) float64 { return math.Round(v*1000) / 1000 }
