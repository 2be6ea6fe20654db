package frontend

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
	"github.com/ingest-io/ingest/protocol"
)

// Why a device connection ended: the values of the closes metric's reason
// label. Where the device is told with a close frame, the label is the
// close frame's reason text (drain's is protocol.ReasonShutdown).
const (
	reasonPeer        = "peer"                      // the device closed or the connection broke
	reasonDrain       = "drain"                     // server shutdown
	reasonOverloaded  = protocol.ReasonOverloaded   // WAL full
	reasonRateLimited = protocol.ReasonRateLimited  // device over its rate
	reasonExpired     = protocol.ReasonUnauthorized // token expired
	reasonReplaced    = protocol.ReasonReplaced     // a newer connection for the same device
	reasonRevoked     = protocol.ReasonRevoked      // the device was disabled in the registry
	reasonTooBig      = "too_big"                   // frame over the read limit (1009)
	reasonPingTimeout = "ping_timeout"              // no pong within the timeout
	reasonWriteFailed = "write_failed"              // a write failed or missed its deadline
	reasonInternal    = "internal"                  // the WAL failed
	// MQTT sessions add reasonKeepalive, reasonProtocolError and
	// reasonReceiveMaximum (mqtt_conn.go).
)

// metrics are the frontend's own series. The WAL exports the queue depth for
// hop="frontend" itself.
type metrics struct {
	connections prometheus.Gauge
	received    prometheus.Counter
	acked       prometheus.Counter
	rejected    *prometheus.CounterVec
	fieldRules  *prometheus.CounterVec
	ackLatency  prometheus.Histogram
	bytes       prometheus.Counter
	closes      *prometheus.CounterVec
	handshakes  *prometheus.CounterVec
	mqtt        *mqttMetrics

	set *metricset.Set
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	b := metricset.NewBuilder(nil)
	m := &metrics{
		connections: b.Gauge("ingest_frontend_connections",
			"Open device connections: WebSocket connections and MQTT sessions."),
		received: b.Counter("ingest_frontend_messages_received_total",
			"Device messages received, accepted or not."),
		acked: b.Counter("ingest_frontend_messages_acked_total",
			"Device messages acknowledged after the WAL fsync that covers them."),
		rejected: b.CounterVec("ingest_frontend_messages_rejected_total",
			"Device messages answered with an error frame, by error code.", "code"),
		fieldRules: b.CounterVec("ingest_frontend_field_rejections_total",
			"Device messages rejected with too_many_fields or invalid_field, by the field rule they broke.", "rule"),
		ackLatency: b.Histogram("ingest_frontend_ack_latency_seconds",
			"Time from receiving a frame to writing the ack that covers it.",
			[]float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}),
		bytes: b.Counter("ingest_frontend_received_bytes_total",
			"Payload bytes of data frames received from devices."),
		closes: b.CounterVec("ingest_frontend_closes_total", "Device connections ended, by reason.", "reason"),
		handshakes: b.CounterVec("ingest_frontend_handshakes_rejected_total",
			"WebSocket handshakes refused before upgrade, by reason.", "reason"),
		mqtt: newMQTTMetrics(b),
	}
	for _, code := range protocol.ErrorCodes() {
		m.rejected.WithLabelValues(code)
	}
	for _, rule := range protocol.FieldRules() {
		m.fieldRules.WithLabelValues(rule)
	}
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

// unregister unregisters every collector; a second call does nothing.
func (m *metrics) unregister() { m.set.Unregister() }
