package fleet

import (
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/tributary-io/tributary/simulations/scenarios"
)

// The report is one HTML file with inline SVG: no script, no stylesheet or
// font to fetch, so it can be mailed, attached to a ticket or opened offline.

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"}

var faultColors = map[scenarios.FaultKind]string{
	scenarios.LinkDown: "#d62728", scenarios.Lossy: "#ff7f0e", scenarios.Kill: "#7b1fa2",
	scenarios.DiskFull: "#8c564b", scenarios.SinkFail: "#1f77b4", scenarios.SinkHang: "#17becf",
}

// chartLine is one plotted series; NaN values leave gaps.
type chartLine struct {
	name   string
	color  string
	dash   bool
	width  float64
	values []float64
}

// chart is a line chart over the run's time axis.
type chart struct {
	title, yLabel string
	xMax, step    float64
	logY          bool
	lines         []chartLine
	rep           *Report
}

const (
	cw, ch                 = 960.0, 270.0
	padL, padR, padT, padB = 70.0, 16.0, 44.0, 34.0
)

func (c chart) x(t float64) float64 { return padL + (cw-padL-padR)*t/c.xMax }

// svg renders the chart.
func (c chart) svg() template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`, cw, ch, cw, ch)
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="14" font-weight="bold">%s</text>`, padL, html.EscapeString(c.title))
	// Legend.
	lx := padL
	for _, l := range c.lines {
		dash := ""
		if l.dash {
			dash = ` stroke-dasharray="5,3"`
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="31" x2="%.1f" y2="31" stroke="%s" stroke-width="2.5"%s/><text x="%.1f" y="35">%s</text>`,
			lx, lx+18, l.color, dash, lx+22, html.EscapeString(l.name))
		lx += 30 + 6.3*float64(len([]rune(l.name)))
	}
	// Y range.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range c.lines {
		for _, v := range l.values {
			if !math.IsNaN(v) && !(c.logY && v <= 0) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(hi, -1) {
		lo, hi = 0, 1
	}
	var ticks []float64
	var y func(float64) float64
	top, bottom := padT, ch-padB
	if c.logY {
		lo = math.Pow(10, math.Floor(math.Log10(math.Max(lo, 0.01))))
		hi = math.Pow(10, math.Ceil(math.Log10(math.Max(hi, lo*10))))
		for v := lo; v <= hi*1.0001; v *= 10 {
			ticks = append(ticks, v)
		}
		y = func(v float64) float64 {
			v = math.Max(v, lo)
			return bottom - (bottom-top)*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
		}
	} else {
		ticks = niceTicks(hi)
		hi = ticks[len(ticks)-1]
		y = func(v float64) float64 { return bottom - (bottom-top)*v/hi }
	}
	// Faults as bands behind the data.
	for _, f := range c.rep.Faults {
		if f.StartS < 0 {
			continue
		}
		end := f.EndS
		if end < 0 {
			end = c.xMax
		}
		w := math.Max(c.x(end)-c.x(f.StartS), 1.5)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.12"><title>%s</title></rect>`,
			c.x(f.StartS), top, w, bottom-top, faultColors[f.Kind], html.EscapeString(f.Label()))
	}
	// Grid and axes.
	for _, t := range ticks {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`,
			padL, y(t), cw-padR, y(t), padL-6, y(t)+4, fmtTick(t))
	}
	for _, t := range niceTicks(c.xMax) {
		if t > c.xMax {
			break
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`,
			c.x(t), bottom, c.x(t), bottom+4, c.x(t), bottom+16, fmtTick(t))
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`, padL, bottom, cw-padR, bottom)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`, padL, top, padL, bottom)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">seconds since publishing started</text>`, (padL+cw-padR)/2, ch-4)
	fmt.Fprintf(&b, `<text transform="translate(14,%.1f) rotate(-90)" text-anchor="middle">%s</text>`, (top+bottom)/2, html.EscapeString(c.yLabel))
	c.marks(&b, top, bottom)
	// Lines.
	for _, l := range c.lines {
		var pts []string
		flush := func() {
			if len(pts) > 1 {
				dash := ""
				if l.dash {
					dash = ` stroke-dasharray="5,3"`
				}
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="%.1f"%s stroke-linejoin="round" points="%s"/>`,
					l.color, l.width, dash, strings.Join(pts, " "))
			} else if len(pts) == 1 {
				var px, py float64
				fmt.Sscanf(pts[0], "%f,%f", &px, &py)
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.8" fill="%s"/>`, px, py, l.color)
			}
			pts = pts[:0]
		}
		for i, v := range l.values {
			if math.IsNaN(v) || (c.logY && v <= 0) {
				flush()
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", c.x((float64(i)+0.5)*c.step), y(v)))
		}
		flush()
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// marks draws the end of publishing and the moment the backlog drained.
func (c chart) marks(b *strings.Builder, top, bottom float64) {
	mark := func(t float64, label, color string) {
		if t < 0 {
			return
		}
		tx, anchor := c.x(t)+3, "start"
		if tx > cw-padR-110 {
			tx, anchor = c.x(t)-3, "end"
		}
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="3,3"/><text x="%.1f" y="%.1f" fill="%s" font-size="10" text-anchor="%s">%s</text>`,
			c.x(t), top, c.x(t), bottom, color, tx, top+10, color, anchor, label)
	}
	mark(c.rep.PublishEndS, "publishing ends", "#555")
	if c.rep.DrainedAtS >= 0 && c.rep.Result.Faults > 0 {
		mark(c.rep.DrainedAtS, fmt.Sprintf("drained (%.1f s)", c.rep.Result.DrainS), "#2ca02c")
	}
}

// niceTicks returns 0 and round steps up to at least hi.
func niceTicks(hi float64) []float64 {
	if hi <= 0 || math.IsNaN(hi) || math.IsInf(hi, 0) {
		hi = 1
	}
	raw := hi / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	stepv := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			stepv = m * mag
			break
		}
	}
	var t []float64
	for v := 0.0; ; v += stepv {
		t = append(t, v)
		if v >= hi {
			break
		}
	}
	return t
}

func fmtTick(v float64) string {
	switch {
	case v >= 1e6:
		return trimZero(fmt.Sprintf("%.1fM", v/1e6))
	case v >= 1e4:
		return trimZero(fmt.Sprintf("%.1fk", v/1e3))
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return trimZero(fmt.Sprintf("%.1f", v))
	}
	return trimZero(fmt.Sprintf("%.2f", v))
}

func trimZero(s string) string {
	if i := strings.Index(s, ".0"); i >= 0 && (i+2 == len(s) || (s[i+2] < '0' || s[i+2] > '9')) {
		return s[:i] + s[i+2:]
	}
	return s
}

func floats[T int | int64](a []T, missing bool) []float64 {
	out := make([]float64, len(a))
	for i, v := range a {
		out[i] = float64(v)
		if missing && v < 0 {
			out[i] = math.NaN()
		}
	}
	return out
}

func perSecond(a []int, step float64) []float64 {
	out := floats(a, false)
	for i := range out {
		out[i] /= step
	}
	return out
}

func latencies(a []float64) []float64 {
	out := slices.Clone(a)
	for i, v := range out {
		if v < 0 {
			out[i] = math.NaN()
		}
	}
	return out
}

// charts builds the report's four charts.
func (rep *Report) charts() []template.HTML {
	s := rep.Series
	xMax := math.Max(rep.EndS, s.StepS*float64(len(s.Published)))
	if xMax <= 0 {
		xMax = 1
	}
	base := chart{xMax: xMax, step: s.StepS, rep: rep}

	thr := base
	thr.title, thr.yLabel = "Throughput", "messages per second"
	thr.lines = []chartLine{
		{name: "created by devices", color: palette[7], width: 1.5, values: perSecond(s.Published, s.StepS)},
		{name: "acknowledged by gateways", color: palette[0], width: 2, values: perSecond(s.Acked, s.StepS)},
		{name: "appended to the central log", color: palette[3], width: 1.5, dash: true, values: perSecond(s.InLog, s.StepS)},
		{name: "delivered (first, all subscriptions)", color: palette[2], width: 2, values: perSecond(s.Delivered, s.StepS)},
	}

	bl := base
	bl.title, bl.yLabel = "Backlog per gateway (outbox records not yet acknowledged by the cloud)", "records"
	bl.lines = rep.backlogLines()

	lat := base
	lat.title, lat.yLabel, lat.logY = "End-to-end latency, device to sink (deliveries made in each second)", "milliseconds (log scale)", true
	lat.lines = []chartLine{
		{name: "p50", color: palette[0], width: 2, values: latencies(s.P50ms)},
		{name: "p90", color: palette[3], width: 1.5, values: latencies(s.P90ms)},
		{name: "p99", color: palette[1], width: 2, values: latencies(s.P99ms)},
	}
	return []template.HTML{thr.svg(), bl.svg(), lat.svg(), rep.timelineSVG(xMax)}
}

// backlogLines plots every gateway of a small fleet; for a large one, the
// total, the gateways faults targeted and the largest others.
func (rep *Report) backlogLines() []chartLine {
	s := rep.Series
	var lines []chartLine
	pick := func(gs GatewaySeries, i int) {
		lines = append(lines, chartLine{name: gs.Gateway, color: palette[i%len(palette)], width: 1.8, values: floats(gs.Values, true)})
	}
	if len(s.Backlog) <= 10 {
		for i, gs := range s.Backlog {
			pick(gs, i)
		}
	} else {
		total := make([]float64, len(s.Published))
		for _, gs := range s.Backlog {
			for i, v := range gs.Values {
				if i < len(total) && v > 0 {
					total[i] += float64(v)
				}
			}
		}
		lines = append(lines, chartLine{name: fmt.Sprintf("all %d gateways", len(s.Backlog)), color: "#000", width: 2.2, values: total})
		var chosen []string
		for _, f := range rep.Faults {
			for _, t := range f.Targets {
				if strings.HasPrefix(t, "gw-") && !slices.Contains(chosen, t) && len(chosen) < 6 {
					chosen = append(chosen, t)
				}
			}
		}
		order := slices.Clone(rep.Gateways)
		sort.SliceStable(order, func(a, b int) bool { return order[a].MaxBacklog > order[b].MaxBacklog })
		for _, g := range order {
			if len(chosen) >= 8 {
				break
			}
			if !slices.Contains(chosen, g.Gateway) {
				chosen = append(chosen, g.Gateway)
			}
		}
		for i, gs := range s.Backlog {
			if slices.Contains(chosen, gs.Gateway) {
				pick(gs, i)
			}
		}
	}
	lines = append(lines, chartLine{name: "queued in devices", color: palette[7], width: 1.5, dash: true, values: floats(s.DeviceQueue, true)})
	return lines
}

// timelineSVG draws one bar per fault on the run's time axis.
func (rep *Report) timelineSVG(xMax float64) template.HTML {
	rows := max(len(rep.Faults), 1)
	h := padT + 26*float64(rows) + padB
	c := chart{xMax: xMax, rep: rep}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`, cw, h, cw, h)
	fmt.Fprintf(&b, `<text x="%.0f" y="16" font-size="14" font-weight="bold">Fault timeline</text>`, padL)
	bottom := h - padB
	for _, t := range niceTicks(xMax) {
		if t > xMax {
			break
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`,
			c.x(t), padT-8, c.x(t), bottom, c.x(t), bottom+16, fmtTick(t))
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`, padL, bottom, cw-padR, bottom)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">seconds since publishing started</text>`, (padL+cw-padR)/2, h-4)
	if len(rep.Faults) == 0 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#555">no faults</text>`, padL+8, padT+16)
	}
	for i, f := range rep.Faults {
		yy := padT + 26*float64(i)
		start, end := f.StartS, f.EndS
		label := f.Label()
		if f.Detail != "" {
			label += " — " + f.Detail
		}
		if f.Error != "" {
			label += " — error: " + f.Error
		}
		if start < 0 {
			start, end = f.PlannedAtS, f.PlannedEndS
			label += " (not applied)"
		}
		if end < 0 {
			end = xMax
		}
		w := math.Max(c.x(end)-c.x(start), 3)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="18" rx="3" fill="%s" fill-opacity="0.75"><title>%s: %.1f–%.1f s</title></rect>`,
			c.x(start), yy, w, faultColors[f.Kind], html.EscapeString(label), start, end)
		tx, anchor := c.x(start)+w+5, "start"
		if tx > cw-260 {
			tx, anchor = c.x(start)-5, "end"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="%s">%s (%.1f–%.1f s)</text>`, tx, yy+13, anchor, html.EscapeString(label), start, end)
	}
	c.marks(&b, padT-8, bottom)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// pageData is what the template renders.
type pageData struct {
	R        *Report
	OK       bool
	Charts   []template.HTML
	Drops    []kv
	DLReason []kv
	DevErrs  []kv
	Gateways []GatewayReport
	GWNote   string
}

type kv struct {
	K string
	V int
}

func sortedKV(m map[string]int) []kv {
	var out []kv
	for k, v := range m {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].V > out[b].V || (out[a].V == out[b].V && out[a].K < out[b].K) })
	return out
}

// WriteHTML writes the report as one self-contained HTML page.
func (rep *Report) WriteHTML(w io.Writer) error {
	d := pageData{R: rep, OK: rep.Result.OK(), Charts: rep.charts(), Drops: sortedKV(rep.Result.Drops), DLReason: sortedKV(rep.Result.DeadLetterReasons), DevErrs: sortedKV(rep.DevicePublishErrors)}
	d.Gateways = rep.Gateways
	if len(d.Gateways) > 25 {
		// A large fleet: the gateways that had something happen, then the
		// largest backlogs.
		var keep []GatewayReport
		for _, g := range rep.Gateways {
			if g.Lost > 0 || g.Dropped > 0 || g.Refused > 0 || g.Restarts > 0 || g.PolicyDrops > 0 || g.Uplink.Dropped > 0 || g.Uplink.Blackholed > 0 {
				keep = append(keep, g)
			}
		}
		rest := slices.Clone(rep.Gateways)
		sort.SliceStable(rest, func(a, b int) bool { return rest[a].MaxBacklog > rest[b].MaxBacklog })
		for _, g := range rest {
			if len(keep) >= 25 {
				break
			}
			if !slices.ContainsFunc(keep, func(k GatewayReport) bool { return k.Gateway == g.Gateway }) {
				keep = append(keep, g)
			}
		}
		d.Gateways = keep
		d.GWNote = fmt.Sprintf("%d of %d gateways shown: those with refusals, restarts, drops, losses or link faults, then the largest backlogs. The JSON summary lists all.", len(keep), len(rep.Gateways))
	}
	return pageTmpl.Execute(w, d)
}

var pageTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"f1": func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"f0": func(v float64) string { return fmt.Sprintf("%.0f", v) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fleetsim: {{.R.Result.Scenario}}</title>
<style>
body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:16px;margin-top:28px}
.ok{color:#fff;background:#2ca02c;padding:2px 8px;border-radius:4px}
.bad{color:#fff;background:#d62728;padding:2px 8px;border-radius:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left}
.figs td,.figs th{min-width:96px} td.hot{background:#fdd;font-weight:bold} .muted{color:#666;font-size:13px} pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}
svg{display:block;margin:10px 0}
</style></head><body>
<h1>fleetsim report: {{.R.Result.Scenario}} {{if .OK}}<span class="ok">contracts kept</span>{{else}}<span class="bad">CONTRACT BROKEN</span>{{end}}</h1>
<div class="muted">{{.R.Description}}</div>
<div class="muted">Started {{.R.Started.Format "2006-01-02 15:04:05 MST"}}; mode {{.R.Result.Mode}}; {{.R.Result.Gateways}} gateways, {{.R.Result.Devices}} devices, publishing for {{f1 .R.Result.DurationS}} s, {{len .R.Faults}} faults.</div>

<h2>Every message accounted for</h2>
<table class="figs"><tr><th>created</th><th>acknowledged</th><th>in the log</th><th>delivered</th><th>dropped by policy</th><th>lost</th><th>duplicates in log</th></tr>
<tr><td>{{.R.Result.Published}}</td><td>{{.R.Result.Acked}}</td><td>{{.R.Result.InLog}}</td><td>{{.R.Result.Delivered}}</td><td>{{.R.Result.Dropped}}</td><td class="{{if .R.Result.Lost}}hot{{end}}">{{.R.Result.Lost}}</td><td class="{{if .R.Result.Duplicates}}hot{{end}}">{{.R.Result.Duplicates}}</td></tr></table>
<table class="figs"><tr><th>out of order</th><th>unknown</th><th>device resends</th><th>redeliveries</th><th>never acknowledged</th><th>publishes refused by gateways</th></tr>
<tr><td class="{{if .R.Result.OutOfOrder}}hot{{end}}">{{.R.Result.OutOfOrder}}</td><td class="{{if .R.Result.Unknown}}hot{{end}}">{{.R.Result.Unknown}}</td><td>{{.R.Result.DeviceResends}}</td><td>{{.R.Result.Redeliveries}}</td><td>{{.R.Result.Failed}}</td><td>{{.R.Result.RefusedPublishes}}</td></tr></table>
<table class="figs"><tr><th>backlog drained in</th><th>latency p50</th><th>p99</th><th>max</th><th>publish rate</th></tr>
<tr><td>{{if .R.Result.Drained}}{{f1 .R.Result.DrainS}} s{{else}}did not drain ({{f1 .R.Result.DrainS}} s){{end}}</td><td>{{f1 .R.Result.P50ms}} ms</td><td>{{f1 .R.Result.P99ms}} ms</td><td>{{f0 .R.Result.MaxMs}} ms</td><td>{{f0 .R.Result.PublishRate}} msg/s</td></tr></table>
<p class="muted">Delivered: in the central log and delivered by every subscription expecting it. Dropped by policy: dead-lettered by a subscription after its retries, or deleted by a gateway's outbox policy and counted by it. Lost: acknowledged to the device, and neither. Duplicates: one outbox record twice in the log (forbidden). Device resends: a device resent a message after a lost PUBACK (MQTT QoS 1 allows it). "Backlog drained in" counts from the end of the last fault{{if not .R.Faults}} (here: the end of publishing){{end}} until every message created before it was settled.</p>
{{if .Drops}}<table><tr><th class="l">drop reason</th><th>count</th></tr>{{range .Drops}}<tr><td class="l">{{.K}}</td><td>{{.V}}</td></tr>{{end}}</table>{{end}}
{{if .DLReason}}<table><tr><th class="l">dead-letter reason</th><th>count</th></tr>{{range .DLReason}}<tr><td class="l">{{.K}}</td><td>{{.V}}</td></tr>{{end}}</table>{{end}}
{{if .DevErrs}}<table><tr><th class="l">device publish error (retried)</th><th>count</th></tr>{{range .DevErrs}}<tr><td class="l">{{.K}}</td><td>{{.V}}</td></tr>{{end}}</table>{{end}}

<h2>Charts</h2>
{{range .Charts}}{{.}}{{end}}

{{if .R.Result.Subscriptions}}<h2>Subscriptions</h2>
<table><tr><th class="l">subscription</th><th>expected</th><th>delivered</th><th>dead-lettered</th><th>missing</th><th>redeliveries</th><th>out of order</th><th>unexpected</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>
{{range .R.Result.Subscriptions}}<tr><td class="l">{{.ID}}</td><td>{{.Expected}}</td><td>{{.Delivered}}</td><td>{{.DeadLettered}}</td><td>{{.Missing}}</td><td>{{.Redeliveries}}</td><td>{{.OutOfOrder}}</td><td>{{.Unexpected}}</td><td>{{f1 .P50ms}}</td><td>{{f1 .P99ms}}</td><td>{{f0 .MaxMs}}</td></tr>{{end}}</table>{{end}}

<h2>Sinks</h2>
<table><tr><th class="l">sink</th><th>accepted</th><th>answered with an error</th><th>held by a hang</th></tr>
{{range .R.Sinks}}<tr><td class="l">{{.Name}}</td><td>{{.Received}}</td><td>{{.Rejected}}</td><td>{{.Held}}</td></tr>{{end}}</table>

<h2>Gateways</h2>
{{if .GWNote}}<p class="muted">{{.GWNote}}</p>{{end}}
<table><tr><th class="l">gateway</th><th>created</th><th>acked</th><th>in log</th><th>delivered</th><th>dropped</th><th>lost</th><th>max backlog</th><th>refused</th><th>disk failures</th><th>policy drops</th><th>restarts</th><th>uplink datagrams lost / blackholed</th></tr>
{{range .Gateways}}<tr><td class="l">{{.Gateway}}</td><td>{{.Published}}</td><td>{{.Acked}}</td><td>{{.InLog}}</td><td>{{.Delivered}}</td><td>{{.Dropped}}</td><td>{{.Lost}}</td><td>{{.MaxBacklog}}</td><td>{{.Refused}}</td><td>{{.DiskFailures}}</td><td>{{if .DropsKnown}}{{.PolicyDrops}}{{else}}n/a{{end}}</td><td>{{.Restarts}}</td><td>{{.Uplink.Dropped}} / {{.Uplink.Blackholed}} of {{.Uplink.Received}}</td></tr>{{end}}</table>

<h2>Faults</h2>
{{if .R.Faults}}<table><tr><th>#</th><th class="l">kind</th><th class="l">targets</th><th>planned</th><th>applied</th><th class="l">detail</th></tr>
{{range .R.Faults}}<tr><td>{{.Index}}</td><td class="l">{{.Kind}}</td><td class="l">{{.Label}}</td><td>{{f1 .PlannedAtS}}–{{f1 .PlannedEndS}} s</td><td>{{if ge .StartS 0.0}}{{f1 .StartS}}–{{if ge .EndS 0.0}}{{f1 .EndS}}{{else}}?{{end}} s{{else}}no{{end}}</td><td class="l">{{.Detail}}{{if .Error}} error: {{.Error}}{{end}}</td></tr>{{end}}</table>{{else}}<p class="muted">No faults.</p>{{end}}

{{if .R.Notes}}<h2>Notes</h2><ul>{{range .R.Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}

<h2>Scenario</h2>
<details><summary>the scenario as run (defaults applied)</summary><pre>{{.R.Scenario}}</pre></details>
</body></html>
`))
