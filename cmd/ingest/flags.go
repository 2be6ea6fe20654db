package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// flags is where a tier's config registers its flags: on fs, each under
// prefix + its name (the prefix is empty for the tier's own subcommand, and
// the tier's name within ingest all: --feed.listen), but for the names in
// except, which are not registered at all (ingest all wires them itself).
// The default of each flag is the value its variable holds when it is
// registered.
type flags struct {
	fs     *flag.FlagSet
	prefix string
	except map[string]string // name -> why it is left out
}

// name is the flag's name as registered.
func (f flags) name(n string) string { return f.prefix + n }

func (f flags) skip(n string) bool {
	_, ok := f.except[n]
	return ok
}

func (f flags) str(p *string, name, usage string) {
	flagVar(f, p, name, usage, (*flag.FlagSet).StringVar)
}

func (f flags) integer(p *int, name, usage string) {
	flagVar(f, p, name, usage, (*flag.FlagSet).IntVar)
}

func (f flags) int64(p *int64, name, usage string) {
	flagVar(f, p, name, usage, (*flag.FlagSet).Int64Var)
}

func (f flags) float(p *float64, name, usage string) {
	flagVar(f, p, name, usage, (*flag.FlagSet).Float64Var)
}

func (f flags) boolean(p *bool, name, usage string) {
	flagVar(f, p, name, usage, (*flag.FlagSet).BoolVar)
}

func (f flags) duration(p *time.Duration, name, usage string) {
	f.value((*durationValue)(p), name, usage)
}

// value registers a flag of its own type; its default is what v holds now.
func (f flags) value(v flag.Value, name, usage string) {
	if !f.skip(name) {
		f.fs.Var(v, f.name(name), usage)
	}
}

// flagVar registers a flag of a type the flag package knows with define
// (flag.FlagSet.StringVar and its siblings), its default what p holds now.
func flagVar[T any](f flags, p *T, name, usage string, define func(*flag.FlagSet, *T, string, T, string)) {
	if !f.skip(name) {
		define(f.fs, p, f.name(name), *p, usage)
	}
}

// given reports whether the flag was set on the command line or through
// its environment twin.
func (f flags) given(name string) bool {
	if _, ok := os.LookupEnv(envName(f.name(name))); ok {
		return true
	}
	set := false
	f.fs.Visit(func(fl *flag.Flag) { set = set || fl.Name == f.name(name) })
	return set
}

// required is the error for a required flag left empty.
func (f flags) required(name string) error {
	return fmt.Errorf("--%s (%s) is required", f.name(name), envName(f.name(name)))
}

// durationValue is a time.Duration flag whose errors say what a duration
// looks like: "--drain-window 5" is refused with a hint to write "5s".
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err == nil {
		*d = durationValue(v)
		return nil
	}
	if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
		return fmt.Errorf("a duration needs a unit: %q? (units: ns, us, ms, s, m, h)", s+"s")
	}
	return errors.New("not a duration: write it as 5s, 250ms or 1m30s")
}

func (d *durationValue) Get() any { return time.Duration(*d) }

// errUsage marks an error in the command line, for which main exits 2.
var errUsage = errors.New("usage")

// usageError is an error in the command line of subcommand sub.
type usageError struct {
	sub string
	err error
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%v\n(ingest %s --help lists its flags)", e.err, e.sub)
}

func (e *usageError) Unwrap() []error { return []error{e.err, errUsage} }

// flagDashes finds the single dash the flag package puts before a flag's
// name in its errors; the engine's flags are written with two.
var flagDashes = regexp.MustCompile(`(for flag|defined:|argument:) -([^-])`)

// parseFlags parses args, then fills every flag not given on the command
// line from its environment twin: INGEST_ + the flag name in upper case
// with '.' and '-' turned into '_' (--wal.dir -> INGEST_WAL_DIR). --help
// prints the flags on stdout and returns flag.ErrHelp. header, if not
// empty, is printed above the flags.
func parseFlags(fs *flag.FlagSet, args []string, header string) error {
	fs.SetOutput(io.Discard) // errors are returned, and printed once by main
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(os.Stdout, fs, header)
		return err
	}
	if err != nil {
		msg := flagDashes.ReplaceAllString(err.Error(), "$1 --$2")
		if strings.HasPrefix(msg, "flag provided but not defined: --") {
			if s := closest(strings.TrimPrefix(msg, "flag provided but not defined: --"), flagNames(fs)); s != "" {
				msg += "; did you mean --" + s + "?"
			}
		}
		return &usageError{sub: fs.Name(), err: errors.New(msg)}
	}
	if fs.NArg() > 0 {
		return &usageError{sub: fs.Name(), err: fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = &usageError{sub: fs.Name(), err: fmt.Errorf("invalid value %q for %s (--%s): %w", v, envName(f.Name), f.Name, e)}
			}
		}
	})
	if err != nil {
		return err
	}
	// No flag of the engine's takes a negative number or duration (0 is
	// how one is turned off): a negative one is a mistake, which would
	// otherwise fall back to a default, or turn a wait off, unsaid.
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if !ok || err != nil {
			return
		}
		neg := false
		switch v := g.Get().(type) {
		case time.Duration:
			neg = v < 0
		case int:
			neg = v < 0
		case int64:
			neg = v < 0
		case float64:
			neg = v < 0
		}
		if neg {
			err = &usageError{sub: fs.Name(), err: fmt.Errorf("--%s %s is negative", f.Name, f.Value)}
		}
	})
	return err
}

// endpointLists is endpoints of two flags: a middletier's socket and its
// consumer socket, say.
func endpointLists(f flags, name1, list1, name2, list2 string) ([]string, []string, error) {
	a, err := endpoints(f, name1, list1)
	if err != nil {
		return nil, nil, err
	}
	b, err := endpoints(f, name2, list2)
	return a, b, err
}

// endpoints splits a comma-separated list of ZeroMQ endpoints given to
// flag name, each of which must be tcp://host:port: one written without
// its scheme would be dialed for ever, each attempt refused.
func endpoints(f flags, name, list string) ([]string, error) {
	eps := splitList(list)
	for _, ep := range eps {
		hp, ok := strings.CutPrefix(ep, "tcp://")
		if _, port, err := net.SplitHostPort(hp); !ok || err != nil || port == "" {
			return nil, &usageError{sub: f.fs.Name(), err: fmt.Errorf("--%s: %q is not an endpoint: write tcp://host:port", f.name(name), ep)}
		}
	}
	return eps, nil
}

// printUsage lists fs's flags, each with its environment twin; the
// deploy/k8s tests read the twins from it.
func printUsage(w io.Writer, fs *flag.FlagSet, header string) {
	fmt.Fprintf(w, "usage: ingest %s [flags]\n\n", fs.Name())
	if header != "" {
		fmt.Fprintln(w, header)
	}
	fmt.Fprint(w, "Every flag can also be set through the environment variable shown.\n\n")
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%s (%s)\n    \t%s", f.Name, envName(f.Name), f.Usage)
		if f.DefValue != "" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func envName(flagName string) string {
	return "INGEST_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flagName))
}

func flagNames(fs *flag.FlagSet) []string {
	var n []string
	fs.VisitAll(func(f *flag.Flag) { n = append(n, f.Name) })
	return n
}

// flagValues are the flags of fs and their values (given or default), for
// the query API's status/flags, which needs no token: a flag whose value
// may hold a secret withholds it (redacted).
func flagValues(fs *flag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if r, ok := f.Value.(interface{ redacted() string }); ok {
			m[f.Name] = r.redacted()
			return
		}
		m[f.Name] = f.Value.String()
	})
	return m
}

// closest is the candidate nearest to s (a misspelling: at most two edits,
// or a prefix of it), or "" if none is near.
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	sorted := append([]string(nil), candidates...)
	sort.Strings(sorted)
	for _, c := range sorted {
		d := editDistance(s, c)
		if len(s) >= 3 && strings.HasPrefix(c, s) && d > 2 {
			d = 2
		}
		if d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
