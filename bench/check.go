package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// completeness is the comparison of what devices saw acknowledged with what
// the store holds.
type completeness struct {
	Acked        int64    `json:"acknowledged"`
	Stored       int64    `json:"stored_acknowledged"`
	Lost         int64    `json:"lost"`
	Duplicated   int64    `json:"duplicated"`
	LostExamples []string `json:"lost_examples,omitempty"`
	LostAll      []string `json:"-"` // every one, for a failed run's post-mortem
	// AheadMS is how far the latest device time ran ahead of the clock
	// when the check began: the store is queried as of that time.
	AheadMS int64 `json:"devices_ahead_ms,omitempty"`
}

// check queries the store's Prometheus API for every device's seq samples
// and compares them with what each device had acknowledged: an acknowledged
// message missing from the store is lost; a message stored twice (the same
// seq at two timestamps) is duplicated. It waits up to wait for the store to
// catch up. With several stores (writers with an embedded TSDB each, each
// holding the streams it followed), a message is stored if one of them
// holds it, and duplicated if one holds it twice.
//
// The store is read from since, the earliest device time of the run's
// messages, to the check's time: a store that holds the same devices'
// messages of an earlier run (the same ids, seq 1, 2, 3… again) must not
// have them counted, as duplicates, or as this run's messages where this
// run's were lost.
//
// latest is the latest device time of any message sent. A device's times
// are distinct milliseconds, so one that sends more than a thousand
// messages a second runs ahead of the clock; the store is queried as of
// latest when that is later than now, or a query would leave out the
// messages stamped in its future.
func check(ctx context.Context, apis []string, devs []*device, since, latest time.Time, wait time.Duration) (*completeness, error) {
	for i, api := range apis {
		apis[i] = queryBase(api)
	}
	start := time.Now()
	deadline := start.Add(wait)
	for {
		at := time.Now()
		if l := latest.Add(time.Millisecond); l.After(at) {
			at = l
		}
		c, err := checkOnce(ctx, apis, devs, since, at)
		if err == nil && latest.After(start) {
			c.AheadMS = latest.Sub(start).Milliseconds()
		}
		if err != nil || c.Lost == 0 || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(time.Second)
	}
}

// aheadHorizon is how far past the clock storedAhead looks for points an
// earlier run stamped ahead of it: a day of a device at twice its
// thousand milliseconds a second is past any run of the bench.
const aheadHorizon = 24 * time.Hour

// storedAhead returns the latest time at which a store among apis holds a
// seq point of one of devs later than now, zero if none is. An earlier
// run against the same store whose devices sent more than a thousand
// messages a second each stamped them ahead of the clock: a run whose
// device times start at the clock would write its points at times those
// series already hold, where the store keeps the first value and drops
// the new one, and the check would count the earlier run's points inside
// this run's window as this run's.
func storedAhead(ctx context.Context, apis []string, devs []*device, now time.Time) (time.Time, error) {
	var latest time.Time
	for start := 0; start < len(devs); start += 100 {
		names := deviceNames(devs[start:min(start+100, len(devs))])
		for _, api := range apis {
			_, l, err := readSeqs(ctx, queryBase(api), names, now.UnixMilli(), now.Add(aheadHorizon).UnixMilli())
			if err != nil {
				return time.Time{}, err
			}
			if l.After(latest) {
				latest = l
			}
		}
	}
	return latest, nil
}

// deviceNames are the ids of devs (nil ones left out), quoted for a regular
// expression.
func deviceNames(devs []*device) []string {
	var names []string
	for _, d := range devs {
		if d != nil {
			names = append(names, regexp.QuoteMeta(d.id))
		}
	}
	return names
}

// readSeqs counts, per device of names, how often each seq value is stored
// at api at times in (from, to] (unix ms), and returns the latest time of
// the points it read (zero if none). A store that refuses a query for the
// samples it would hold (the embedded store's and Prometheus's
// --query.max-samples, VictoriaMetrics's -search.maxSamplesPerQuery:
// reached by a long run at full load) is asked again in halves, by devices
// and then by time, until the parts fit.
func readSeqs(ctx context.Context, api string, names []string, from, to int64) (map[string]map[int]int, time.Time, error) {
	q := fmt.Sprintf(`seq{device=~"%s"}[%dms]`, strings.Join(names, "|"), to-from)
	out, latest, err := querySamples(ctx, api, q, time.UnixMilli(to))
	if err == nil || !tooManySamples(err) {
		return out, latest, err
	}
	var parts [2]struct {
		names    []string
		from, to int64
	}
	switch {
	case len(names) > 1:
		parts[0].names, parts[0].from, parts[0].to = names[:len(names)/2], from, to
		parts[1].names, parts[1].from, parts[1].to = names[len(names)/2:], from, to
	case to-from > 1:
		mid := from + (to-from)/2
		parts[0].names, parts[0].from, parts[0].to = names, from, mid
		parts[1].names, parts[1].from, parts[1].to = names, mid, to
	default:
		return nil, time.Time{}, err
	}
	out = map[string]map[int]int{}
	latest = time.Time{}
	for _, p := range parts {
		s, l, err := readSeqs(ctx, api, p.names, p.from, p.to)
		if err != nil {
			return nil, time.Time{}, err
		}
		for dev, seqs := range s { // parts of different devices or times: counts add up
			if out[dev] == nil {
				out[dev] = seqs
				continue
			}
			for seq, n := range seqs {
				out[dev][seq] += n
			}
		}
		if l.After(latest) {
			latest = l
		}
	}
	return out, latest, nil
}

// tooManySamples reports whether err is a store's refusal of a query for
// the samples it would hold.
func tooManySamples(err error) bool {
	return strings.Contains(err.Error(), "too many samples") || strings.Contains(err.Error(), "maxSamplesPer")
}

// queryBase is the base URL of a Prometheus query API given as -check:
// any of http://host:9090, http://host:9090/, .../api/v1 and
// .../api/v1/query name the same API, below any path prefix (VictoriaMetrics's
// /prometheus, a vmselect's /select/0/prometheus).
func queryBase(api string) string {
	api = strings.TrimRight(api, "/")
	api = strings.TrimSuffix(api, "/api/v1/query")
	api = strings.TrimSuffix(api, "/api/v1")
	return strings.TrimRight(api, "/")
}

// checkOnce queries the store as of at.
func checkOnce(ctx context.Context, apis []string, devs []*device, since, at time.Time) (*completeness, error) {
	c := &completeness{}
	for start := 0; start < len(devs); start += 100 {
		chunk := devs[start:min(start+100, len(devs))]
		stored := map[string]map[int]int{}
		for _, api := range apis {
			// A range selector leaves out its start: from a millisecond
			// before since takes in a sample at since.
			s, _, err := readSeqs(ctx, api, deviceNames(chunk), since.UnixMilli()-1, at.UnixMilli())
			if err != nil {
				return nil, err
			}
			for dev, seqs := range s {
				if stored[dev] == nil {
					stored[dev] = seqs
					continue
				}
				for seq, n := range seqs {
					stored[dev][seq] = max(stored[dev][seq], n)
				}
			}
		}
		for _, d := range chunk {
			if d == nil {
				continue
			}
			got := stored[d.id]
			for seq := uint64(1); seq <= d.settled; seq++ {
				if d.notAcked[seq] {
					continue
				}
				c.Acked++
				switch n := got[int(seq)]; {
				case n == 0:
					c.Lost++
					c.LostAll = append(c.LostAll, fmt.Sprintf("%s/%d", d.id, seq))
					if len(c.LostExamples) < 10 {
						c.LostExamples = append(c.LostExamples, fmt.Sprintf("%s/%d", d.id, seq))
					}
				default:
					c.Stored++
				}
			}
			for _, n := range got {
				if n > 1 {
					c.Duplicated += int64(n - 1)
				}
			}
		}
	}
	return c, nil
}

// querySamples runs a range-vector query as of at, counts, per device, how
// often each seq value is stored, and returns the latest time of the points
// it read (zero if none).
func querySamples(ctx context.Context, api, q string, at time.Time) (map[string]map[int]int, time.Time, error) {
	form := url.Values{"query": {q}, "time": {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, api+"/api/v1/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, time.Time{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("query store: %w", err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, time.Time{}, fmt.Errorf("decode query result: %w", err)
	}
	if r.Status != "success" {
		return nil, time.Time{}, fmt.Errorf("query store: %s", r.Error)
	}
	out := map[string]map[int]int{}
	var latest float64
	for _, s := range r.Data.Result {
		dev := s.Metric["device"]
		if out[dev] == nil {
			out[dev] = map[int]int{}
		}
		for _, v := range s.Values {
			str, _ := v[1].(string)
			f, err := strconv.ParseFloat(str, 64)
			if err != nil {
				return nil, time.Time{}, fmt.Errorf("query store: value %q", str)
			}
			out[dev][int(f)]++
			if t, ok := v[0].(float64); ok {
				latest = max(latest, t)
			}
		}
	}
	if latest == 0 {
		return out, time.Time{}, nil
	}
	return out, time.UnixMilli(int64(math.Round(latest * 1000))), nil
}
