package k8s_test

import (
	"testing"
)

// The production overlay with components/writer-group: the checks of
// TestRenderAll hold, every storage replica is a member of one writer
// group, named by its pod, and the group is the middletiers' one durable
// consumer; the monitoring component alerts on a group with no writer.
func TestWriterGroupComponent(t *testing.T) {
	o := render(t, kustomization(t, "overlays/production", "components/writer-group"))
	checkTiers(t, "production", o)
	checkMonitoring(t, o)
	sw, sc := statefulWorkload(t, o, "storage")
	if sw.replicas < 2 {
		t.Errorf("storage: %d replicas, want a group of several", sw.replicas)
	}
	if g := mustEnv(t, sc, "INGEST_GROUP"); g != "storage" {
		t.Errorf("storage: INGEST_GROUP=%q, want storage", g)
	}
	_, mc := statefulWorkload(t, o, "middletier")
	if c := mustEnv(t, mc, "INGEST_CONSUMERS"); c != "storage" {
		t.Errorf("middletier: INGEST_CONSUMERS=%q, want the group storage", c)
	}
}
