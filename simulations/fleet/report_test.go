package fleet

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/scenarios"
)

// syntheticReport is a report with a bit of everything, including text
// that must be escaped.
func syntheticReport(gateways int) *Report {
	n := 20
	rep := &Report{
		Result: Result{
			Summary: ledger.Summary{
				Published: 100, Acked: 100, InLog: 100, Delivered: 99, Dropped: 1,
				Drops: map[string]int{ledger.DropDeadLetter: 1}, DeadLetterReasons: map[string]int{`HTTP 503 <script>alert(1)</script>`: 1},
			},
			Scenario: `a&b "<test>"`, Mode: "in-process", Gateways: gateways, Devices: 10, DurationS: 15, DrainS: 2.5, Drained: true, Faults: 2,
		},
		Description: "desc <b>not bold</b>", Started: time.Unix(1700000000, 0),
		PublishEndS: 15, DrainFromS: 10, DrainedAtS: 12.5, EndS: 19.5,
		Faults: []FaultRecord{
			{Index: 0, Kind: scenarios.LinkDown, Targets: []string{"gw-1"}, PlannedAtS: 2, PlannedEndS: 10, StartS: 2, EndS: 10},
			{Index: 1, Kind: scenarios.SinkFail, Targets: []string{"s<1>"}, PlannedAtS: 4, PlannedEndS: 6, StartS: -1, EndS: -1, Error: "x & y"},
		},
		Sinks:               []SinkReport{{Name: "s<1>", Received: 99}},
		Notes:               []string{"note <i>"},
		DevicePublishErrors: map[string]int{"publish was broken by timeout": 2},
		Scenario:            "name: x\n",
		Series:              SeriesReport{StepS: 1},
	}
	s := &rep.Series
	for i := range n {
		s.Published = append(s.Published, 5)
		s.Acked = append(s.Acked, 5)
		s.InLog = append(s.InLog, i%7)
		s.Delivered = append(s.Delivered, 5)
		p := float64(10 + i)
		if i == 3 {
			p = -1
		}
		s.P50ms, s.P90ms, s.P99ms = append(s.P50ms, p), append(s.P90ms, 2*p), append(s.P99ms, 30*p)
		s.DeviceQueue = append(s.DeviceQueue, int64(i))
	}
	for g := range gateways {
		gs := GatewaySeries{Gateway: "gw-" + string(rune('1'+g%9))}
		for i := range n {
			v := int64(i * g)
			if i == 5 {
				v = -1
			}
			gs.Values = append(gs.Values, v)
		}
		s.Backlog = append(s.Backlog, gs)
		rep.Gateways = append(rep.Gateways, GatewayReport{GatewaySummary: ledger.GatewaySummary{Gateway: gs.Gateway, Published: 10}, MaxBacklog: uint64(g * n)})
	}
	return rep
}

// TestHTMLReportIsSelfContained renders a report and checks that it fetches
// nothing, escapes what it shows, and that every chart is well-formed SVG
// with its data drawn.
func TestHTMLReportIsSelfContained(t *testing.T) {
	for _, gateways := range []int{3, 40} {
		var b bytes.Buffer
		if err := syntheticReport(gateways).WriteHTML(&b); err != nil {
			t.Fatal(err)
		}
		page := b.String()
		for _, bad := range []string{"<script", " src=", "href=", "url(", "@import", "<b>not bold</b>", "<i>"} {
			if strings.Contains(page, bad) {
				t.Fatalf("%d gateways: the page contains %q", gateways, bad)
			}
		}
		if refs := regexp.MustCompile(`https?://[^"' ]+`).FindAllString(page, -1); len(refs) != strings.Count(page, "<svg") {
			t.Fatalf("external references besides the SVG namespace: %v", refs)
		}
		svgs := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(page, -1)
		if len(svgs) != 4 {
			t.Fatalf("%d charts, want throughput, backlog, latency and the fault timeline", len(svgs))
		}
		for i, svg := range svgs {
			dec := xml.NewDecoder(strings.NewReader(svg))
			for {
				_, err := dec.Token()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("chart %d is not well-formed: %v\n%s", i, err, svg)
				}
			}
			if i < 3 && !strings.Contains(svg, "<polyline") {
				t.Fatalf("chart %d has no line", i)
			}
			if strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
				t.Fatalf("chart %d has a NaN or infinite coordinate", i)
			}
		}
		if !strings.Contains(svgs[3], "link-down gw-1") || !strings.Contains(svgs[3], "(not applied)") {
			t.Fatal("the fault timeline lacks a fault")
		}
		if gateways == 40 && !strings.Contains(svgs[1], "all 40 gateways") {
			t.Fatal("a large fleet's backlog chart has no total")
		}
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	var b bytes.Buffer
	rep := syntheticReport(2)
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Result.Scenario != rep.Result.Scenario || len(back.Series.Backlog) != 2 || back.Faults[1].Error != "x & y" || back.Result.DrainS != 2.5 {
		t.Fatalf("round trip: %+v", back)
	}
}

func TestNiceTicks(t *testing.T) {
	for _, hi := range []float64{0, 0.3, 1, 7, 10, 99, 1234, 1e6, math.NaN()} {
		ticks := niceTicks(hi)
		if len(ticks) < 2 || len(ticks) > 8 || ticks[0] != 0 || (!math.IsNaN(hi) && ticks[len(ticks)-1] < hi) {
			t.Fatalf("niceTicks(%v) = %v", hi, ticks)
		}
	}
	for v, want := range map[float64]string{0: "0", 2.5: "2.5", 0.25: "0.25", 20000: "20k", 25000: "25k", 1.5e6: "1.5M", 1000: "1000"} {
		if got := fmtTick(v); got != want {
			t.Errorf("fmtTick(%v) = %q, want %q", v, got, want)
		}
	}
}
