package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// logCollector exposes the central log's Stats (commitlog.FileLog.Stats)
// at scrape time: append and group-commit counters, where an append's time
// goes (queue, write, fsync histograms), group sizes, segments, retention.
type logCollector struct{ log *commitlog.FileLog }

var (
	descLogRecords    = desc("tributary_cloud_log_records_total", "Records given to the log by outcome: appended, or dropped as duplicates (at or below the producer's high-water mark).", "outcome")
	descLogBytes      = desc("tributary_cloud_log_written_bytes_total", "Framed bytes written for appended records.")
	descLogAppends    = desc("tributary_cloud_log_appends_total", "Append and AppendAsync calls completed, by result (ok or error).", "result")
	descLogGroups     = desc("tributary_cloud_log_group_commits_total", "Group commits that wrote records (one write and one fsync each).")
	descLogGroupSize  = desc("tributary_cloud_log_group_commit_records", "Records per group commit.")
	descLogQueue      = desc("tributary_cloud_log_append_queue_seconds", "Time from an append call to the writer taking it into a group (waiting for the group before it).")
	descLogWrite      = desc("tributary_cloud_log_write_seconds", "Time of a group commit's write system call.")
	descLogFsync      = desc("tributary_cloud_log_fsync_seconds", "Time of the segment fsync that makes a group commit durable.")
	descLogRolls      = desc("tributary_cloud_log_segment_rolls_total", "Segments started since the log was opened, by whether they were preallocated.", "preallocated")
	descLogRetention  = desc("tributary_cloud_log_retention_deleted_total", "What retention deleted, by unit (segments, records, bytes).", "unit")
	descLogSegments   = desc("tributary_cloud_log_segments", "Segments retained.")
	descLogSize       = desc("tributary_cloud_log_size_bytes", "Committed bytes of the retained segments.")
	descLogFailed     = desc("tributary_cloud_log_failed", "1 once a write or fsync failed: the log refuses appends until reopened.")
	logCollectorDescs = []*prometheus.Desc{descLogRecords, descLogBytes, descLogAppends, descLogGroups, descLogGroupSize, descLogQueue, descLogWrite, descLogFsync, descLogRolls, descLogRetention, descLogSegments, descLogSize, descLogFailed}
	_                 = prometheus.Collector(logCollector{})
)

func (c logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range logCollectorDescs {
		ch <- d
	}
}

func (c logCollector) Collect(ch chan<- prometheus.Metric) {
	if c.log == nil {
		return
	}
	st := c.log.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	histogram := func(d *prometheus.Desc, h commitlog.Histogram) {
		buckets := make(map[float64]uint64, len(h.Buckets))
		for _, b := range h.Buckets {
			buckets[b.UpperBound] = b.CumulativeCount
		}
		ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets)
	}
	counter(descLogRecords, st.Appended, "appended")
	counter(descLogRecords, st.Duplicates, "duplicate")
	counter(descLogBytes, st.Bytes)
	counter(descLogAppends, sub(st.Appends, st.Failures), "ok")
	counter(descLogAppends, st.Failures, "error")
	counter(descLogGroups, st.Groups)
	histogram(descLogGroupSize, st.GroupRecords)
	histogram(descLogQueue, st.QueueSeconds)
	histogram(descLogWrite, st.WriteSeconds)
	histogram(descLogFsync, st.FsyncSeconds)
	counter(descLogRolls, sub(st.Rolls, st.PreallocatedRolls), "false")
	counter(descLogRolls, st.PreallocatedRolls, "true")
	counter(descLogRetention, st.RetentionSegments, "segments")
	counter(descLogRetention, st.RetentionRecords, "records")
	counter(descLogRetention, st.RetentionBytes, "bytes")
	gauge(descLogSegments, float64(st.Segments))
	gauge(descLogSize, float64(st.SizeBytes))
	failed := 0.0
	if st.Failed {
		failed = 1
	}
	gauge(descLogFailed, failed)
}

// sub is a-b, or 0 if b > a: the Stats counters are read one at a time, so
// a pair can be read across an update of both.
func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}
