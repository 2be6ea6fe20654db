package uplink_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/ingest-io/ingest/uplink"
)

// firstChoices counts, by endpoint, the ids whose first choice it is.
func firstChoices(ids, eps []string) map[string]int {
	n := map[string]int{}
	for _, id := range ids {
		n[uplink.Rank(id, eps)[0]]++
	}
	return n
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

func endpoints(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("tcp://mt-%d:5555", i)
	}
	return out
}

// Rank is a permutation of its input, the same on every call, whatever the
// input's order, and leaves the input alone.
func TestRankIsAStableOrder(t *testing.T) {
	eps := endpoints(5)
	in := slices.Clone(eps)
	got := uplink.Rank("frontend-3", in)
	if !slices.Equal(in, eps) {
		t.Fatalf("Rank changed its input to %v", in)
	}
	if !slices.Equal(slices.Sorted(slices.Values(got)), eps) {
		t.Fatalf("Rank(%v) = %v: not a permutation", eps, got)
	}
	rev := slices.Clone(eps)
	slices.Reverse(rev)
	if again := uplink.Rank("frontend-3", rev); !slices.Equal(again, got) {
		t.Fatalf("Rank of the reversed list %v, want %v", again, got)
	}
	if len(uplink.Rank("x", nil)) != 0 {
		t.Fatal("Rank of no endpoints is not empty")
	}
}

// The hash is pinned: frontends of two versions must rank alike, or an
// upgrade moves them. frontend-0 … frontend-5 over mt-0 … mt-2 come out two
// on each. (Other names can come out three, two and one — the production
// overlay's frontend-N over middletier-N.middletier do: with few frontends
// the spread is as lumpy as a random draw, which is what rendezvous hashing
// is; docs/scaling.md says how many frontends make it even.)
func TestRankSixOverThree(t *testing.T) {
	eps := endpoints(3)
	got := firstChoices(names("frontend", 6), eps)
	for _, ep := range eps {
		if got[ep] != 2 {
			t.Fatalf("first choices %v, want two on each", got)
		}
	}
	for id, want := range map[string][]string{
		"frontend-0": {"tcp://mt-1:5555", "tcp://mt-0:5555", "tcp://mt-2:5555"},
		"frontend-5": {"tcp://mt-2:5555", "tcp://mt-0:5555", "tcp://mt-1:5555"},
	} {
		if r := uplink.Rank(id, eps); !slices.Equal(r, want) {
			t.Errorf("Rank(%s) = %q, want %q", id, r, want)
		}
	}
}

// Many ids spread evenly: each of three endpoints is the first choice of
// 1/3 ±20 % of them, and each endpoint's ids spread their second choices
// evenly over the other two.
func TestRankSpreadsManyIDs(t *testing.T) {
	eps := endpoints(3)
	ids := names("frontend", 3000)
	got := firstChoices(ids, eps)
	for _, ep := range eps {
		if share := float64(got[ep]) / float64(len(ids)); share < 0.8/3 || share > 1.2/3 {
			t.Errorf("%s is the first choice of %d of %d ids (%.3f), want 1/3 ±20 %%", ep, got[ep], len(ids), share)
		}
	}
	second := map[[2]string]int{}
	for _, id := range ids {
		r := uplink.Rank(id, eps)
		second[[2]string{r[0], r[1]}]++
	}
	for _, a := range eps {
		for _, b := range eps {
			if a == b {
				continue
			}
			if n := second[[2]string{a, b}]; float64(n) < 0.8*float64(got[a])/2 || float64(n) > 1.2*float64(got[a])/2 {
				t.Errorf("%d of the %d ids on %s go next to %s, want half ±20 %%", n, got[a], a, b)
			}
		}
	}
}

// A fourth endpoint takes about a quarter of the ids, each from whichever
// endpoint had it, and moves no other; removing an endpoint moves only its
// own ids, each to its second choice.
func TestRankMovesFew(t *testing.T) {
	three, four := endpoints(3), endpoints(4)
	added := four[3]
	ids := names("frontend", 3000)
	moved := 0
	for _, id := range ids {
		before, after := uplink.Rank(id, three)[0], uplink.Rank(id, four)[0]
		if before == after {
			continue
		}
		moved++
		if after != added {
			t.Fatalf("%s moved from %s to %s, not to the new endpoint", id, before, after)
		}
	}
	if share := float64(moved) / float64(len(ids)); share < 0.8/4 || share > 1.2/4 {
		t.Errorf("adding a fourth endpoint moved %d of %d ids (%.3f), want 1/4 ±20 %%", moved, len(ids), share)
	}
	for _, id := range ids {
		r := uplink.Rank(id, four)
		without := uplink.Rank(id, three) // four without the added one
		if r[0] == added {
			if without[0] != r[1] {
				t.Fatalf("%s lost its first choice and went to %s, not its second choice %s", id, without[0], r[1])
			}
		} else if without[0] != r[0] {
			t.Fatalf("%s moved from %s to %s when another endpoint went", id, r[0], without[0])
		}
	}
}
