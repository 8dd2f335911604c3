//! Markdown tables: rows = engines, columns = figures (median of the runs with the min-max
//! spread), plus chatstore's ratio to the best peer per column.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Which way is better.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Informative: no ratio.
    Info,
}

pub struct Column {
    pub key: &'static str,
    pub header: &'static str,
    pub better: Better,
}

pub const fn col(key: &'static str, header: &'static str, better: Better) -> Column {
    Column {
        key,
        header,
        better,
    }
}

/// Figures of one engine in one run.
pub type Figures = BTreeMap<String, f64>;

/// Compact number: 3 significant digits, k / M suffixes for large values.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    let (v, suffix) = if a >= 1e6 {
        (x / 1e6, " M")
    } else if a >= 1e4 {
        (x / 1e3, " k")
    } else {
        (x, "")
    };
    let va = v.abs();
    let s = if va >= 100.0 {
        format!("{v:.0}")
    } else if va >= 10.0 {
        format!("{v:.1}")
    } else if va >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    format!("{s}{suffix}")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median, min, max of one figure of one engine over the runs.
pub fn stat(runs: &[&Figures], key: &str) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = runs.iter().filter_map(|f| f.get(key).copied()).collect();
    if v.is_empty() {
        return None;
    }
    let m = median(&mut v);
    Some((m, v[0], v[v.len() - 1]))
}

/// One markdown table. `by_engine` maps an engine to its figures in each run.
pub fn table(
    title: &str,
    columns: &[Column],
    engines: &[String],
    by_engine: &BTreeMap<String, Vec<Figures>>,
) -> String {
    // Columns no engine has figures for (e.g. added after the run) are left out.
    let columns: Vec<&Column> = columns
        .iter()
        .filter(|c| {
            by_engine
                .values()
                .any(|runs| runs.iter().any(|f| f.contains_key(c.key)))
        })
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "### {title}\n");
    let arrow = |b: Better| match b {
        Better::Higher => " ↑",
        Better::Lower => " ↓",
        Better::Info => "",
    };
    let _ = write!(s, "| engine |");
    for c in &columns {
        let _ = write!(s, " {}{} |", c.header, arrow(c.better));
    }
    let _ = write!(s, "\n|---|");
    for _ in &columns {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    let medians = |engine: &str, key: &str| -> Option<f64> {
        let runs: Vec<&Figures> = by_engine.get(engine)?.iter().collect();
        stat(&runs, key).map(|(m, _, _)| m)
    };
    for e in engines {
        let runs: Vec<&Figures> = by_engine
            .get(e)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let _ = write!(s, "| {e} |");
        for c in &columns {
            match stat(&runs, c.key) {
                Some((m, lo, hi)) if runs.len() > 1 => {
                    let _ = write!(s, " {} ({}–{}) |", num(m), num(lo), num(hi));
                }
                Some((m, _, _)) => {
                    let _ = write!(s, " {} |", num(m));
                }
                None => {
                    let _ = write!(s, " - |");
                }
            }
        }
        s.push('\n');
    }
    if engines.iter().any(|e| e == "chatstore") && engines.len() > 1 {
        let _ = write!(s, "| **chatstore ÷ best peer** |");
        for c in &columns {
            let ours = medians("chatstore", c.key);
            let peers: Vec<f64> = engines
                .iter()
                .filter(|e| *e != "chatstore")
                .filter_map(|e| medians(e, c.key))
                .collect();
            let best = match c.better {
                Better::Higher => peers.iter().copied().fold(f64::NAN, f64::max),
                Better::Lower => peers.iter().copied().fold(f64::NAN, f64::min),
                Better::Info => f64::NAN,
            };
            match ours {
                Some(o) if best.is_finite() && best != 0.0 => {
                    let _ = write!(s, " **{:.2}×** |", o / best);
                }
                _ => {
                    let _ = write!(s, " |");
                }
            }
        }
        s.push('\n');
    }
    s
}
