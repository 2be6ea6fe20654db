package status_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/status"
)

// TestSnapshotMQTT: the snapshot shows the MQTT sessions and the messages
// acknowledged to MQTT devices beside the totals, and null where the
// frontend has no MQTT metrics.
func TestSnapshotMQTT(t *testing.T) {
	e := newEngine(t)
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	url := serve(t, status.Options{Gatherer: e.reg, Now: clk.now})
	if s := snapshot(t, url); s.MQTTConnected != nil || s.MQTTAcked != nil {
		t.Fatalf("without MQTT metrics: mqtt_connected %v, mqtt_acked %+v; want null", show(s.MQTTConnected), s.MQTTAcked)
	}
	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_frontend_mqtt_connections"}, []string{"version"})
	acked := prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_frontend_mqtt_messages_acked_total"})
	e.reg.MustRegister(conns, acked)
	snapshot(t, url)
	e.connections.Set(5)
	conns.WithLabelValues("3.1.1").Set(1)
	conns.WithLabelValues("5").Set(2)
	e.acked.Add(100)
	acked.Add(40)
	clk.advance(2 * time.Second)
	s := snapshot(t, url)
	if !near(s.DevicesConnected, 5) || !near(s.MQTTConnected, 3) {
		t.Errorf("devices_connected %v, mqtt_connected %v; want 5 and 3", show(s.DevicesConnected), show(s.MQTTConnected))
	}
	if s.MQTTAcked == nil || s.MQTTAcked.Total != 40 || !near(s.MQTTAcked.PerSecond, 20) {
		t.Errorf("mqtt_acked %+v, want 40 at 20/s", s.MQTTAcked)
	}
}
