package k8s_test

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// vmWrite is the remote-write URL of a VictoriaMetrics cluster's vminsert
// Service: tenant in the path.
var vmWrite = regexp.MustCompile(`^remotewrite\+http://vminsert:(\d+)/insert/(\d+)/prometheus/api/v1/write(#.*)?$`)

// storeQueryURL is the query URL Grafana must read when the storage
// writers write through sinks (INGEST_SINK) and keep no embedded TSDB: the
// vmselect Service, for the tenant the writers write to on the vminsert
// Service.
func storeQueryURL(t *testing.T, o *objects, sinks string) string {
	t.Helper()
	var want string
	for _, s := range strings.Fields(sinks) {
		m := vmWrite.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("storage: sink %q writes to no vminsert Service; the manifests know no other store", s)
			continue
		}
		ins, ok := o.services["vminsert"]
		if !ok || len(ins.Spec.Ports) != 1 || fmt.Sprint(ins.Spec.Ports[0].Port) != m[1] {
			t.Errorf("storage: sink %q, but no Service vminsert on port %s", s, m[1])
		}
		sel, ok := o.services["vmselect"]
		if !ok || len(sel.Spec.Ports) != 1 {
			t.Fatal("no Service vmselect for Grafana's data source")
		}
		want = fmt.Sprintf("http://vmselect.%s.svc:%d/select/%s/prometheus", o.namespace, sel.Spec.Ports[0].Port, m[2])
	}
	return want
}

// flagValue is the value of -name=value among a VictoriaMetrics
// container's args.
func flagValue(c *corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "-"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// checkStores checks the workloads of a store beside the engine (the
// VictoriaMetrics cluster): pinned official images, the engine's
// securityContext, resources, probes on a container port, a grace period
// that outlasts preStop, one PodDisruptionBudget and an isolating
// NetworkPolicy each, vmstorage's data on its claims, and vminsert and
// vmselect naming every vmstorage node on its ports.
func checkStores(t *testing.T, o *objects) {
	ws := o.storeWorkloads()
	byName := map[string]workload{}
	for _, w := range ws {
		byName[w.name] = w
		c := container(t, w)
		where := w.kind + " " + w.name
		if w.pod.Labels["app.kubernetes.io/name"] != w.name {
			t.Errorf("%s: labelled app.kubernetes.io/name %q", where, w.pod.Labels["app.kubernetes.io/name"])
		}
		if want := regexp.MustCompile(`^victoriametrics/` + regexp.QuoteMeta(w.name) + `:v\d+\.\d+\.\d+-cluster$`); !want.MatchString(c.Image) {
			t.Errorf("%s: image %q, want victoriametrics/%s at a pinned -cluster tag", where, c.Image, w.name)
		}
		psc, sc := w.pod.Spec.SecurityContext, c.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
			psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod securityContext %+v", where, psc)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil ||
			!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
			t.Errorf("%s: container securityContext %+v", where, sc)
		}
		if w.pod.Spec.AutomountServiceAccountToken == nil || *w.pod.Spec.AutomountServiceAccountToken {
			t.Errorf("%s: mounts a service account token", where)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okr := c.Resources.Requests[r]
			lim, okl := c.Resources.Limits[r]
			if !okr || !okl || req.Cmp(lim) > 0 {
				t.Errorf("%s: %s request %v and limit %v", where, r, req.String(), lim.String())
			}
		}
		listen, ok := flagValue(c, "httpListenAddr")
		if !ok {
			t.Errorf("%s: no -httpListenAddr: the probes' port would depend on a default", where)
		}
		httpPort := portNumber(c, listen[strings.LastIndex(listen, ":")+1:])
		if httpPort == 0 {
			t.Errorf("%s: -httpListenAddr=%s is not a containerPort", where, listen)
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/health" || portNumber(c, p.HTTPGet.Port.String()) != httpPort {
				t.Errorf("%s: probe %+v, want /health on %d", where, p, httpPort)
			}
		}
		if preStopSeconds(c) == 0 || preStopSeconds(c) >= grace(w) {
			t.Errorf("%s: preStop %ds, grace period %ds", where, preStopSeconds(c), grace(w))
		}
		// Writable paths are volumes: the root file system is read-only.
		for _, flag := range []string{"storageDataPath", "cacheDataPath"} {
			if dir, ok := flagValue(c, flag); ok && !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == dir }) {
				t.Errorf("%s: -%s=%s is on no volume", where, flag, dir)
			}
		}
		pdbs := 0
		for _, p := range o.pdbs {
			if selects(t, p.Spec.Selector, w.pod.Labels) {
				pdbs++
			}
		}
		if pdbs != 1 {
			t.Errorf("%s: %d PodDisruptionBudgets, want 1", where, pdbs)
		}
		isolated := false
		for _, np := range o.netpols {
			isolated = isolated || selects(t, &np.Spec.PodSelector, w.pod.Labels) && slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		}
		if !isolated {
			t.Errorf("%s: no NetworkPolicy isolates its pods", where)
		}
	}
	st, ok := byName["vmstorage"]
	if !ok || st.kind != "StatefulSet" {
		t.Fatalf("vmstorage is not a StatefulSet")
	}
	sc := container(t, st)
	dataDir, _ := flagValue(sc, "storageDataPath")
	walOnClaim(t, st, sc, dataDir)
	svc := o.statefulSets["vmstorage"].Spec.ServiceName
	if s, ok := o.services[svc]; !ok || s.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("vmstorage's serviceName %q is no headless Service", svc)
	}
	// A writer that stores again what it stored before its crash or a
	// takeover repeats samples, which the engine's stores take once
	// (docs/storage-sinks.md); VictoriaMetrics keeps every repeat unless
	// deduplication is on, on vmstorage and vmselect alike, at an interval
	// no longer than the closest two messages of a device can be.
	for _, name := range []string{"vmstorage", "vmselect"} {
		w, ok := byName[name]
		if !ok {
			continue
		}
		v, _ := flagValue(container(t, w), "dedup.minScrapeInterval")
		if d, err := time.ParseDuration(v); err != nil || d <= 0 || d > time.Millisecond {
			t.Errorf("%s: -dedup.minScrapeInterval=%q: want a positive interval of at most 1ms, or the samples a writer stores again are kept twice", name, v)
		}
	}
	for name, port := range map[string]string{"vminsert": "vminsert", "vmselect": "vmselect"} {
		w, ok := byName[name]
		if !ok {
			t.Errorf("no %s", name)
			continue
		}
		var want []string
		for i := range st.replicas {
			want = append(want, fmt.Sprintf("vmstorage-%d.%s:%d", i, svc, portNumber(sc, port)))
		}
		if got, _ := flagValue(container(t, w), "storageNode"); got != strings.Join(want, ",") {
			t.Errorf("%s: -storageNode=%s, want every vmstorage node: %s", name, got, strings.Join(want, ","))
		}
		// Only vminsert and vmselect reach vmstorage's port for them.
		for _, np := range o.netpols {
			if !selects(t, &np.Spec.PodSelector, st.pod.Labels) {
				continue
			}
			for _, r := range np.Spec.Ingress {
				if !covers(r.Ports, portNumber(sc, port), port) {
					continue
				}
				if len(r.From) == 0 {
					t.Errorf("NetworkPolicy %s lets every source reach vmstorage's %s port", np.Name, port)
				}
				for _, peer := range r.From {
					if peer.PodSelector == nil || !selects(t, peer.PodSelector, w.pod.Labels) {
						t.Errorf("NetworkPolicy %s lets %+v reach vmstorage's %s port", np.Name, peer, port)
					}
				}
			}
		}
	}
	// The storage writers reach vminsert.
	if ins, ok := byName["vminsert"]; ok {
		sw, _ := statefulWorkload(t, o, "storage")
		reached := false
		for _, np := range o.netpols {
			if !selects(t, &np.Spec.PodSelector, ins.pod.Labels) {
				continue
			}
			for _, r := range np.Spec.Ingress {
				for _, peer := range r.From {
					reached = reached || peer.PodSelector != nil && selects(t, peer.PodSelector, sw.pod.Labels)
				}
			}
		}
		if !reached {
			t.Error("no NetworkPolicy lets the storage writers reach vminsert")
		}
	}
}

// The production overlay with components/victoriametrics (after the
// monitoring component, whose data source it replaces), and the small one
// with it alone: the checks of TestRenderAll hold for the engine, the
// store's workloads pass theirs, the storage writers remote-write to
// vminsert and Grafana's data source reads vmselect, for the same tenant.
func TestVictoriaMetricsComponent(t *testing.T) {
	for _, tc := range []struct {
		name, base string
		components []string
	}{
		{"production+victoriametrics", "overlays/production", []string{"components/victoriametrics"}},
		{"small+monitoring+victoriametrics", "overlays/small", []string{"components/monitoring", "components/victoriametrics"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := render(t, kustomization(t, tc.base, tc.components...))
			checkTiers(t, tc.base, o)
			checkTLS(t, o)
			checkStores(t, o)
			if n := len(o.storeWorkloads()); n != 3 {
				t.Errorf("%d store workloads, want vmstorage, vminsert and vmselect", n)
			}
			_, c := statefulWorkload(t, o, "storage")
			sinks := mustEnv(t, c, "INGEST_SINK")
			if !vmWrite.MatchString(sinks) {
				t.Errorf("storage: INGEST_SINK=%q, want one remote-write to vminsert", sinks)
			}
			ds := o.configMaps["ingest-grafana-datasource"]
			if ds == nil || !strings.Contains(ds.Data["ingest.yaml"], storeQueryURL(t, o, sinks)) {
				t.Errorf("Grafana's data source does not read %s", storeQueryURL(t, o, sinks))
			}
			if u, err := url.Parse(storeQueryURL(t, o, sinks)); err != nil || u.Path != "/select/0/prometheus" {
				t.Errorf("data source %s: want vmselect's /select/0/prometheus", storeQueryURL(t, o, sinks))
			}
		})
	}
}
