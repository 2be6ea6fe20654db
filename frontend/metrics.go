package frontend

import (
	"github.com/prometheus/client_golang/prometheus"

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

	reg prometheus.Registerer // nil: none registered
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ingest_frontend_connections",
			Help: "Open device connections: WebSocket connections and MQTT sessions.",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_frontend_messages_received_total",
			Help: "Device messages received, accepted or not.",
		}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_frontend_messages_acked_total",
			Help: "Device messages acknowledged after the WAL fsync that covers them.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_frontend_messages_rejected_total",
			Help: "Device messages answered with an error frame, by error code.",
		}, []string{"code"}),
		fieldRules: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_frontend_field_rejections_total",
			Help: "Device messages rejected with too_many_fields or invalid_field, by the field rule they broke.",
		}, []string{"rule"}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ingest_frontend_ack_latency_seconds",
			Help:    "Time from receiving a frame to writing the ack that covers it.",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_frontend_received_bytes_total",
			Help: "Payload bytes of data frames received from devices.",
		}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_frontend_closes_total",
			Help: "Device connections ended, by reason.",
		}, []string{"reason"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_frontend_handshakes_rejected_total",
			Help: "WebSocket handshakes refused before upgrade, by reason.",
		}, []string{"reason"}),
		mqtt: newMQTTMetrics(),
	}
	for _, code := range protocol.ErrorCodes() {
		m.rejected.WithLabelValues(code)
	}
	for _, rule := range protocol.FieldRules() {
		m.fieldRules.WithLabelValues(rule)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, r := range m.collectors() {
				reg.Unregister(r)
			}
			return nil, err
		}
	}
	m.reg = reg
	return m, nil
}

// unregister unregisters every collector; a second call does nothing.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
	m.reg = nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{m.connections, m.received, m.acked, m.rejected, m.fieldRules, m.ackLatency, m.bytes, m.closes, m.handshakes},
		m.mqtt.collectors()...)
}
