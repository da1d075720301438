//! The results: JSON records, the table on stdout and the SVG chart.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub broker: String,
    pub client: String,
    pub mode: String,
    pub payload_bytes: usize,
    pub messages: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    /// The rate of every round this record is the median of, in the order measured.
    pub rounds_msgs_per_sec: Vec<f64>,
}

/// The median of one client's rounds (the upper one of an even count), keeping every
/// round's rate; `None` without rounds.
pub fn median(mut runs: Vec<Record>) -> Option<Record> {
    let rates: Vec<f64> = runs.iter().map(|r| r.msgs_per_sec).collect();
    runs.sort_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
    let middle = runs.len() / 2;
    let mut record = runs.into_iter().nth(middle)?;
    record.rounds_msgs_per_sec = rates;
    Some(record)
}

/// `target/bench` of this workspace (`TOWER_MQ_BENCH_OUT` to put it elsewhere): not
/// under a shared `CARGO_TARGET_DIR`, where runs from other checkouts would overwrite it.
pub fn out_dir() -> PathBuf {
    std::env::var_os("TOWER_MQ_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"))
}

pub fn write(records: &[Record]) -> std::io::Result<()> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_string_pretty(records).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("throughput.json"), json + "\n")?;
    std::fs::write(dir.join("throughput.svg"), svg(records))?;
    Ok(())
}

/// The record `bare` has for the same broker, mode and payload; `batched` compares
/// with the bare client's own batch path.
fn bare_of<'a>(records: &'a [Record], r: &Record) -> Option<&'a Record> {
    records.iter().find(|b| {
        b.client == "bare"
            && b.broker == r.broker
            && b.mode == r.mode
            && b.payload_bytes == r.payload_bytes
    })
}

/// The slowest and fastest of several rounds ("-" for one).
fn spread(rounds: &[f64]) -> String {
    if rounds.len() < 2 {
        return "-".into();
    }
    let min = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rounds.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

fn micros(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn table(records: &[Record]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| broker | client | mode | payload B | messages | seconds | msgs/s | rounds (min–max) | vs bare | p50 µs | p99 µs | max µs |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in records {
        let ratio = bare_of(records, r)
            .map(|b| format!("{:.2}", r.msgs_per_sec / b.msgs_per_sec))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.3} | {:.0} | {} | {} | {} | {} | {} |",
            r.broker,
            r.client,
            r.mode,
            r.payload_bytes,
            r.messages,
            r.seconds,
            r.msgs_per_sec,
            spread(&r.rounds_msgs_per_sec),
            ratio,
            micros(r.p50_us),
            micros(r.p99_us),
            micros(r.max_us)
        );
    }
    out
}

const CLIENTS: [(&str, &str); 4] = [
    ("bare", "#7f7f7f"),
    ("service", "#1f77b4"),
    ("stack", "#ff7f0e"),
    ("batched", "#2ca02c"),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel per mode and payload (throughput modes only): a group of bars per broker,
/// one bar per client, heights in msgs/s on a log scale.
pub fn svg(records: &[Record]) -> String {
    let mut panels: Vec<(String, usize)> = Vec::new();
    for r in records {
        let key = (r.mode.clone(), r.payload_bytes);
        if !r.mode.starts_with("latency") && !panels.contains(&key) {
            panels.push(key);
        }
    }
    let mut brokers: Vec<&str> = Vec::new();
    for r in records {
        if !brokers.contains(&r.broker.as_str()) {
            brokers.push(&r.broker);
        }
    }
    let (bar, gap, left, panel_height, plot_height) = (12.0, 16.0, 70.0, 240.0, 160.0);
    let group = bar * CLIENTS.len() as f64 + gap;
    let width = left + group * brokers.len().max(1) as f64 + 20.0;
    let height = 40.0 + panel_height * panels.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, (name, color)) in CLIENTS.iter().enumerate() {
        let x = left + i as f64 * 80.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.0}" y="10" width="10" height="10" fill="{color}"/><text x="{:.0}" y="19">{name}</text>"#,
            x + 14.0
        );
    }
    for (p, (mode, payload)) in panels.iter().enumerate() {
        let top = 40.0 + p as f64 * panel_height;
        let base = top + 24.0 + plot_height;
        let in_panel: Vec<&Record> = records
            .iter()
            .filter(|r| &r.mode == mode && r.payload_bytes == *payload)
            .collect();
        // Log scale: the brokers span four orders of magnitude.
        let decades = in_panel
            .iter()
            .map(|r| r.msgs_per_sec)
            .fold(10.0f64, f64::max)
            .log10()
            .ceil();
        let height_of = |v: f64| plot_height * v.max(1.0).log10() / decades;
        let _ = writeln!(
            out,
            r#"<text x="{left:.0}" y="{:.0}" font-weight="bold">{} — {} B payload (msgs/s, log scale)</text>"#,
            top + 14.0,
            escape(mode),
            payload
        );
        let _ = writeln!(
            out,
            r##"<line x1="{left:.0}" y1="{base:.0}" x2="{:.0}" y2="{base:.0}" stroke="#333"/>"##,
            width - 10.0
        );
        for decade in 1..=decades as i32 {
            let value = 10f64.powi(decade);
            let y = base - height_of(value);
            let _ = writeln!(
                out,
                r##"<line x1="{left:.0}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{value:.0}</text>"##,
                width - 10.0,
                left - 4.0,
                y + 4.0
            );
        }
        for (b, broker) in brokers.iter().enumerate() {
            let x0 = left + b as f64 * group + gap / 2.0;
            for (c, (client, color)) in CLIENTS.iter().enumerate() {
                let Some(r) = in_panel
                    .iter()
                    .find(|r| r.broker == *broker && r.client == *client)
                else {
                    continue;
                };
                let h = height_of(r.msgs_per_sec);
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{broker} {client}: {:.0} msgs/s</title></rect>"#,
                    x0 + c as f64 * bar,
                    base - h,
                    bar - 1.0,
                    r.msgs_per_sec
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
                x0 + bar * CLIENTS.len() as f64 / 2.0,
                base + 14.0,
                escape(broker)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
