package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

func init() {
	Register(Scenario{
		Name:  "log-topics",
		Brief: "central-log append throughput with 1, 100, 1,000 and 10,000 topics (200 B and 2 KB records) while a consumer reads every topic",
		Flags: logTopicsFlags,
	})
}

func logTopicsFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	dur := fs.Duration("duration", 4*time.Second, "how long each topic count and size is measured")
	writers := fs.Int("writers", 16, "appending goroutines (group commit shares fsyncs between them)")
	batch := fs.Int("batch", 64, "records per Append call")
	consumer := fs.Bool("consumer", true, "run the consumer reading every topic (false isolates the append path)")
	topicList := fs.String("topics", "1,100,1000,10000", "topic counts to measure (comma separated); the ratios need 1 and 10000")
	sizeList := fs.String("sizes", "200,2048", "record sizes in bytes to measure (comma separated)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of each measurement to this file name with -TOPICS-SIZE before its extension")
	warmup := fs.Duration("warmup", time.Second, "an unmeasured run (first topic count and size) before the measured ones, so that the first measured run does not pay for the process's warm-up (heap growth, first page faults)")
	rounds := fs.Int("rounds", 1, "rounds; each measures every topic count and size once, interleaved, and the figures are medians (the machine is shared: rounds spread its noise over every topic count)")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		dir, err := os.MkdirTemp("", "tributary-bench-logtopics-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		res := map[string]any{"loadavg_before": loadAverage(), "writers": *writers, "batch": *batch, "fsync": true, "consumer": *consumer}
		if *rounds < 1 {
			return nil, fmt.Errorf("-rounds %d: want at least 1", *rounds)
		}
		runs := map[string][]float64{} // key -> one figure per round
		topicCounts, err := parseInts(*topicList)
		if err != nil {
			return nil, fmt.Errorf("-topics: %w", err)
		}
		sizes, err := parseInts(*sizeList)
		if err != nil {
			return nil, fmt.Errorf("-sizes: %w", err)
		}
		if *warmup > 0 && len(sizes) > 0 && len(topicCounts) > 0 {
			if _, _, err := runLogTopics(ctx, filepath.Join(dir, "warmup"), *warmup, topicCounts[0], sizes[0], *writers, *batch, *consumer); err != nil {
				return nil, err
			}
		}
		res["warmup_s"] = warmup.Seconds()
		for rd := range *rounds {
			for _, size := range sizes {
				for _, topics := range topicCounts {
					stopProfile, err := laProfile(*cpuProfile, fmt.Sprintf("-%d-%d", topics, size))
					if err != nil {
						return nil, err
					}
					cpu0 := processCPU()
					runDir := filepath.Join(dir, fmt.Sprintf("%d-%d-%d", size, topics, rd))
					r, read, err := runLogTopics(ctx, runDir, *dur, topics, size, *writers, *batch, *consumer)
					cpu := processCPU() - cpu0
					stopProfile()
					_ = os.RemoveAll(runDir) // rounds would otherwise fill the disk
					if err != nil {
						return nil, err
					}
					// CPU of the whole process (appenders, writer, consumer)
					// per record appended: unlike the rate, it does not
					// depend on the share of the machine the run got.
					cpuPer := cpu.Seconds() * 1e6 / (r * dur.Seconds())
					suffix := fmt.Sprintf("_%d_topics_%db", topics, size)
					runs["msgs_per_s"+suffix] = append(runs["msgs_per_s"+suffix], r)
					runs["consumer_per_s"+suffix] = append(runs["consumer_per_s"+suffix], read)
					runs["cpu_us_per_append"+suffix] = append(runs["cpu_us_per_append"+suffix], cpuPer)
					fmt.Fprintf(progress, "log-topics: round %d: %5d topics, %4d B: %8.0f appends/s, consumer %8.0f records/s, %.2f µs CPU per append (load %.2f)\n", rd+1, topics, size, r, read, cpuPer, loadAverage())
				}
			}
		}
		rates := map[string]float64{}
		for key, v := range runs {
			rates[key] = median(v)
			places := 0
			if strings.HasPrefix(key, "cpu_") {
				places = 2
			}
			res[key] = roundTo(rates[key], places)
			if *rounds > 1 {
				res[key+"_runs"] = laRound(v, places)
			}
		}
		res["rounds"] = *rounds
		if one, ok := rates["msgs_per_s_1_topics_200b"]; ok && rates["msgs_per_s_10000_topics_200b"] > 0 {
			res["ratio_10000_vs_1"] = round2(rates["msgs_per_s_10000_topics_200b"] / one)
		}
		if one, ok := rates["msgs_per_s_1_topics_2048b"]; ok && rates["msgs_per_s_10000_topics_2048b"] > 0 {
			res["ratio_10000_vs_1_2kb"] = round2(rates["msgs_per_s_10000_topics_2048b"] / one)
		}
		// CPU per append at 10,000 topics over 1: the per-topic cost of the
		// log, whatever share of the machine each run got (the consumer's
		// CPU included when it runs).
		if one := rates["cpu_us_per_append_1_topics_200b"]; one > 0 && rates["cpu_us_per_append_10000_topics_200b"] > 0 {
			res["cpu_ratio_10000_vs_1"] = round2(rates["cpu_us_per_append_10000_topics_200b"] / one)
		}
		res["loadavg_after"] = loadAverage()
		return res, nil
	}
}

// parseInts parses a comma-separated list of positive integers.
func parseInts(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// runLogTopics appends to a fresh FileLog from writers goroutines, records
// spread round-robin over topics, while one consumer reads every topic by
// its per-topic index. It returns appends/s and records/s read.
func runLogTopics(ctx context.Context, dir string, dur time.Duration, topics, size, writers, batch int, consume bool) (float64, float64, error) {
	l, err := commitlog.Open(dir, commitlog.Options{})
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()
	names := make([]string, topics)
	for i := range names {
		names[i] = "devices/" + strconv.Itoa(i) + "/telemetry"
	}
	value := make([]byte, size)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	runCtx, stop := context.WithTimeout(ctx, dur)
	defer stop()
	var appended, read atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, writers+1)
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := make([]commitlog.Record, batch)
			n := w
			for runCtx.Err() == nil {
				for i := range recs {
					recs[i] = commitlog.Record{Topic: names[n%topics], Value: value}
					n += writers
				}
				if _, err := l.Append(context.Background(), recs); err != nil {
					errc <- err
					return
				}
				appended.Add(int64(batch))
			}
		}()
	}
	// The consumer: every topic, from its own cursor, by the topic index.
	wg.Add(1)
	go func() {
		if !consume {
			wg.Done()
			return
		}
		defer wg.Done()
		cursors := make([]uint64, topics)
		for runCtx.Err() == nil {
			progressed := false
			for i, name := range names {
				recs, err := l.ReadTopic(name, cursors[i], 256)
				if err != nil {
					errc <- fmt.Errorf("ReadTopic %s: %w", name, err)
					return
				}
				if len(recs) > 0 {
					cursors[i] = recs[len(recs)-1].Offset + 1
					read.Add(int64(len(recs)))
					progressed = true
				}
				if runCtx.Err() != nil {
					return
				}
			}
			if !progressed {
				_ = l.Wait(runCtx, l.NextOffset())
			}
		}
	}()
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	select {
	case err := <-errc:
		return 0, 0, err
	default:
	}
	return float64(appended.Load()) / elapsed, float64(read.Load()) / elapsed, nil
}
