package storage

// The names a point's fields and registry labels take in the
// Prometheus-style stores (the embedded TSDB, remote-write) and as
// InfluxDB tags: docs/storage.md has the mapping.

// MetricName makes a flattened field name a valid Prometheus metric name:
// every character outside [a-zA-Z0-9_:] becomes '_', and a name that
// starts with a digit (or is empty) gets a leading '_'. "gps.lat" →
// "gps_lat".
func MetricName(field string) string { return sanitize(field, true) }

// LabelName makes a registry label name a valid Prometheus label name, as
// MetricName does but without ':'.
func LabelName(name string) string { return sanitize(name, false) }

func sanitize(s string, colon bool) string {
	ok := s != "" && !(s[0] >= '0' && s[0] <= '9')
	for i := 0; ok && i < len(s); i++ {
		ok = validNameByte(s[i], colon)
	}
	if ok {
		return s
	}
	out := make([]byte, 0, len(s)+1)
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		out = append(out, '_')
	}
	for _, r := range s { // one '_' per character, not per byte
		if r < 0x80 && validNameByte(byte(r), colon) {
			out = append(out, byte(r))
		} else {
			out = append(out, '_')
		}
	}
	return string(out)
}

func validNameByte(c byte, colon bool) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (colon && c == ':')
}
