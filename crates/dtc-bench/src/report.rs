//! The bench's output: the JSON objects, the text table, the progress bar
//! and the timeline CSV.
//!
//! stdout carries only results (a table, or one JSON object per line with
//! `--json`); the progress bar and phase lines go to stderr.

use crate::load::{BUCKET, Tally};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

/// Milliseconds with 3 decimals (microsecond resolution).
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1e3
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// None when nothing committed.
    pub fn of(t: &Tally) -> Option<Percentiles> {
        let h = &t.latency_us;
        if h.is_empty() {
            return None;
        }
        let max = h.max();
        // hdrhistogram reports the top of a value's bucket for both, so
        // p99 <= max holds; min() keeps it true whatever the rounding.
        let q = |q: f64| us_to_ms(h.value_at_quantile(q).min(max));
        Some(Percentiles {
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: us_to_ms(max),
        })
    }
}

/// One client level, as printed with `--json` (one line).
#[derive(Debug, Serialize)]
pub struct LevelJson {
    pub clients: usize,
    pub secs: f64,
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    pub throughput_tps: f64,
    /// null when nothing committed.
    pub latency_ms: Option<Percentiles>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub branches: usize,
    pub payload_bytes: usize,
    pub reply_at_decision: bool,
    /// Clients whose counts were lost because they did not stop in time.
    pub clients_lost: usize,
    /// Leader changes the monitor saw from the start of the level's warm-up
    /// to the end of its window. With no fault injected this should be 0:
    /// anything else means heartbeats were starved by the load.
    pub leader_changes: usize,
}

impl LevelJson {
    pub fn new(
        clients: usize,
        window: Duration,
        tally: &Tally,
        lost: usize,
        setup: &Setup,
    ) -> LevelJson {
        let secs = window.as_secs_f64();
        LevelJson {
            clients,
            secs: (secs * 1000.0).round() / 1000.0,
            committed: tally.committed,
            aborted: tally.aborted,
            errors: tally.error_count(),
            throughput_tps: if secs > 0.0 {
                (tally.committed as f64 / secs * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency_ms: Percentiles::of(tally),
            errors_by_code: tally.errors.clone(),
            branches: setup.branches,
            payload_bytes: setup.payload_bytes,
            reply_at_decision: setup.reply_at_decision,
            clients_lost: lost,
            leader_changes: 0,
        }
    }
}

/// The shape of every transaction, for the headers.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub branches: usize,
    pub payload_bytes: usize,
    pub reply_at_decision: bool,
}

impl Setup {
    pub fn describe(&self) -> String {
        format!(
            "{} branch{} of {} byte{}, Execute answers {}",
            self.branches,
            if self.branches == 1 { "" } else { "es" },
            self.payload_bytes,
            if self.payload_bytes == 1 { "" } else { "s" },
            if self.reply_at_decision {
                "at the decision (--reply-at-decision)"
            } else {
                "after the participants' acks"
            }
        )
    }
}

pub const TABLE_HEADER: [&str; 11] = [
    "clients",
    "secs",
    "committed",
    "aborted",
    "errors",
    "txn/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "elections",
];
const WIDTHS: [usize; 11] = [7, 6, 10, 8, 7, 9, 8, 8, 8, 8, 9];

fn row(cells: &[String]) -> String {
    cells
        .iter()
        .zip(WIDTHS)
        .map(|(c, w)| format!("{c:>w$}"))
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn table_header() -> String {
    let head = row(&TABLE_HEADER.map(String::from));
    let rule = row(&WIDTHS.map(|w| "-".repeat(w)));
    format!("{head}\n{rule}")
}

pub fn table_row(l: &LevelJson) -> String {
    let p = |f: fn(&Percentiles) -> f64| {
        l.latency_ms
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| format!("{:.2}", f(p)))
    };
    row(&[
        l.clients.to_string(),
        format!("{:.2}", l.secs),
        l.committed.to_string(),
        l.aborted.to_string(),
        l.errors.to_string(),
        format!("{:.1}", l.throughput_tps),
        p(|p| p.p50),
        p(|p| p.p95),
        p(|p| p.p99),
        p(|p| p.max),
        l.leader_changes.to_string(),
    ])
}

/// `Unavailable 3, DeadlineExceeded 1`.
pub fn codes_text(codes: &BTreeMap<String, u64>) -> String {
    codes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Median (mean of the middle two for an even count) and max.
pub fn median_max(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[n - 1])
}

/// Writes `t_ms,commits,event`: commits per [`BUCKET`] from the start of the
/// load, and the events (`kill`, `restart`, `clients=N`) in the bucket they
/// fell in (several joined with `;`).
pub fn write_timeline(path: &Path, buckets: &[u64], events: &[(Duration, String)]) -> Result<()> {
    let bucket_of = |d: &Duration| (d.as_micros() / BUCKET.as_micros()) as usize;
    let last_event = events.iter().map(|(d, _)| bucket_of(d)).max();
    let len = buckets.len().max(last_event.map_or(0, |b| b + 1));
    let mut by_bucket: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (d, e) in events {
        by_bucket.entry(bucket_of(d)).or_default().push(e);
    }
    let mut out = String::from("t_ms,commits,event\n");
    for i in 0..len {
        let commits = buckets.get(i).copied().unwrap_or(0);
        let event = by_bucket.get(&i).map(|e| e.join(";")).unwrap_or_default();
        out.push_str(&format!(
            "{},{commits},{event}\n",
            i as u128 * BUCKET.as_millis()
        ));
    }
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("cannot create the timeline file {}", path.display()))?;
    f.write_all(out.as_bytes())
        .with_context(|| format!("cannot write the timeline file {}", path.display()))?;
    Ok(())
}

/// stderr: a progress bar on a terminal (not with `--json`), phase lines
/// unless `--json`, warnings always.
pub struct Ui {
    json: bool,
    tty: bool,
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl Ui {
    pub fn new(json: bool) -> Ui {
        Ui {
            json,
            tty: std::io::stderr().is_terminal(),
            bar: std::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Option<ProgressBar> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f` with the bar (if any) out of the way, so lines do not mix with it.
    fn suspended(&self, f: impl FnOnce()) {
        match self.current() {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// A phase line (not with `--json`).
    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.json {
            self.suspended(|| eprintln!("dtc bench: {}", msg.as_ref()));
        }
    }

    /// A line on stderr even with `--json` (which keeps stdout for results):
    /// what the user must know to find what the run left behind.
    pub fn note(&self, msg: impl AsRef<str>) {
        self.suspended(|| eprintln!("dtc bench: {}", msg.as_ref()));
    }

    /// A phase line only when there is no progress bar to say it (stderr
    /// is not a terminal), and not with `--json`.
    pub fn say_without_bar(&self, msg: impl AsRef<str>) {
        if !self.tty {
            self.say(msg);
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        self.suspended(|| eprintln!("dtc bench: warning: {}", msg.as_ref()));
    }

    /// A line of results on stdout.
    pub fn out(&self, line: impl AsRef<str>) {
        self.suspended(|| println!("{}", line.as_ref()));
    }

    /// Shows a new bar of `len` steps (`None`: a spinner); hidden when stderr
    /// is not a terminal or with `--json`.
    pub fn bar(&self, len: Option<u64>, prefix: String) -> ProgressBar {
        let bar = if self.json || !self.tty {
            ProgressBar::hidden()
        } else {
            let template = match len {
                Some(_) => "{prefix} [{bar:30.cyan/blue}] {msg}",
                None => "{prefix} {spinner} {msg}",
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr_with_hz(10))
                .with_style(style)
                .with_prefix(prefix);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        };
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
        bar
    }

    /// Removes the bar.
    pub fn clear(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
        assert_eq!(median_max(&[]), (0.0, 0.0));
    }

    #[test]
    fn percentiles_are_ordered() {
        let mut t = Tally::new();
        for us in [100, 200, 300, 5_000, 70_000] {
            t.latency_us.saturating_record(us);
        }
        let p = Percentiles::of(&t).expect("some latencies");
        assert!(p.p50 <= p.p95 && p.p95 <= p.p99 && p.p99 <= p.max, "{p:?}");
        assert!((p.max - 70.0).abs() < 0.1, "{p:?}");
        assert!(Percentiles::of(&Tally::new()).is_none());
    }

    #[test]
    fn timeline_marks_events_in_their_bucket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.csv");
        let events = vec![
            (Duration::from_millis(150), "kill".to_string()),
            (Duration::from_millis(420), "restart".to_string()),
        ];
        write_timeline(&path, &[5, 6, 7], &events).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "t_ms,commits,event\n0,5,\n100,6,kill\n200,7,\n300,0,\n400,0,restart\n"
        );
    }
}
