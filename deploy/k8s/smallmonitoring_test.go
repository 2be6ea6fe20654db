package k8s_test

import (
	"os"
	"path/filepath"
	"testing"
)

// The small overlay with the monitoring component, added as small's
// kustomization says (components: [../../components/monitoring] in it), and
// as a component of a kustomization over small: the checks of
// TestRenderAll hold, the alerts among them; IngestWALNearBound divides
// each hop's WAL depth by the bound small gives it, not the base's.
func TestSmallWithMonitoring(t *testing.T) {
	t.Run("in small", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.CopyFS(dir, os.DirFS(".")); err != nil {
			t.Fatal(err)
		}
		k := filepath.Join(dir, "overlays", "small", "kustomization.yaml")
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(k, append(b, "\ncomponents:\n  - ../../components/monitoring\n"...), 0o600); err != nil {
			t.Fatal(err)
		}
		o := render(t, filepath.Join(dir, "overlays", "small"))
		checkTiers(t, "small", o)
		checkMonitoring(t, o)
	})
	t.Run("over small", func(t *testing.T) {
		o := render(t, kustomization(t, "overlays/small", "components/monitoring"))
		checkTiers(t, "small", o)
		checkMonitoring(t, o)
	})
}
