package k8s_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// tlsTiers are the tiers that serve outside the cluster, and so TLS with
// components/tls; the middletier's metrics port stays plain.
var tlsTiers = []string{"frontend", "feed", "storage"}

// servesTLS reports whether the container is given a certificate.
func servesTLS(c *corev1.Container) bool {
	_, ok := env(c, "INGEST_TLS_CERT_FILE")
	return ok
}

// checkTLS checks every tier given a certificate: both files on one
// read-only Secret volume (keys tls.crt and tls.key if the Secret is
// rendered), probes over HTTPS, PodMonitors that scrape over HTTPS, and
// Grafana's data source at https:// when the store serves TLS.
func checkTLS(t *testing.T, o *objects) {
	for _, w := range o.workloads() {
		c := container(t, w)
		if !servesTLS(c) {
			continue
		}
		where := w.kind + " " + w.name
		if !slices.Contains(tlsTiers, w.name) {
			t.Errorf("%s: given a certificate, but it serves inside the cluster only", where)
		}
		var secret string
		for _, name := range []string{"INGEST_TLS_CERT_FILE", "INGEST_TLS_KEY_FILE"} {
			f := mustEnv(t, c, name)
			s := secretFile(t, w, c, f)
			if s == "" {
				t.Errorf("%s: %s=%s is not on a read-only Secret volume", where, name, f)
				continue
			}
			if secret != "" && s != secret {
				t.Errorf("%s: the certificate and the key come from two Secrets, %s and %s", where, secret, s)
			}
			secret = s
			if sec, ok := o.secrets[s]; ok {
				if _, ok := sec.Data[filepath.Base(f)]; !ok {
					t.Errorf("%s: Secret %s has no %s", where, s, filepath.Base(f))
				}
			}
		}
		for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
				t.Errorf("%s: probe on %s over %q, the port serves HTTPS", where, p.HTTPGet.Path, p.HTTPGet.Scheme)
			}
		}
		for _, pm := range o.podMonitors {
			if !selects(t, &pm.Spec.Selector, w.pod.Labels) {
				continue
			}
			for _, ep := range pm.Spec.PodMetricsEndpoints {
				if ep.Scheme == nil || strings.ToLower(ep.Scheme.String()) != "https" {
					t.Errorf("PodMonitor %s scrapes %s over %v, the port serves HTTPS", pm.Name, w.name, ep.Scheme)
				}
			}
		}
	}
}

// secretFile is the Secret whose read-only volume holds file in the
// container, or "".
func secretFile(t *testing.T, w workload, c *corev1.Container, file string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if filepath.Dir(file) != m.MountPath || !m.ReadOnly {
			continue
		}
		for _, v := range w.pod.Spec.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				return v.Secret.SecretName
			}
		}
	}
	return ""
}

// kustomization writes a kustomization in a temporary directory that
// renders base (an overlay) with the components, as a user's own overlay
// does, and returns its directory.
func kustomization(t *testing.T, base string, components ...string) string {
	t.Helper()
	dir := t.TempDir()
	// kustomize takes relative paths only.
	rel := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := filepath.Rel(dir, a)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var cs []string
	for _, c := range components {
		cs = append(cs, rel(c))
	}
	k := map[string]any{"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
		"resources": []string{rel(base)}, "components": cs}
	b, err := yaml.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The small overlay with components/tls, alone and after the monitoring
// component: the checks of TestRenderAll hold, the frontend, the feed
// and the store serve TLS from the Secret ingest-tls, devices and
// dashboards reach it on 443, and the middletier stays plain.
func TestTLSComponent(t *testing.T) {
	for _, tc := range []struct {
		name       string
		components []string
	}{
		{"small+tls", []string{"components/tls"}},
		{"small+monitoring+tls", []string{"components/monitoring", "components/tls"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := render(t, kustomization(t, "overlays/small", tc.components...))
			checkTiers(t, "small", o)
			checkMonitoring(t, o)
			checkTLS(t, o)
			for _, w := range o.workloads() {
				c := container(t, w)
				if want := slices.Contains(tlsTiers, w.name); servesTLS(c) != want {
					t.Errorf("%s: serves TLS %v, want %v", w.name, servesTLS(c), want)
				}
				if servesTLS(c) && secretFile(t, w, c, mustEnv(t, c, "INGEST_TLS_CERT_FILE")) != "ingest-tls" {
					t.Errorf("%s: the certificate is not from the Secret ingest-tls", w.name)
				}
			}
			for _, name := range []string{"frontend", "feed"} {
				if p := o.services[name].Spec.Ports; len(p) != 1 || p[0].Port != 443 || p[0].Name != "https" {
					t.Errorf("Service %s ports %+v, want https on 443", name, p)
				}
			}
			if len(tc.components) > 1 && len(o.podMonitors) != 4 {
				t.Errorf("the monitoring component rendered %d PodMonitors, want 4", len(o.podMonitors))
			}
		})
	}
}

// The small overlay with components/keys: the checks of TestRenderAll
// hold, and the frontends and the feed read --auth.keys-dir from the
// Secret ingest-auth-keys, beside the key they had.
func TestKeysComponent(t *testing.T) {
	o := render(t, kustomization(t, "overlays/small", "components/keys"))
	checkWorkloads(t, o)
	checkFrontend(t, o)
	checkFeed(t, o)
	checkAuth(t, "small", o)
	for _, name := range []string{"frontend", "feed"} {
		var w workload
		for _, x := range o.workloads() {
			if x.name == name {
				w = x
			}
		}
		if w.pod == nil {
			t.Fatalf("no workload %s", name)
		}
		c := container(t, w)
		dir := mustEnv(t, c, "INGEST_AUTH_KEYS_DIR")
		if s := secretFile(t, w, c, filepath.Join(dir, "k.hs256")); s != "ingest-auth-keys" {
			t.Errorf("%s: --auth.keys-dir %s is on Secret %q, want a read-only mount of ingest-auth-keys", name, dir, s)
		}
		if _, ok := env(c, "INGEST_AUTH_HS256_SECRET_FILE"); !ok {
			t.Errorf("%s: the key without id is gone", name)
		}
	}
}
