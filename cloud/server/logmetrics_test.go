package server

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// TestLogCollector: the log's Stats reach Prometheus with their values.
func TestLogCollector(t *testing.T) {
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{NoPreallocate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 5 {
		if _, err := l.Append(context.Background(), []commitlog.Record{{Topic: "t", Producer: "gw", ProducerSeq: uint64(i + 1), Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Append(context.Background(), []commitlog.Record{{Topic: "t", Producer: "gw", ProducerSeq: 2}}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(logCollector{l})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.Metric{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				key += fmt.Sprintf("{%s=%s}", lp.GetName(), lp.GetValue())
			}
			got[key] = m
		}
	}
	st := l.Stats()
	for key, want := range map[string]float64{
		"tributary_cloud_log_records_total{outcome=appended}":  5,
		"tributary_cloud_log_records_total{outcome=duplicate}": 1,
		"tributary_cloud_log_appends_total{result=ok}":         6,
		"tributary_cloud_log_appends_total{result=error}":      0,
		"tributary_cloud_log_group_commits_total":              5,
		"tributary_cloud_log_written_bytes_total":              float64(st.Bytes),
	} {
		m := got[key]
		if m == nil || m.GetCounter().GetValue() != want {
			t.Errorf("%s = %v, want %v", key, m.GetCounter(), want)
		}
	}
	if m := got["tributary_cloud_log_size_bytes"]; m == nil || m.GetGauge().GetValue() != float64(l.Size()) || l.Size() == 0 {
		t.Errorf("size gauge %v, log size %d", m.GetGauge(), l.Size())
	}
	for key, count := range map[string]uint64{
		"tributary_cloud_log_fsync_seconds":        st.FsyncSeconds.Count,
		"tributary_cloud_log_write_seconds":        st.WriteSeconds.Count,
		"tributary_cloud_log_append_queue_seconds": 6,
		"tributary_cloud_log_group_commit_records": 5,
	} {
		m := got[key]
		if m == nil || m.GetHistogram().GetSampleCount() != count || count == 0 || len(m.GetHistogram().GetBucket()) == 0 {
			t.Errorf("%s: %v, want %d samples", key, m.GetHistogram(), count)
		}
	}
	if h := got["tributary_cloud_log_group_commit_records"].GetHistogram(); h.GetSampleSum() != 5 || h.GetBucket()[0].GetCumulativeCount() != 5 {
		t.Errorf("group sizes: sum %v, first bucket %v", h.GetSampleSum(), h.GetBucket()[0])
	}
}
