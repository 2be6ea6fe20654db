package storage_test

import (
	"testing"

	"github.com/ingest-io/ingest/storage"
)

func TestMetricName(t *testing.T) {
	for in, want := range map[string]string{
		"temp": "temp", "gps.lat": "gps_lat", "a:b": "a:b", "1st": "_1st", "": "_",
		"température": "temp_rature", "cells.0.rssi": "cells_0_rssi", "a-b c": "a_b_c",
	} {
		if got := storage.MetricName(in); got != want {
			t.Errorf("MetricName(%q) = %q, want %q", in, got, want)
		}
	}
	if got := storage.LabelName("a:b"); got != "a_b" {
		t.Errorf("LabelName(a:b) = %q", got)
	}
}
