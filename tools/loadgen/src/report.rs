//! Reports: the reference benchmark's results block, a JSON report, and a self-contained
//! HTML page with SVG plots (latency over time, percentile distribution, throughput).

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{PhaseResult, Shape};

/// The reference system's targets (its performance guide).
const TARGET_P95_MS: f64 = 100.0;
const TARGET_MEAN_MS: f64 = 100.0;
const TARGET_P99_MS: f64 = 150.0;

/// The results block, in the reference benchmark's layout, with verdicts.
pub(crate) fn results_block(result: &PhaseResult) -> String {
    let s = &result.stats;
    let line = "═".repeat(55);
    let thin = "─".repeat(55);
    let mut out = String::new();
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out, "{:^55}", format!("BENCHMARK RESULTS: {}", result.phase.name.to_uppercase()));
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out, "Total Requests:        {}", thousands(s.total()));
    let _ = writeln!(out, "Successful:            {}", thousands(s.ok));
    let _ = writeln!(out, "Failed:                {}", thousands(s.failed));
    let _ = writeln!(out, "Wrong answers:         {}", thousands(s.wrong));
    let _ = writeln!(out, "Total Duration:        {:.2}s", result.elapsed.as_secs_f64());
    let _ = writeln!(out, "{thin}");
    let _ = writeln!(out, "Response Times:");
    let _ = writeln!(out, "  Average:             {:.2} ms", s.latency_us.mean() / 1000.0);
    let _ = writeln!(out, "  Minimum:             {:.2} ms", s.latency_us.min() as f64 / 1000.0);
    let _ = writeln!(out, "  Maximum:             {:.2} ms", s.latency_us.max() as f64 / 1000.0);
    let _ = writeln!(out, "  50th percentile:     {:.2} ms", s.ms(0.50));
    let _ = writeln!(out, "  95th percentile:     {:.2} ms", s.ms(0.95));
    let _ = writeln!(out, "  99th percentile:     {:.2} ms", s.ms(0.99));
    let _ = writeln!(out, "{thin}");
    let _ = writeln!(out, "Throughput:            {:.2} req/s", result.throughput());
    let _ = writeln!(out, "{line}");
    for verdict in verdicts(result) {
        let _ = writeln!(out, "{verdict}");
    }
    out
}

/// Pass/fail lines against the reference's targets and our own correctness bar.
pub(crate) fn verdicts(result: &PhaseResult) -> Vec<String> {
    let s = &result.stats;
    let check = |ok: bool, text: String| format!("{} {text}", if ok { "PASS" } else { "FAIL" });
    vec![
        check(s.ms(0.95) < TARGET_P95_MS, format!("95th percentile {:.2} ms < {TARGET_P95_MS} ms", s.ms(0.95))),
        check(
            s.latency_us.mean() / 1000.0 < TARGET_MEAN_MS,
            format!("average {:.2} ms < {TARGET_MEAN_MS} ms", s.latency_us.mean() / 1000.0),
        ),
        check(s.ms(0.99) < TARGET_P99_MS, format!("99th percentile {:.2} ms < {TARGET_P99_MS} ms", s.ms(0.99))),
        check(s.failed == 0, format!("{} failed requests", s.failed)),
        check(s.wrong == 0, format!("{} wrong answers", s.wrong)),
    ]
}

/// Whether every verdict passed.
pub(crate) fn passed(result: &PhaseResult) -> bool {
    verdicts(result).iter().all(|v| v.starts_with("PASS"))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (idx, ch) in digits.chars().enumerate() {
        if idx > 0 && (digits.len() - idx).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[derive(Serialize)]
struct JsonPhase<'a> {
    name: &'a str,
    shape: String,
    total: u64,
    successful: u64,
    failed: u64,
    wrong_answers: u64,
    transport_errors: u64,
    by_status: Vec<(u16, u64)>,
    duration_s: f64,
    throughput_rps: f64,
    latency_ms: JsonLatency,
    percentiles: Vec<(f64, f64)>,
    timeline: Vec<JsonSecond>,
    verdicts: Vec<String>,
}

#[derive(Serialize)]
struct JsonLatency {
    mean: f64,
    min: f64,
    max: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    p999: f64,
}

#[derive(Serialize)]
struct JsonSecond {
    second: usize,
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The quantiles plotted and reported: 0 to 99.999%.
const QUANTILES: [f64; 13] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0];

fn shape_text(shape: &Shape) -> String {
    match shape {
        Shape::Closed { requests, concurrency } => {
            format!("closed loop: {requests} requests, {concurrency} concurrent")
        }
        Shape::Open { rate, duration, concurrency } => {
            format!("open loop: {rate} req/s for {:.0} s, up to {concurrency} in flight", duration.as_secs_f64())
        }
    }
}

fn json_phase(result: &PhaseResult) -> JsonPhase<'_> {
    let s = &result.stats;
    JsonPhase {
        name: &result.phase.name,
        shape: shape_text(&result.phase.shape),
        total: s.total(),
        successful: s.ok,
        failed: s.failed,
        wrong_answers: s.wrong,
        transport_errors: s.transport_errors,
        by_status: s.by_status.iter().map(|(k, v)| (*k, *v)).collect(),
        duration_s: result.elapsed.as_secs_f64(),
        throughput_rps: result.throughput(),
        latency_ms: JsonLatency {
            mean: s.latency_us.mean() / 1000.0,
            min: s.latency_us.min() as f64 / 1000.0,
            max: s.latency_us.max() as f64 / 1000.0,
            p50: s.ms(0.5),
            p90: s.ms(0.9),
            p95: s.ms(0.95),
            p99: s.ms(0.99),
            p999: s.ms(0.999),
        },
        percentiles: QUANTILES.iter().map(|q| (q * 100.0, s.ms(*q))).collect(),
        timeline: s
            .timeline
            .iter()
            .enumerate()
            .map(|(second, slot)| JsonSecond {
                second,
                requests: slot.requests,
                errors: slot.errors,
                p50_ms: slot.quantile_us(0.5) / 1000.0,
                p99_ms: slot.quantile_us(0.99) / 1000.0,
            })
            .collect(),
        verdicts: verdicts(result),
    }
}

/// The JSON report of a run.
pub(crate) fn json(url: &str, mix: &str, results: &[PhaseResult]) -> String {
    let phases: Vec<_> = results.iter().map(json_phase).collect();
    let report = serde_json::json!({
        "url": url,
        "mix": mix,
        "generated_at": chrono::Utc::now().to_rfc3339(),
        "phases": phases,
    });
    serde_json::to_string_pretty(&report).expect("report serialises")
}

/// A self-contained HTML report: no scripts, no external files.
pub(crate) fn html(url: &str, mix: &str, results: &[PhaseResult]) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>coupon-engine load report</title><style>\
         body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#1d2330;padding:0 1rem}}\
         h1{{font-size:1.5rem;margin-bottom:.2rem}} h2{{font-size:1.15rem;margin-top:2.2rem;border-bottom:1px solid #dde2ea;padding-bottom:.3rem}}\
         .sub{{color:#5b6475}} table{{border-collapse:collapse;margin:.8rem 0}} td,th{{padding:.25rem .8rem;text-align:right;border-bottom:1px solid #eef1f5}}\
         th{{text-align:left;color:#5b6475;font-weight:600}} .pass{{color:#137333}} .fail{{color:#b3261e;font-weight:600}}\
         .charts{{display:grid;grid-template-columns:1fr;gap:1.2rem}} svg{{background:#fbfcfe;border:1px solid #e6e9ef;border-radius:6px}}\
         .cards{{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}} .card{{background:#f4f6fa;border-radius:8px;padding:.6rem 1rem;min-width:8rem}}\
         .card b{{display:block;font-size:1.35rem}}</style></head><body>\
         <h1>coupon-engine load report</h1><div class=\"sub\">{} · mix <b>{}</b> · {}</div>",
        escape(url),
        escape(mix),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    for result in results {
        let s = &result.stats;
        let _ = write!(
            page,
            "<h2>{} <span class=\"sub\">{}</span></h2>",
            escape(&result.phase.name),
            escape(&shape_text(&result.phase.shape))
        );
        let _ = write!(
            page,
            "<div class=\"cards\"><div class=\"card\">throughput<b>{:.0}/s</b></div><div class=\"card\">p50<b>{:.2} ms</b></div>\
             <div class=\"card\">p99<b>{:.2} ms</b></div><div class=\"card\">max<b>{:.1} ms</b></div>\
             <div class=\"card\">requests<b>{}</b></div><div class=\"card\">failed<b>{}</b></div></div>",
            result.throughput(),
            s.ms(0.5),
            s.ms(0.99),
            s.latency_us.max() as f64 / 1000.0,
            thousands(s.total()),
            thousands(s.failed)
        );
        page.push_str("<ul>");
        for verdict in verdicts(result) {
            let class = if verdict.starts_with("PASS") { "pass" } else { "fail" };
            let _ = write!(page, "<li class=\"{class}\">{}</li>", escape(&verdict));
        }
        page.push_str("</ul><div class=\"charts\">");
        let seconds: Vec<f64> = (0..s.timeline.len()).map(|t| t as f64).collect();
        let p50: Vec<f64> = s.timeline.iter().map(|t| t.quantile_us(0.5) / 1000.0).collect();
        let p99: Vec<f64> = s.timeline.iter().map(|t| t.quantile_us(0.99) / 1000.0).collect();
        page.push_str(&line_chart(
            "Latency over time (per second)",
            "second of the run",
            "ms",
            &seconds,
            &[("p50", "#3b6fd8", &p50), ("p99", "#d8563b", &p99)],
            false,
        ));
        let nines: Vec<f64> = QUANTILES[..QUANTILES.len() - 1].iter().map(|q| -(1.0 - q).log10()).collect();
        let latencies: Vec<f64> = QUANTILES[..QUANTILES.len() - 1].iter().map(|q| s.ms(*q)).collect();
        page.push_str(&line_chart(
            "Percentile distribution",
            "percentile (0, 90, 99, 99.9, 99.99, 99.999)",
            "ms",
            &nines,
            &[("latency", "#7a3bd8", &latencies)],
            true,
        ));
        let rps: Vec<f64> = s.timeline.iter().map(|t| t.requests as f64).collect();
        let errors: Vec<f64> = s.timeline.iter().map(|t| t.errors as f64).collect();
        page.push_str(&line_chart(
            "Throughput (requests answered per second)",
            "second of the run",
            "req/s",
            &seconds,
            &[("answered", "#1f9d6b", &rps), ("failed", "#b3261e", &errors)],
            false,
        ));
        page.push_str("</div><table><tr><th>percentile</th><th>latency</th></tr>");
        for q in QUANTILES {
            let _ = write!(page, "<tr><th>{}</th><td>{:.3} ms</td></tr>", format_quantile(q), s.ms(q));
        }
        page.push_str("</table><table><tr><th>status</th><th>answers</th></tr>");
        for (status, n) in &s.by_status {
            let _ = write!(page, "<tr><th>{status}</th><td>{}</td></tr>", thousands(*n));
        }
        if s.transport_errors > 0 {
            let _ = write!(page, "<tr><th>no answer</th><td>{}</td></tr>", thousands(s.transport_errors));
        }
        page.push_str("</table>");
    }
    page.push_str("<p class=\"sub\">Latency is measured from when each request was due (open loop) or sent (closed loop) to the last byte of its answer. Made by tools/loadgen.</p></body></html>");
    page
}

fn format_quantile(q: f64) -> String {
    let text = format!("{:.3}", q * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// An SVG line chart; `nines` labels the x axis as percentiles (x = number of nines).
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[f64],
    series: &[(&str, &str, &[f64])],
    nines: bool,
) -> String {
    let (w, h, left, right, top, bottom) = (940.0, 280.0, 64.0, 40.0, 34.0, 44.0);
    let x_max = xs.iter().copied().fold(1.0_f64, f64::max);
    let y_max = series.iter().flat_map(|(_, _, ys)| ys.iter().copied()).fold(0.0_f64, f64::max).max(1e-3) * 1.1;
    let px = |x: f64| left + (x / x_max) * (w - left - right);
    let py = |y: f64| top + (1.0 - y / y_max) * (h - top - bottom);
    let mut svg = format!("<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"{}\">", escape(title));
    let _ = write!(svg, "<text x=\"{left}\" y=\"20\" font-size=\"14\" font-weight=\"600\">{}</text>", escape(title));
    for step in 0..=4 {
        let y = y_max * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#e3e7ee\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6475\">{}</text>",
            w - right,
            left - 6.0,
            py(y) + 4.0,
            short(y),
            py = py(y)
        );
    }
    let ticks: Vec<(f64, String)> = if nines {
        (0..=5).map(|n| (f64::from(n), format_quantile(1.0 - 10f64.powi(-n)))).collect()
    } else {
        let step = (x_max / 10.0).ceil().max(1.0);
        (0..=10).map(|n| f64::from(n) * step).filter(|x| *x <= x_max).map(|x| (x, format!("{x:.0}"))).collect()
    };
    for (x, label) in ticks {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#5b6475\">{}</text>",
            px(x),
            h - bottom + 16.0,
            escape(&label)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#5b6475\">{}</text>",
        (left + w - right) / 2.0,
        h - 8.0,
        escape(x_label)
    );
    let _ = write!(
        svg,
        "<text x=\"14\" y=\"{}\" font-size=\"11\" fill=\"#5b6475\" transform=\"rotate(-90 14 {})\">{}</text>",
        h / 2.0,
        h / 2.0,
        escape(y_label)
    );
    for (idx, (name, colour, ys)) in series.iter().enumerate() {
        let points: Vec<String> =
            xs.iter().zip(ys.iter()).map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let lx = w - right - 120.0 + 0.0 * idx as f64;
        let ly = top + 4.0 + 16.0 * idx as f64;
        let _ = write!(
            svg,
            "<rect x=\"{lx}\" y=\"{ly}\" width=\"12\" height=\"3\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            lx + 18.0,
            ly + 5.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn short(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::Phase;
    use crate::stats::Stats;

    fn result(latencies_ms: &[u64], failed: u64) -> PhaseResult {
        let mut stats = Stats::new();
        for ms in latencies_ms {
            stats.record(Duration::from_millis(*ms), Duration::from_millis(*ms), Some(200), true);
        }
        for _ in 0..failed {
            stats.record(Duration::ZERO, Duration::from_millis(1), Some(503), false);
        }
        PhaseResult {
            phase: Phase { name: "reference".into(), shape: Shape::Closed { requests: 4, concurrency: 2 } },
            stats,
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn block_and_verdicts() {
        let good = result(&[1, 2, 3, 4], 0);
        let block = results_block(&good);
        assert!(block.contains("Total Requests:        4"), "{block}");
        assert!(block.contains("Throughput:            2.00 req/s"), "{block}");
        assert!(passed(&good));
        assert!(!passed(&result(&[1, 2, 3, 400], 0)), "a slow p99 fails");
        assert!(!passed(&result(&[1, 2, 3], 1)), "a failed request fails");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(format_quantile(0.999), "99.9%");
    }

    #[test]
    fn reports_are_well_formed() {
        let results = [result(&[1, 5, 9], 1)];
        let json: serde_json::Value = serde_json::from_str(&json("http://x", "validate", &results)).unwrap();
        assert_eq!(json["phases"][0]["total"], 4);
        let page = html("http://x", "validate <b>", &results);
        assert!(page.starts_with("<!doctype html>") && page.ends_with("</html>"));
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(page.contains("validate &lt;b&gt;"));
        assert!(!page.contains("<script"));
    }
}
