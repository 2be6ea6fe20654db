// Package k8s_test renders every overlay of deploy/k8s with kustomize (as a
// library), decodes every object strictly into the Kubernetes and
// Prometheus Operator API types, and checks the invariants the manifests
// promise: every WAL on a PersistentVolumeClaim, probes on the ports the
// binaries serve them on, a grace period that covers the drain, the
// NetworkPolicies around the unencrypted ZeroMQ ports, a restrictive
// securityContext, every flag from a real environment twin, and every
// metric the alerts and the dashboard name present on the binaries'
// /metrics.
package k8s_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// overlays are every directory under overlays/.
func overlays(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob("overlays/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no overlays: %v", err)
	}
	return dirs
}

// objects is one rendered overlay, decoded.
type objects struct {
	all          []runtime.Object
	statefulSets map[string]*appsv1.StatefulSet
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	netpols      []*networkingv1.NetworkPolicy
	pdbs         []*policyv1.PodDisruptionBudget
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	ingresses    []*networkingv1.Ingress
	podMonitors  []*monitoringv1.PodMonitor
	rules        []*monitoringv1.PrometheusRule
	namespace    string
}

// workload is a pod template with its name and kind, for checks that hold
// for every tier.
type workload struct {
	kind, name string
	replicas   int32
	pod        *corev1.PodTemplateSpec
	claims     []corev1.PersistentVolumeClaim
}

// engineLabel is the app.kubernetes.io/name of the engine's own pods; the
// store's pods (components/victoriametrics) have names of their own and
// app.kubernetes.io/part-of: ingest.
const engineLabel = "ingest"

// workloads are the engine's tiers: the workloads whose pods are labelled
// app.kubernetes.io/name: ingest.
func (o *objects) workloads() []workload {
	return o.workloadsWhere(func(l map[string]string) bool { return l["app.kubernetes.io/name"] == engineLabel })
}

// storeWorkloads are the workloads of a store deployed beside the engine:
// part of it, not its tiers.
func (o *objects) storeWorkloads() []workload {
	return o.workloadsWhere(func(l map[string]string) bool {
		return l["app.kubernetes.io/name"] != engineLabel && l["app.kubernetes.io/part-of"] == engineLabel
	})
}

func (o *objects) workloadsWhere(pick func(map[string]string) bool) []workload {
	var w []workload
	for _, s := range o.statefulSets {
		if pick(s.Spec.Template.Labels) {
			w = append(w, workload{"StatefulSet", s.Name, *s.Spec.Replicas, &s.Spec.Template, s.Spec.VolumeClaimTemplates})
		}
	}
	for _, d := range o.deployments {
		if pick(d.Spec.Template.Labels) {
			w = append(w, workload{"Deployment", d.Name, *d.Spec.Replicas, &d.Spec.Template, nil})
		}
	}
	sort.Slice(w, func(i, j int) bool { return w[i].name < w[j].name })
	return w
}

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme,
		autoscalingv2.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// render runs kustomize on dir and decodes every object strictly: an
// unknown kind, an unknown or duplicate field, or a wrong type fails.
func render(t *testing.T, dir string) *objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	dec := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Yaml: true, Strict: true})
	o := &objects{
		statefulSets: map[string]*appsv1.StatefulSet{}, deployments: map[string]*appsv1.Deployment{},
		services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
	}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", dir, r.CurId(), err)
		}
		obj, _, err := dec.Decode(y, nil, nil)
		if err != nil {
			t.Fatalf("%s: decode %s strictly: %v\n%s", dir, r.CurId(), err, y)
		}
		o.all = append(o.all, obj)
		switch v := obj.(type) {
		case *appsv1.StatefulSet:
			o.statefulSets[v.Name] = v
		case *appsv1.Deployment:
			o.deployments[v.Name] = v
		case *corev1.Service:
			o.services[v.Name] = v
		case *corev1.ConfigMap:
			o.configMaps[v.Name] = v
		case *corev1.Secret:
			o.secrets[v.Name] = v
		case *corev1.Namespace:
			o.namespace = v.Name
		case *networkingv1.NetworkPolicy:
			o.netpols = append(o.netpols, v)
		case *policyv1.PodDisruptionBudget:
			o.pdbs = append(o.pdbs, v)
		case *autoscalingv2.HorizontalPodAutoscaler:
			o.hpas = append(o.hpas, v)
		case *monitoringv1.PodMonitor:
			o.podMonitors = append(o.podMonitors, v)
		case *monitoringv1.PrometheusRule:
			o.rules = append(o.rules, v)
		case *networkingv1.Ingress:
			o.ingresses = append(o.ingresses, v)
		case *corev1.ServiceAccount:
		default:
			t.Fatalf("%s: %T has no check in this test: add one", dir, obj)
		}
	}
	if o.namespace == "" {
		t.Fatalf("%s: no Namespace object", dir)
	}
	return o
}

// The tiers and the subcommand each runs.
var tiers = map[string]string{"frontend": "frontend", "middletier": "middletier", "storage": "storage", "feed": "feed"}

func container(t *testing.T, w workload) *corev1.Container {
	t.Helper()
	if len(w.pod.Spec.Containers) != 1 {
		t.Fatalf("%s %s: %d containers, want 1", w.kind, w.name, len(w.pod.Spec.Containers))
	}
	return &w.pod.Spec.Containers[0]
}

func env(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// helpEnv lists the INGEST_ variables `ingest <sub> --help` documents.
var helpEnvCache = map[string][]string{}

func helpEnv(t *testing.T, sub string) []string {
	t.Helper()
	if v, ok := helpEnvCache[sub]; ok {
		return v
	}
	out, err := exec.Command(binPath, sub, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("ingest %s --help: %v\n%s", sub, err, out)
	}
	names := regexp.MustCompile(`\((INGEST_[A-Z0-9_]+)\)`).FindAllStringSubmatch(string(out), -1)
	var v []string
	for _, n := range names {
		v = append(v, n[1])
	}
	if len(v) == 0 {
		t.Fatalf("ingest %s --help lists no environment variables:\n%s", sub, out)
	}
	helpEnvCache[sub] = v
	return v
}

// TestRenderAll renders every overlay and checks the invariants common to
// all of them.
func TestRenderAll(t *testing.T) {
	for _, dir := range overlays(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			o := render(t, dir)
			checkTiers(t, dir, o)
			checkMonitoring(t, o)
			checkTLS(t, o)
		})
	}
}

// checkTiers holds the rendered overlay (or overlay and components) o to
// what every one must be: its workloads, each tier, the network policies,
// the disruption budgets and auth (of the overlay named by overlay).
func checkTiers(t *testing.T, overlay string, o *objects) {
	t.Helper()
	checkWorkloads(t, o)
	checkFrontend(t, o)
	checkMiddletier(t, o)
	checkFeed(t, o)
	checkStorage(t, o)
	checkNetworkPolicies(t, o)
	checkDisruption(t, o)
	checkAuth(t, overlay, o)
}

func checkWorkloads(t *testing.T, o *objects) {
	// Every workload is a tier of the engine or part of a store beside
	// it, told apart by its labels; none is left unchecked.
	if n, known := len(o.statefulSets)+len(o.deployments), len(o.workloads())+len(o.storeWorkloads()); n != known {
		t.Errorf("%d workloads, %d of them labelled app.kubernetes.io/name: ingest or app.kubernetes.io/part-of: ingest", n, known)
	}
	ws := o.workloads()
	var names []string
	for _, w := range ws {
		names = append(names, w.name)
	}
	for _, want := range deployedTiers() {
		if !slices.Contains(names, want) {
			t.Errorf("no workload %q (have %v)", want, names)
		}
	}
	for _, w := range ws {
		sub, ok := tiers[w.name]
		if !ok {
			t.Errorf("%s %s: not a tier", w.kind, w.name)
			continue
		}
		c := container(t, w)
		spec := w.pod.Spec
		where := w.kind + " " + w.name

		// Every flag from its environment twin, and only real twins:
		// parseFlags ignores an INGEST_ variable no flag has.
		if len(c.Command) != 0 || !slices.Equal(c.Args, []string{sub}) {
			t.Errorf("%s: command %q args %q, want only the subcommand %q (flags come from env)", where, c.Command, c.Args, sub)
		}
		known := helpEnv(t, sub)
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "INGEST_") && !slices.Contains(known, e.Name) {
				t.Errorf("%s: %s is no flag of ingest %s (it has %v)", where, e.Name, sub, known)
			}
		}
		if slices.Contains(known, "INGEST_ID") {
			if id, ok := envFrom(c, "INGEST_ID"); !ok || id != "metadata.name" {
				t.Errorf("%s: INGEST_ID must come from the pod name (downward API)", where)
			}
		}

		// A pinned image; storage's with the embedded TSDB (the slim
		// image, -tags nostorage, refuses the storage subcommand).
		if ref := c.Image; ref == "" || strings.HasSuffix(ref, ":latest") || !strings.ContainsAny(ref[strings.LastIndex(ref, "/")+1:], ":@") {
			t.Errorf("%s: image %q has no tag or digest", where, ref)
		} else if sub == "storage" && strings.Contains(ref[strings.LastIndex(ref, "/")+1:], "slim") {
			t.Errorf("%s: image %q is the slim one, without the storage subcommand", where, ref)
		}

		// A restrictive securityContext.
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
			psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod securityContext %+v: want runAsNonRoot, a non-zero runAsUser, seccomp RuntimeDefault", where, psc)
		}
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			(sc.Privileged != nil && *sc.Privileged) || sc.Capabilities == nil ||
			!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
			(sc.RunAsUser != nil && *sc.RunAsUser == 0) {
			t.Errorf("%s: container securityContext %+v: want no privilege escalation, read-only root, drop ALL", where, sc)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: mounts a service account token; the engine never calls the API", where)
		}
		if spec.HostNetwork || spec.HostPID || spec.HostIPC {
			t.Errorf("%s: uses host namespaces", where)
		}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				t.Errorf("%s: hostPath volume %s", where, v.Name)
			}
		}
		checkVolumesReadable(t, where, spec, c)

		// Requests and limits for CPU and memory, requests within limits.
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okr := c.Resources.Requests[r]
			lim, okl := c.Resources.Limits[r]
			if !okr || !okl {
				t.Errorf("%s: %s request or limit missing", where, r)
			} else if req.Cmp(lim) > 0 {
				t.Errorf("%s: %s request %s above limit %s", where, r, req.String(), lim.String())
			}
		}

		// Probes on /healthz and /readyz, on the port the binary serves
		// them on.
		httpPort := listenPort(t, where, c, sub)
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s: no HTTP %s probe", where, p.name)
				continue
			}
			if p.probe.HTTPGet.Path != p.path {
				t.Errorf("%s: %s probe on %s, want %s", where, p.name, p.probe.HTTPGet.Path, p.path)
			}
			if got := portNumber(c, p.probe.HTTPGet.Port.String()); got != httpPort {
				t.Errorf("%s: %s probe on port %d, the binary serves it on %d", where, p.name, got, httpPort)
			}
		}
		if sp := c.StartupProbe; sp != nil && (sp.HTTPGet == nil || sp.HTTPGet.Path != "/healthz" || portNumber(c, sp.HTTPGet.Port.String()) != httpPort) {
			t.Errorf("%s: startup probe %+v, want /healthz on %d", where, sp.HTTPGet, httpPort)
		}

		// Graceful termination: a preStop hook, and a grace period longer
		// than it.
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
			t.Errorf("%s: no preStop hook", where)
		}
		if preStopSeconds(c) >= grace(w) {
			t.Errorf("%s: grace period %ds does not outlast preStop %ds", where, grace(w), preStopSeconds(c))
		}
	}
}

// checkVolumesReadable checks that the container's user can read the
// files of every Secret and ConfigMap volume it mounts. The kubelet writes
// them owned by root, with the volume's mode (0644 unless defaultMode or
// an item says otherwise), and gives their group to the pod's fsGroup if
// it has one: a mode that lets others read nothing (0440) is readable by
// a user who is not root only through that group.
func checkVolumesReadable(t *testing.T, where string, spec corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	uid := int64(0)
	if sc := spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
		uid = *sc.RunAsUser
	}
	if sc := c.SecurityContext; sc != nil && sc.RunAsUser != nil {
		uid = *sc.RunAsUser
	}
	fsGroup := spec.SecurityContext != nil && spec.SecurityContext.FSGroup != nil
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = true
	}
	for _, v := range spec.Volumes {
		if !mounted[v.Name] {
			continue
		}
		var modes []int32
		add := func(def *int32, items []corev1.KeyToPath) {
			mode := int32(0o644)
			if def != nil {
				mode = *def
			}
			modes = append(modes, mode)
			for _, it := range items {
				if it.Mode != nil {
					modes = append(modes, *it.Mode)
				}
			}
		}
		switch {
		case v.Secret != nil:
			add(v.Secret.DefaultMode, v.Secret.Items)
		case v.ConfigMap != nil:
			add(v.ConfigMap.DefaultMode, v.ConfigMap.Items)
		default:
			continue
		}
		for _, mode := range modes {
			switch {
			case uid == 0, mode&0o004 != 0:
			case mode&0o040 != 0 && fsGroup:
			default:
				t.Errorf("%s: volume %s has mode %#o, owned by root, and the pod has no fsGroup: user %d cannot read its files", where, v.Name, mode, uid)
			}
		}
	}
}

func envFrom(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath, true
		}
	}
	return "", false
}

// listenPort is the port each subcommand serves /healthz, /readyz and
// /metrics on, from its listen flag's environment twin.
func listenPort(t *testing.T, where string, c *corev1.Container, sub string) int32 {
	t.Helper()
	name := map[string]string{"frontend": "INGEST_LISTEN", "feed": "INGEST_LISTEN", "middletier": "INGEST_HTTP_LISTEN", "storage": storageHTTPEnv}[sub]
	v, ok := env(c, name)
	if !ok {
		t.Fatalf("%s: %s not set: the probes' port would depend on a default", where, name)
	}
	var p int32
	if _, err := fmt.Sscanf(v[strings.LastIndex(v, ":")+1:], "%d", &p); err != nil {
		t.Fatalf("%s: %s=%q: %v", where, name, v, err)
	}
	if portNumber(c, fmt.Sprint(p)) != p {
		t.Errorf("%s: port %d of %s is not a containerPort", where, p, name)
	}
	return p
}

// portNumber resolves a probe's or monitor's port (a name or a number)
// against the container's ports; 0 if it is not one of them.
func portNumber(c *corev1.Container, port string) int32 {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return p.ContainerPort
		}
	}
	return 0
}

func preStopSeconds(c *corev1.Container) int64 {
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		return 0
	}
	return c.Lifecycle.PreStop.Sleep.Seconds
}

func grace(w workload) int64 {
	if w.pod.Spec.TerminationGracePeriodSeconds == nil {
		return 30
	}
	return *w.pod.Spec.TerminationGracePeriodSeconds
}

// walOnClaim checks that dir is on a volume from the StatefulSet's
// volumeClaimTemplates.
func walOnClaim(t *testing.T, w workload, c *corev1.Container, dir string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if dir != m.MountPath && !strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, pvc := range w.claims {
			if pvc.Name == m.Name {
				if slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) || slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOncePod) {
					return
				}
				t.Errorf("%s: claim %s is not ReadWriteOnce", w.name, pvc.Name)
				return
			}
		}
		t.Errorf("%s: %s is on volume %s, not on a PersistentVolumeClaim", w.name, dir, m.Name)
		return
	}
	t.Errorf("%s: %s is on no volume (the root file system is read-only)", w.name, dir)
}

func statefulWorkload(t *testing.T, o *objects, name string) (workload, *corev1.Container) {
	t.Helper()
	s, ok := o.statefulSets[name]
	if !ok {
		t.Fatalf("%s is not a StatefulSet", name)
	}
	w := workload{"StatefulSet", s.Name, *s.Spec.Replicas, &s.Spec.Template, s.Spec.VolumeClaimTemplates}
	return w, container(t, w)
}

func mustEnv(t *testing.T, c *corev1.Container, name string) string {
	t.Helper()
	v, ok := env(c, name)
	if !ok || v == "" {
		t.Fatalf("%s: %s not set", c.Name, name)
	}
	return v
}
