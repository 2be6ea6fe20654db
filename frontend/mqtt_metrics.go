package frontend

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

// mqttMetrics are the MQTT sessions' own series. The frontend's shared
// series (connections, messages received, acknowledged and rejected, ack
// latency, closes) count MQTT sessions as well: these say how much of each
// is MQTT's.
type mqttMetrics struct {
	connections      *prometheus.GaugeVec
	received         prometheus.Counter
	acked            prometheus.Counter
	storedQoS0       prometheus.Counter
	refused          *prometheus.CounterVec
	refusedPublishes *prometheus.CounterVec
	throttled        prometheus.Counter
	walFullWaits     prometheus.Counter

	commandsDelivered prometheus.Counter
	commandsRefused   prometheus.Counter
}

func newMQTTMetrics(b *metricset.Builder) *mqttMetrics {
	m := &mqttMetrics{
		connections: b.GaugeVec("ingest_frontend_mqtt_connections",
			"Open MQTT sessions, by protocol version (also counted in ingest_frontend_connections).", "version"),
		received: b.Counter("ingest_frontend_mqtt_messages_received_total",
			"Device messages received over MQTT, accepted or not."),
		acked: b.Counter("ingest_frontend_mqtt_messages_acked_total",
			"Device messages of QoS 1 and 2 publishes acknowledged (PUBACK, PUBREC) after the WAL fsync that covers them."),
		storedQoS0: b.Counter("ingest_frontend_mqtt_qos0_messages_stored_total",
			"Device messages of QoS 0 publishes appended to the WAL (they get no acknowledgement)."),
		refused: b.CounterVec("ingest_frontend_mqtt_connects_refused_total",
			"MQTT CONNECTs refused or never completed, by reason.", "reason"),
		refusedPublishes: b.CounterVec("ingest_frontend_mqtt_publishes_refused_total",
			"MQTT PUBLISHes not stored, by reason (MQTT 5 clients get it as a reason code; MQTT 3.1.1 clients get a plain acknowledgement).", "reason"),
		throttled: b.Counter("ingest_frontend_mqtt_publishes_throttled_total",
			"MQTT PUBLISHes that waited for the device's rate limit (the session was not read meanwhile)."),
		walFullWaits: b.Counter("ingest_frontend_mqtt_wal_full_waits_total",
			"Times an MQTT 3.1.1 session held its publishes because the WAL was at its bound (the session was not read meanwhile)."),
		commandsDelivered: b.Counter("ingest_frontend_mqtt_commands_delivered_total",
			"Command publishes the device acknowledged (PUBACK); a command sent again counts again."),
		commandsRefused: b.Counter("ingest_frontend_mqtt_commands_refused_total",
			"Command publishes an MQTT 5 device answered with a failure reason code in its PUBACK."),
	}
	for _, v := range []string{"3.1.1", "5"} {
		m.connections.WithLabelValues(v)
	}
	for _, r := range []string{"topic_invalid", "not_authorized", "payload_invalid", "quota_exceeded"} {
		m.refusedPublishes.WithLabelValues(r)
	}
	return m
}
