package k8s_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/frontend"
)

// deployedTiers are the tiers every overlay runs.
func deployedTiers() []string { return []string{"frontend", "middletier", "storage", "feed"} }

// storageHTTPEnv is the storage subcommand's listen flag's twin.
const storageHTTPEnv = "INGEST_HTTP_LISTEN"

func dur(t *testing.T, c *corev1.Container, name string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(mustEnv(t, c, name))
	if err != nil {
		t.Fatalf("%s: %s: %v", c.Name, name, err)
	}
	return d
}

func checkFrontend(t *testing.T, o *objects) {
	w, c := statefulWorkload(t, o, "frontend")
	walOnClaim(t, w, c, mustEnv(t, c, "INGEST_WAL_DIR"))

	// SIGTERM comes after preStop; then the frontend drains devices over
	// the drain window, each close bounded by a write timeout, and gives
	// the uplink the flush timeout. SIGKILL must not cut that short.
	need := time.Duration(preStopSeconds(c))*time.Second + dur(t, c, "INGEST_DRAIN_WINDOW") +
		frontend.DefaultOptions().WriteTimeout + dur(t, c, "INGEST_UPLINK_FLUSH_TIMEOUT")
	if got := time.Duration(grace(w)) * time.Second; got < need {
		t.Errorf("frontend: terminationGracePeriodSeconds %v < preStop + drain window + write timeout + flush timeout = %v", got, need)
	}

	// Frontends find the middletiers through their headless Service.
	host, port, err := net.SplitHostPort(mustEnv(t, c, "INGEST_UPLINK_DNS"))
	if err != nil {
		t.Fatalf("INGEST_UPLINK_DNS: %v", err)
	}
	svc, ok := o.services[host]
	if !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("INGEST_UPLINK_DNS names %q, which is not a headless Service", host)
	}
	mw, mc := statefulWorkload(t, o, "middletier")
	if !selectsMap(svc.Spec.Selector, mw.pod.Labels) {
		t.Errorf("Service %s does not select the middletiers", host)
	}
	if p := addrPort(t, mustEnv(t, mc, "INGEST_INGEST_ADDR")); port != strconv.Itoa(int(p)) {
		t.Errorf("INGEST_UPLINK_DNS port %s, middletiers' ingest socket on %d", port, p)
	}

	// Every frontend lists every middletier's command home, in ordinal
	// order; the command API is on the devices' port, which the Service
	// below exposes.
	if got, want := mustEnv(t, c, "INGEST_COMMANDS_HOMES"), middletierEndpoints(t, o, "command"); got != want {
		t.Errorf("frontend: INGEST_COMMANDS_HOMES=%q, want %q", got, want)
	}

	// The devices' Service and the autoscaler.
	fs, ok := o.services["frontend"]
	if !ok || !selectsMap(fs.Spec.Selector, w.pod.Labels) {
		t.Fatal("no Service frontend selecting the frontends")
	}
	for _, p := range fs.Spec.Ports {
		if portNumber(c, p.TargetPort.String()) != listenPort(t, "frontend", c, "frontend") {
			t.Errorf("Service frontend port %s targets %s, not the devices' port", p.Name, p.TargetPort.String())
		}
	}
	checkDeviceEntry(t, o, w, c)
	// The frontends follow the registry, to refuse the devices it
	// disables.
	regOnMount(t, o, w, c)
	if len(o.hpas) != 1 {
		t.Fatalf("%d HorizontalPodAutoscalers, want 1 for the frontends", len(o.hpas))
	}
	h := o.hpas[0]
	if h.Spec.ScaleTargetRef.Kind != "StatefulSet" || h.Spec.ScaleTargetRef.Name != "frontend" ||
		h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || h.Spec.MaxReplicas < *h.Spec.MinReplicas || len(h.Spec.Metrics) == 0 {
		t.Errorf("HPA %+v does not scale the frontends", h.Spec)
	}
	if s := o.statefulSets["frontend"].Spec.ServiceName; o.services[s] == nil || o.services[s].Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("frontend: serviceName %q is not a headless Service", s)
	}
}

// checkDeviceEntry checks that devices and the command API reach the
// frontends from outside the cluster: through a Service of type
// LoadBalancer, or an Ingress that routes /v1/ingest and the command
// routes over TLS, to a Service selecting the frontends on the devices'
// port.
func checkDeviceEntry(t *testing.T, o *objects, w workload, c *corev1.Container) {
	t.Helper()
	devPort := listenPort(t, "frontend", c, "frontend")
	// toDevices reports whether Service name's port (a name or number;
	// "" for every port) reaches the frontends' devices' port.
	toDevices := func(name, port string) bool {
		svc, ok := o.services[name]
		if !ok || !selectsMap(svc.Spec.Selector, w.pod.Labels) {
			return false
		}
		for _, p := range svc.Spec.Ports {
			if (port == "" || port == p.Name || port == strconv.Itoa(int(p.Port))) &&
				portNumber(c, p.TargetPort.String()) == devPort {
				return true
			}
		}
		return false
	}
	// Devices' connections, and applications' command API on the same
	// port (docs/commands.md).
	for _, path := range []string{"/v1/ingest", "/v1/devices/d-1/commands", "/v1/commands/c-1"} {
		var via []string
		for _, svc := range o.services {
			if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && toDevices(svc.Name, "") {
				via = append(via, "Service "+svc.Name)
			}
		}
		for _, ing := range o.ingresses {
			for _, r := range ing.Spec.Rules {
				if r.HTTP == nil {
					continue
				}
				for _, p := range r.HTTP.Paths {
					if !routes(p, path) || p.Backend.Service == nil {
						continue
					}
					b := p.Backend.Service
					port := b.Port.Name
					if port == "" {
						port = strconv.Itoa(int(b.Port.Number))
					}
					if !toDevices(b.Name, port) {
						t.Errorf("Ingress %s routes %s to Service %s port %s, which does not reach the frontends' port %d", ing.Name, path, b.Name, port, devPort)
						continue
					}
					// Devices and applications send bearer tokens: never in
					// clear text over the Ingress.
					tls := false
					for _, tl := range ing.Spec.TLS {
						tls = tls || slices.Contains(tl.Hosts, r.Host)
					}
					if !tls {
						t.Errorf("Ingress %s: host %q serves %s without TLS", ing.Name, r.Host, path)
						continue
					}
					via = append(via, "Ingress "+ing.Name)
				}
			}
		}
		if len(via) == 0 {
			t.Errorf("%s does not reach the frontends from outside the cluster: no LoadBalancer Service and no Ingress routes it to port %d", path, devPort)
		}
	}
}

// routes reports whether an Ingress path sends requests for path to its
// backend.
func routes(p networkingv1.HTTPIngressPath, path string) bool {
	switch {
	case p.PathType == nil:
		return false
	case *p.PathType == networkingv1.PathTypePrefix:
		prefix := strings.TrimSuffix(p.Path, "/")
		return prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
	default: // Exact, and ImplementationSpecific taken literally
		return p.Path == path
	}
}

func addrPort(t *testing.T, endpoint string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(endpoint, "tcp://"))
	if err != nil {
		t.Fatalf("endpoint %q: %v", endpoint, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("endpoint %q: %v", endpoint, err)
	}
	return int32(n)
}

// zmqPorts are the middletier's ZeroMQ sockets: environment twin, port
// name, and the tiers allowed to reach it.
var zmqPorts = []struct {
	env, name string
	from      []string
}{
	{"INGEST_INGEST_ADDR", "ingest", []string{"frontend"}},
	{"INGEST_CONSUMER_ADDR", "consumer", []string{"feed", "storage"}},
	{"INGEST_STREAM_ADDR", "stream", []string{"storage"}},
	{"INGEST_FEED_ADDR", "feed", []string{"feed"}},
	{"INGEST_COMMAND_ADDR", "command", []string{"frontend"}},
}

func checkMiddletier(t *testing.T, o *objects) {
	w, c := statefulWorkload(t, o, "middletier")
	walOnClaim(t, w, c, mustEnv(t, c, "INGEST_DATA_DIR"))
	for _, z := range zmqPorts {
		if p := addrPort(t, mustEnv(t, c, z.env)); portNumber(c, z.name) != p {
			t.Errorf("middletier: %s on %d, but containerPort %q is %d", z.env, p, z.name, portNumber(c, z.name))
		}
	}
	s := o.statefulSets["middletier"].Spec.ServiceName
	if svc := o.services[s]; svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone || !selectsMap(svc.Spec.Selector, w.pod.Labels) {
		t.Errorf("middletier: serviceName %q is not a headless Service selecting the middletiers", s)
	}
	// The WAL keeps entries for exactly the durable consumers deployed:
	// each storage replica, under its pod name, or the replicas' one
	// writer group.
	sw, sc := statefulWorkload(t, o, "storage")
	var want []string
	if g, ok := env(sc, "INGEST_GROUP"); ok {
		if _, ok := env(sc, "INGEST_CONSUMER"); ok {
			t.Error("storage: INGEST_CONSUMER beside INGEST_GROUP, which replaces it")
		}
		if v, ok := envFrom(sc, "INGEST_GROUP_MEMBER"); !ok || v != "metadata.name" {
			t.Error("storage: INGEST_GROUP_MEMBER must be the pod name")
		}
		want = []string{g}
	} else {
		if v, ok := envFrom(sc, "INGEST_CONSUMER"); !ok || v != "metadata.name" {
			t.Fatal("storage: INGEST_CONSUMER must be the pod name")
		}
		for i := range sw.replicas {
			want = append(want, fmt.Sprintf("storage-%d", i))
		}
	}
	if got := mustEnv(t, c, "INGEST_CONSUMERS"); got != strings.Join(want, ",") {
		t.Errorf("middletier: INGEST_CONSUMERS=%q, want the storage replicas %q", got, strings.Join(want, ","))
	}
}

// middletierEndpoints are the endpoints of every middletier pod on the
// socket named port, by their stable DNS names, in ordinal order.
func middletierEndpoints(t *testing.T, o *objects, port string) string {
	w, c := statefulWorkload(t, o, "middletier")
	svc := o.statefulSets["middletier"].Spec.ServiceName
	var eps []string
	for i := range w.replicas {
		eps = append(eps, fmt.Sprintf("tcp://middletier-%d.%s:%d", i, svc, portNumber(c, port)))
	}
	return strings.Join(eps, ",")
}

func checkFeed(t *testing.T, o *objects) {
	d, ok := o.deployments["feed"]
	if !ok {
		t.Fatal("no Deployment feed")
	}
	w := workload{"Deployment", d.Name, *d.Spec.Replicas, &d.Spec.Template, nil}
	c := container(t, w)
	// The feed follows every middletier: its lists follow the replicas.
	if got, want := mustEnv(t, c, "INGEST_MIDDLETIERS"), middletierEndpoints(t, o, "feed"); got != want {
		t.Errorf("feed: INGEST_MIDDLETIERS=%q, want %q", got, want)
	}
	if got, want := mustEnv(t, c, "INGEST_MIDDLETIERS_CONSUMER"), middletierEndpoints(t, o, "consumer"); got != want {
		t.Errorf("feed: INGEST_MIDDLETIERS_CONSUMER=%q, want %q", got, want)
	}
	need := time.Duration(preStopSeconds(c))*time.Second + feed.DefaultOptions().WriteTimeout + time.Second
	if got := time.Duration(grace(w)) * time.Second; got < need {
		t.Errorf("feed: terminationGracePeriodSeconds %v < preStop + write timeout + 1s = %v", got, need)
	}
	regOnMount(t, o, w, c)
}

// regOnMount checks that the registry file is the ingest-registry
// ConfigMap's, mounted as a directory so that changes reach the pod.
func regOnMount(t *testing.T, o *objects, w workload, c *corev1.Container) {
	f := mustEnv(t, c, "INGEST_REGISTRY_FILE")
	for _, m := range c.VolumeMounts {
		if filepath.Dir(f) != m.MountPath || m.SubPath != "" {
			continue
		}
		for _, v := range w.pod.Spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				cm, ok := o.configMaps[v.ConfigMap.Name]
				if !ok || cm.Data[filepath.Base(f)] == "" {
					t.Errorf("%s: registry %s is not in ConfigMap %s", w.name, f, v.ConfigMap.Name)
				}
				return
			}
		}
	}
	t.Errorf("%s: registry %s is on no ConfigMap directory mount", w.name, f)
}

func checkStorage(t *testing.T, o *objects) {
	w, c := statefulWorkload(t, o, "storage")
	walOnClaim(t, w, c, mustEnv(t, c, "INGEST_DATA_DIR"))
	if got, want := mustEnv(t, c, "INGEST_MIDDLETIERS_STREAM"), middletierEndpoints(t, o, "stream"); got != want {
		t.Errorf("storage: INGEST_MIDDLETIERS_STREAM=%q, want %q", got, want)
	}
	if got, want := mustEnv(t, c, "INGEST_MIDDLETIERS_CONSUMER"), middletierEndpoints(t, o, "consumer"); got != want {
		t.Errorf("storage: INGEST_MIDDLETIERS_CONSUMER=%q, want %q", got, want)
	}
	regOnMount(t, o, w, c)
	// preStop, then up to 5s for queries in flight, then the TSDB closes.
	if need := preStopSeconds(c) + 5 + 10; grace(w) < need {
		t.Errorf("storage: terminationGracePeriodSeconds %d < preStop + query drain 5s + 10s to close the TSDB = %d", grace(w), need)
	}
	svc, ok := o.services["storage"]
	if !ok || !selectsMap(svc.Spec.Selector, w.pod.Labels) || len(svc.Spec.Ports) != 1 ||
		portNumber(c, svc.Spec.Ports[0].TargetPort.String()) != listenPort(t, "storage", c, "storage") {
		t.Fatal("no Service storage for the query API")
	}
	// Grafana's data source for the device data points at that Service.
	for _, cm := range o.configMaps {
		if cm.Labels["grafana_datasource"] != "1" {
			continue
		}
		for file, body := range cm.Data {
			var ds struct {
				Datasources []struct {
					Type, URL string
				} `json:"datasources"`
			}
			if err := yaml.Unmarshal([]byte(body), &ds); err != nil {
				t.Fatalf("data source %s/%s: %v", cm.Name, file, err)
			}
			if len(ds.Datasources) == 0 {
				t.Errorf("data source %s/%s defines none", cm.Name, file)
			}
			for _, d := range ds.Datasources {
				scheme := "http"
				if servesTLS(c) {
					scheme = "https"
				}
				want := fmt.Sprintf("%s://storage.%s.svc:%d", scheme, o.namespace, svc.Spec.Ports[0].Port)
				if sinks, ok := env(c, "INGEST_SINK"); ok && !slices.Contains(strings.Fields(sinks), "embedded") {
					// No embedded TSDB: Grafana reads the store the
					// writers write to.
					want = storeQueryURL(t, o, sinks)
				}
				if d.Type != "prometheus" || d.URL != want {
					t.Errorf("data source %s/%s: %s at %s, want prometheus at %s", cm.Name, file, d.Type, d.URL, want)
				}
			}
		}
	}
}

func selectsMap(sel, lbls map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	return labels.SelectorFromSet(sel).Matches(labels.Set(lbls))
}

func selects(t *testing.T, sel *metav1.LabelSelector, lbls map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	return s.Matches(labels.Set(lbls))
}

// tierOf names the tier a pod selector picks, or "" if it is not exactly
// one tier's pods.
func tierOf(t *testing.T, o *objects, sel *metav1.LabelSelector) string {
	var got []string
	for _, w := range o.workloads() {
		if selects(t, sel, w.pod.Labels) {
			got = append(got, w.name)
		}
	}
	if len(got) != 1 {
		return ""
	}
	return got[0]
}

func checkNetworkPolicies(t *testing.T, o *objects) {
	// Every pod of the engine is isolated for ingress.
	for _, w := range o.workloads() {
		isolated := false
		for _, np := range o.netpols {
			if selects(t, &np.Spec.PodSelector, w.pod.Labels) && slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				isolated = true
			}
		}
		if !isolated {
			t.Errorf("%s: no NetworkPolicy isolates its pods", w.name)
		}
	}
	// Who may reach each ZeroMQ port of the middletiers: exactly the tiers
	// listed, by pod selector in the namespace; never everyone, an IP
	// block or another namespace.
	mw, mc := statefulWorkload(t, o, "middletier")
	for _, z := range zmqPorts {
		port := portNumber(mc, z.name)
		allowed := map[string]bool{}
		for _, np := range o.netpols {
			if !selects(t, &np.Spec.PodSelector, mw.pod.Labels) {
				continue
			}
			for _, r := range np.Spec.Ingress {
				if !covers(r.Ports, port, z.name) {
					continue
				}
				if len(r.From) == 0 {
					t.Errorf("NetworkPolicy %s lets every source reach the middletiers' %s port %d", np.Name, z.name, port)
				}
				for _, peer := range r.From {
					if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
						t.Errorf("NetworkPolicy %s lets %+v reach the middletiers' %s port %d", np.Name, peer, z.name, port)
						continue
					}
					tier := tierOf(t, o, peer.PodSelector)
					if !slices.Contains(z.from, tier) {
						t.Errorf("NetworkPolicy %s lets %q (selector %v) reach the middletiers' %s port %d; only %v may", np.Name, tier, peer.PodSelector.MatchLabels, z.name, port, z.from)
					}
					allowed[tier] = true
				}
			}
		}
		for _, tier := range z.from {
			if _, deployed := tiers[tier]; deployed && hasWorkload(o, tier) && !allowed[tier] {
				t.Errorf("%s cannot reach the middletiers' %s port %d", tier, z.name, port)
			}
		}
	}
}

func hasWorkload(o *objects, name string) bool {
	_, s := o.statefulSets[name]
	_, d := o.deployments[name]
	return s || d
}

// covers reports whether a rule's ports include port (no ports: all).
func covers(ports []networkingv1.NetworkPolicyPort, port int32, name string) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Port == nil {
			return true
		}
		if p.Port.String() == name || p.Port.IntValue() == int(port) ||
			(p.EndPort != nil && p.Port.IntValue() <= int(port) && int(port) <= int(*p.EndPort)) {
			return true
		}
	}
	return false
}

func checkDisruption(t *testing.T, o *objects) {
	for _, w := range o.workloads() {
		var n int
		for _, p := range o.pdbs {
			if !selects(t, p.Spec.Selector, w.pod.Labels) {
				continue
			}
			n++
			// A budget that allows no disruption blocks node drains.
			if p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() >= int(w.replicas) ||
				p.Spec.MaxUnavailable != nil && p.Spec.MaxUnavailable.IntValue() < 1 {
				t.Errorf("PodDisruptionBudget %s allows no disruption of %s", p.Name, w.name)
			}
		}
		if n != 1 {
			t.Errorf("%s: %d PodDisruptionBudgets, want 1", w.name, n)
		}
	}
}

func checkAuth(t *testing.T, dir string, o *objects) {
	for _, w := range o.workloads() {
		c := container(t, w)
		f, ok := env(c, "INGEST_AUTH_HS256_SECRET_FILE")
		if !ok {
			continue
		}
		found := false
		for _, m := range c.VolumeMounts {
			if filepath.Dir(f) != m.MountPath {
				continue
			}
			for _, v := range w.pod.Spec.Volumes {
				if v.Name == m.Name && v.Secret != nil {
					found = true
					if s, ok := o.secrets[v.Secret.SecretName]; ok && len(strings.TrimSpace(string(s.Data[filepath.Base(f)]))) < 32 {
						t.Errorf("%s: Secret %s holds no HS256 secret of at least 32 bytes under %s", w.name, s.Name, filepath.Base(f))
					}
				}
			}
		}
		if !found {
			t.Errorf("%s: %s is not on a Secret volume", w.name, f)
		}
	}
	// The production overlay carries no secret material: the operator
	// creates the Secret.
	if filepath.Base(dir) == "production" && len(o.secrets) > 0 {
		t.Errorf("production renders Secrets %v: secrets do not belong in git", keys(o.secrets))
	}
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

// promParser parses the alerts' and the dashboard's expressions.
var promParser = parser.NewParser(parser.Options{})

func checkMonitoring(t *testing.T, o *objects) {
	if len(o.podMonitors) == 0 && len(o.rules) == 0 {
		return
	}
	// Every tier is scraped, on the port that serves /metrics.
	for _, w := range o.workloads() {
		c := container(t, w)
		n := 0
		for _, pm := range o.podMonitors {
			if !selects(t, &pm.Spec.Selector, w.pod.Labels) {
				continue
			}
			n++
			for _, ep := range pm.Spec.PodMetricsEndpoints {
				if ep.Port == nil || portNumber(c, *ep.Port) != listenPort(t, w.name, c, tiers[w.name]) {
					t.Errorf("PodMonitor %s scrapes %s on port %v, not the port serving /metrics", pm.Name, w.name, ep.Port)
				}
				if ep.Path != "" && ep.Path != "/metrics" {
					t.Errorf("PodMonitor %s: path %s", pm.Name, ep.Path)
				}
			}
			// job="ingest" in the alerts and the dashboard comes from here.
			if pm.Spec.JobLabel == "" || w.pod.Labels[pm.Spec.JobLabel] != "ingest" {
				t.Errorf("PodMonitor %s: job label from %q is %q, the alerts select job=\"ingest\"", pm.Name, pm.Spec.JobLabel, w.pod.Labels[pm.Spec.JobLabel])
			}
		}
		if n != 1 {
			t.Errorf("%s: %d PodMonitors, want 1", w.name, n)
		}
	}

	// The alerts parse, and the WAL-bound alert divides by the bounds the
	// workloads are given.
	bounds := map[string]float64{}
	for _, name := range []string{"frontend", "middletier"} {
		_, c := statefulWorkload(t, o, name)
		b, err := strconv.ParseFloat(mustEnv(t, c, "INGEST_WAL_MAX_BYTES"), 64)
		if err != nil {
			t.Fatal(err)
		}
		bounds[name] = b
	}
	found := false
	for _, r := range ruleExprs(t, o) {
		if r.alert != "IngestWALNearBound" {
			continue
		}
		found = true
		got := map[string]float64{}
		parser.Inspect(r.expr, func(n parser.Node, _ []parser.Node) error {
			b, ok := n.(*parser.BinaryExpr)
			if !ok || b.Op != parser.DIV {
				return nil
			}
			vs, ok1 := b.LHS.(*parser.VectorSelector)
			num, ok2 := b.RHS.(*parser.NumberLiteral)
			if ok1 && ok2 && vs.Name == "ingest_queue_depth_bytes" {
				for _, m := range vs.LabelMatchers {
					if m.Name == "hop" {
						got[m.Value] = num.Val
					}
				}
			}
			return nil
		})
		for hop, b := range bounds {
			if math.Abs(got[hop]-b) > 0.5 {
				t.Errorf("IngestWALNearBound divides the %s WAL's depth by %v, its bound is %v", hop, got[hop], b)
			}
		}
	}
	if !found {
		t.Error("no alert IngestWALNearBound")
	}
	for _, want := range []string{"IngestQueueDepthGrowing", "IngestConsumerLag", "IngestWriterGroupEmpty", "IngestWALFull", "IngestWALFailed", "IngestDiskFull", "IngestSlowFsync", "IngestRestarting"} {
		if !slices.ContainsFunc(ruleExprs(t, o), func(r rule) bool { return r.alert == want }) {
			t.Errorf("no alert %s", want)
		}
	}
	// A full disk is told for every tier that writes one: the WALs, the
	// middletier's state file and the embedded TSDB.
	for _, r := range ruleExprs(t, o) {
		if r.alert != "IngestDiskFull" {
			continue
		}
		sel := map[string]bool{}
		parser.Inspect(r.expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				sel[vs.Name] = true
			}
			return nil
		})
		for _, m := range []string{"ingest_wal_no_space", "ingest_middletier_state_no_space", "ingest_storage_tsdb_no_space"} {
			if !sel[m] {
				t.Errorf("IngestDiskFull does not select %s", m)
			}
		}
	}
	if len(dashboardExprs(t, o)) == 0 {
		t.Error("no Grafana dashboard")
	}
	checkDashboardShows(t, dashboardExprs(t, o))
	checkFleetDashboard(t, o)
}

// dashboardShows is what the dashboard must show: a metric, the function
// it is seen through ("" for its value) and a label it keeps ("" for
// none).
var dashboardShows = []struct {
	what, metric, fn, keeps string
}{
	{"connections", "ingest_frontend_connections", "", ""},
	{"message rates", "ingest_frontend_messages_received_total", "rate", ""},
	{"acknowledged rates", "ingest_frontend_messages_acked_total", "rate", ""},
	{"queue depth per hop", "ingest_queue_depth_entries", "", "hop"},
	{"ack latency", "ingest_frontend_ack_latency_seconds_bucket", "histogram_quantile", ""},
	{"end-to-end latency", "ingest_feed_dispatch_latency_seconds_bucket", "histogram_quantile", ""},
	{"rejected messages", "ingest_frontend_messages_rejected_total", "rate", "code"},
	{"WAL failures", "ingest_wal_failed", "", "hop"},
	{"consumer lag", "ingest_middletier_consumer_lag_entries", "", "consumer"},
	// The fleet dashboard. A metric "" is a selector of every field.
	{"messages per device", "", "count_over_time", "device"},
	{"messages per group", "", "count_over_time", "group"},
	{"top talkers", "", "topk", ""},
	{"latest values per device", "", "last_over_time", ""},
	{"device latitudes", "lat", "last_over_time", ""},
	{"device longitudes", "lon", "last_over_time", ""},
	{"handshakes refused by reason", "ingest_frontend_handshakes_rejected_total", "rate", "reason"},
}

// checkFleetDashboard checks what the expressions do not show of the fleet
// dashboard: every query names its data source, the device data's
// variable defaults to the provisioned data source, and a geomap panel
// places markers by the columns its lat and lon queries become.
func checkFleetDashboard(t *testing.T, o *objects) {
	t.Helper()
	uids := map[string]bool{}
	for _, cm := range o.configMaps {
		if cm.Labels["grafana_datasource"] != "1" {
			continue
		}
		for _, body := range cm.Data {
			var ds struct {
				Datasources []struct{ UID string } `json:"datasources"`
			}
			if err := yaml.Unmarshal([]byte(body), &ds); err != nil {
				t.Fatal(err)
			}
			for _, d := range ds.Datasources {
				uids[d.UID] = true
			}
		}
	}
	type fleetPanel struct {
		Type       string               `json:"type"`
		Title      string               `json:"title"`
		Datasource *dashboardDatasource `json:"datasource"`
		Targets    []struct {
			RefID      string               `json:"refId"`
			Expr       string               `json:"expr"`
			Datasource *dashboardDatasource `json:"datasource"`
		} `json:"targets"`
		Transformations []struct {
			ID      string          `json:"id"`
			Options json.RawMessage `json:"options"`
		} `json:"transformations"`
		Options struct {
			Layers []struct {
				Type     string `json:"type"`
				Location struct {
					Mode      string `json:"mode"`
					Latitude  string `json:"latitude"`
					Longitude string `json:"longitude"`
				} `json:"location"`
			} `json:"layers"`
		} `json:"options"`
	}
	found := false
	for _, cm := range o.configMaps {
		if cm.Labels["grafana_dashboard"] != "1" {
			continue
		}
		for file, body := range cm.Data {
			var d struct {
				UID        string       `json:"uid"`
				Panels     []fleetPanel `json:"panels"`
				Templating struct {
					List []struct {
						Name    string `json:"name"`
						Type    string `json:"type"`
						Current struct {
							Value string `json:"value"`
						} `json:"current"`
					} `json:"list"`
				} `json:"templating"`
			}
			if err := json.Unmarshal([]byte(body), &d); err != nil {
				t.Fatalf("dashboard %s/%s: %v", cm.Name, file, err)
			}
			if d.UID != "ingest-fleet" {
				continue
			}
			found = true
			for _, v := range d.Templating.List {
				if v.Name == "devices" && (v.Type != "datasource" || !uids[v.Current.Value]) {
					t.Errorf("fleet dashboard: variable devices is a %s defaulting to %q, want a data source variable defaulting to one provisioned (%v)", v.Type, v.Current.Value, keys(uids))
				}
			}
			geomap := false
			for _, p := range d.Panels {
				for _, tg := range p.Targets {
					ds := tg.Datasource
					if ds == nil {
						ds = p.Datasource
					}
					if ds == nil || (ds.UID != "${devices}" && ds.UID != "${datasource}") {
						t.Errorf("fleet dashboard, panel %q: target %s reads %+v, want ${devices} or ${datasource}", p.Title, tg.RefID, ds)
					}
				}
				if p.Type != "geomap" {
					continue
				}
				// The lat query's values become the column lat, the lon
				// query's lon, and the markers are placed by them.
				refs := map[string]string{}
				for _, tg := range p.Targets {
					for _, sel := range vectorSelectors(mustParse(t, tg.Expr)) {
						refs[sel.Name] = "Value #" + tg.RefID
					}
				}
				renamed := map[string]string{}
				for _, tr := range p.Transformations {
					var opt struct {
						RenameByName map[string]string `json:"renameByName"`
					}
					if tr.ID == "organize" && json.Unmarshal(tr.Options, &opt) == nil {
						maps.Copy(renamed, opt.RenameByName)
					}
				}
				for _, l := range p.Options.Layers {
					if l.Type == "markers" && l.Location.Mode == "coords" &&
						renamed[refs["lat"]] == l.Location.Latitude && renamed[refs["lon"]] == l.Location.Longitude && l.Location.Latitude != "" {
						geomap = true
					}
				}
			}
			if !geomap {
				t.Error("fleet dashboard: no geomap panel with markers placed by the columns of its lat and lon queries")
			}
		}
	}
	if !found {
		t.Error("no fleet dashboard (uid ingest-fleet)")
	}
}

func mustParse(t *testing.T, expr string) parser.Expr {
	t.Helper()
	e, err := promParser.ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	return e
}

func checkDashboardShows(t *testing.T, exprs []rule) {
	t.Helper()
	for _, want := range dashboardShows {
		found := false
		for _, r := range exprs {
			if !strings.HasPrefix(r.alert, "panel ") {
				continue // a variable's query shows nothing
			}
			parser.Inspect(r.expr, func(n parser.Node, path []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok || vs.Name != want.metric {
					return nil
				}
				fnOK, keeps := want.fn == "", true
				for _, a := range path {
					switch a := a.(type) {
					case *parser.Call:
						fnOK = fnOK || a.Func.Name == want.fn
					case *parser.AggregateExpr:
						fnOK = fnOK || a.Op.String() == want.fn
						if want.keeps != "" && slices.Contains(a.Grouping, want.keeps) == a.Without {
							keeps = false
						}
					}
				}
				found = found || fnOK && keeps
				return nil
			})
		}
		if !found {
			t.Errorf("the dashboard does not show %s: no panel has %s(%s) keeping label %q", want.what, want.fn, want.metric, want.keeps)
		}
	}
}

// rule is an expression of an alert, a dashboard panel or a dashboard
// variable; devices says it reads the device data (the embedded store's
// query API), not the engine's metrics.
type rule struct {
	alert, text string
	expr        parser.Expr
	devices     bool
}

func ruleExprs(t *testing.T, o *objects) []rule {
	t.Helper()
	var rs []rule
	for _, pr := range o.rules {
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				e, err := promParser.ParseExpr(r.Expr.String())
				if err != nil {
					t.Fatalf("PrometheusRule %s, %s: %q: %v", pr.Name, r.Alert, r.Expr.String(), err)
				}
				rs = append(rs, rule{alert: r.Alert, text: r.Expr.String(), expr: e})
			}
		}
	}
	return rs
}

// grafanaVars stand in for Grafana's variables so that the expressions
// parse as Prometheus sees them. The fleet dashboard's device and group
// stand for the device TestMetricsExist sends as and the group the
// registry gives it (fleetDevice), its fields for every field and one the
// device sends.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "$namespace", "ingest",
	"$device", fleetDevice, "$group", fleetGroup, "$field", ".+", "$count_field", "lat")

// The device of TestMetricsExist, and its group in the storage tier's
// registry.
const fleetDevice, fleetGroup = "k8s-1", "trucks"

// dashboardDatasource is a panel's, a target's or a variable's data
// source.
type dashboardDatasource struct {
	UID string `json:"uid"`
}

// devices says whether a data source is the device data: the fleet
// dashboard's variable for it, or the provisioned data source itself.
// Every other one is the engine's metrics (the engine dashboard's
// variable ${datasource}, a Prometheus that scrapes the tiers).
func (d *dashboardDatasource) devices() bool {
	return d != nil && (d.UID == "${devices}" || d.UID == "ingest-devices")
}

// dashboardPanel is the part of a Grafana panel the checks read; a row
// (collapsed or not) may hold its panels inside it. A target without a
// data source of its own uses the panel's.
type dashboardPanel struct {
	Title      string               `json:"title"`
	Datasource *dashboardDatasource `json:"datasource"`
	Targets    []struct {
		Expr       string               `json:"expr"`
		Datasource *dashboardDatasource `json:"datasource"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"`
}

// labelValues is a Grafana variable's label_values(selector, label) query.
var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// dashboardExprs are the PromQL expressions of every dashboard's panels
// (those inside rows included) and of its variables' label_values
// queries.
func dashboardExprs(t *testing.T, o *objects) []rule {
	t.Helper()
	var rs []rule
	for _, cm := range o.configMaps {
		if cm.Labels["grafana_dashboard"] != "1" {
			continue
		}
		for file, body := range cm.Data {
			var d struct {
				Title      string           `json:"title"`
				Panels     []dashboardPanel `json:"panels"`
				Templating struct {
					List []struct {
						Name       string               `json:"name"`
						Type       string               `json:"type"`
						Query      json.RawMessage      `json:"query"`
						Datasource *dashboardDatasource `json:"datasource"`
					} `json:"list"`
				} `json:"templating"`
			}
			if err := json.Unmarshal([]byte(body), &d); err != nil {
				t.Fatalf("dashboard %s/%s: %v", cm.Name, file, err)
			}
			add := func(what, text string, devices bool) {
				e, err := promParser.ParseExpr(grafanaVars.Replace(text))
				if err != nil {
					t.Fatalf("dashboard %s, %s: %q: %v", d.Title, what, text, err)
				}
				rs = append(rs, rule{alert: what, text: text, expr: e, devices: devices})
			}
			var walk func([]dashboardPanel)
			walk = func(ps []dashboardPanel) {
				for _, p := range ps {
					for _, tg := range p.Targets {
						ds := tg.Datasource
						if ds == nil {
							ds = p.Datasource
						}
						add(fmt.Sprintf("panel %q", p.Title), tg.Expr, ds.devices())
					}
					walk(p.Panels)
				}
			}
			walk(d.Panels)
			for _, v := range d.Templating.List {
				if v.Type != "query" {
					continue
				}
				// The query is a string, or an object with one.
				var q string
				if json.Unmarshal(v.Query, &q) != nil {
					var qo struct {
						Query string `json:"query"`
					}
					if err := json.Unmarshal(v.Query, &qo); err != nil {
						t.Fatalf("dashboard %s, variable %s: query %s: %v", d.Title, v.Name, v.Query, err)
					}
					q = qo.Query
				}
				m := labelValues.FindStringSubmatch(q)
				if m == nil {
					t.Fatalf("dashboard %s, variable %s: %q is no label_values(selector, label) query", d.Title, v.Name, q)
				}
				add("variable "+v.Name, m[1], v.Datasource.devices())
			}
		}
	}
	return rs
}
