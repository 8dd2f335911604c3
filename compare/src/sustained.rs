//! The sustained-ingest curve: what an engine's write path looks like slice by slice as the
//! store grows (throughput, stall time, compaction debt, level shape, bytes on disk, RSS), its
//! summary figures, and how the long presets render it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::report::{self, col, num, Better, Column, Figures};
use crate::workload::Meta;

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

const MIB: f64 = (1u64 << 20) as f64;

const SUSTAINED_DURABLE_COLUMNS: &[Column] = &[
    col("durable_msgs_s", "msgs/s", Better::Higher),
    col(
        "durable_slowest_msgs_s",
        "slowest slice msgs/s",
        Better::Higher,
    ),
    col("durable_last_first", "last ÷ first slice", Better::Higher),
    col("durable_stall_pct", "stalled % of run", Better::Lower),
    col("durable_peak_l0", "peak L0 files", Better::Info),
    col(
        "durable_peak_pending_mib",
        "peak pending MiB",
        Better::Lower,
    ),
    col("durable_wamp", "write amp at end", Better::Lower),
    col("durable_wamp_settled", "write amp settled", Better::Lower),
    col("durable_settle_s", "settle s", Better::Lower),
    col(
        "durable_disk_ratio_end",
        "disk ÷ logical at end",
        Better::Lower,
    ),
    col(
        "durable_disk_ratio_settled",
        "disk ÷ logical settled",
        Better::Lower,
    ),
    col("rss_durable_mib", "peak RSS MiB", Better::Lower),
];

const SUSTAINED_BUFFERED_COLUMNS: &[Column] = &[
    col("buffered_msgs_s", "msgs/s", Better::Higher),
    col(
        "buffered_slowest_msgs_s",
        "slowest slice msgs/s",
        Better::Higher,
    ),
    col("buffered_last_first", "last ÷ first slice", Better::Higher),
    col("buffered_stall_pct", "stalled % of run", Better::Lower),
    col("buffered_peak_l0", "peak L0 files", Better::Info),
    col(
        "buffered_peak_pending_mib",
        "peak pending MiB",
        Better::Lower,
    ),
    col("buffered_wamp", "write amp at end", Better::Lower),
    col("buffered_wamp_settled", "write amp settled", Better::Lower),
    col("buffered_settle_s", "settle s", Better::Lower),
    col(
        "buffered_disk_ratio_end",
        "disk ÷ logical at end",
        Better::Lower,
    ),
    col(
        "buffered_disk_ratio_settled",
        "disk ÷ logical settled",
        Better::Lower,
    ),
    col("rss_build_mib", "peak RSS MiB", Better::Lower),
];

/// A counter of an engine sample (0 if the engine does not report it).
fn counter(sample: &Value, key: &str) -> f64 {
    f(sample, key).unwrap_or(0.0)
}

/// Bytes written to segment / SST files (flushes and compactions) in a sample.
fn tree_bytes(sample: &Value) -> f64 {
    counter(sample, "flush_bytes_written") + counter(sample, "compaction_bytes_written")
}

/// The summary figures of one sustained-ingest curve (keys without the mode prefix).
pub fn curve_figures(
    c: &Value,
    closed_disk: Option<f64>,
    logical: u64,
) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    let points = match c.get("points").and_then(Value::as_array) {
        Some(p) if !p.is_empty() => p,
        _ => return out,
    };
    let (first, last) = (&points[0], &points[points.len() - 1]);
    let before = &c["before"];
    let settled = &c["settled"];
    let rate = |p: &Value| f(p, "msgs_s");
    if let (Some(a), Some(b)) = (rate(first), rate(last)) {
        out.push(("last_first", b / a));
    }
    if let Some(min) = points.iter().filter_map(rate).reduce(f64::min) {
        out.push(("slowest_msgs_s", min));
    }
    let reports = last.get("engine").is_some_and(Value::is_object);
    let ingest_s = f(last, "ingest_s").unwrap_or(f64::NAN);
    if reports {
        let e = &last["engine"];
        let stall_s = (counter(e, "stall_micros") - counter(before, "stall_micros")) / 1e6;
        out.push(("stall_s", stall_s));
        out.push(("stall_pct", 100.0 * stall_s / ingest_s));
        // chatstore splits its stalls: waiting for the flush (memory) or in the write
        // controller's delay (level 0 over its slowdown threshold). In the JSON only.
        for (key, name) in [
            ("stall_flush_micros", "stall_flush_pct"),
            ("stall_level0_micros", "stall_level0_pct"),
        ] {
            if e.get(key).is_some() {
                let s = (counter(e, key) - counter(before, key)) / 1e6;
                out.push((name, 100.0 * s / ingest_s));
            }
        }
        out.push(("pending_mib", counter(e, "pending_compaction_bytes") / MIB));
        let peak_pending = points
            .iter()
            .map(|p| counter(&p["engine"], "pending_compaction_bytes"))
            .fold(0.0, f64::max);
        out.push(("peak_pending_mib", peak_pending / MIB));
        let peak_l0 = points
            .iter()
            .filter_map(|p| {
                p["engine"]["files_per_level"]
                    .get(0)
                    .and_then(Value::as_f64)
            })
            .fold(0.0, f64::max);
        out.push(("peak_l0", peak_l0));
        if let Some(lb) = f(last, "logical_bytes").filter(|&b| b > 0.0) {
            out.push(("wamp", (tree_bytes(e) - tree_bytes(before)) / lb));
        }
        if settled["engine"].is_object() && logical > 0 {
            out.push((
                "wamp_settled",
                (tree_bytes(&settled["engine"]) - tree_bytes(before)) / logical as f64,
            ));
        }
    }
    if let (Some(d), Some(lb)) = (f(last, "disk_bytes"), f(last, "logical_bytes")) {
        out.push(("disk_ratio_end", d / lb));
    }
    if let Some(d) = closed_disk {
        out.push(("disk_ratio_settled", d / logical as f64));
    }
    if let Some(s) = f(settled, "settle_s") {
        out.push(("settle_s", s));
    }
    if let Some(peak) = points
        .iter()
        .filter_map(|p| f(p, "rss_kib"))
        .reduce(f64::max)
    {
        out.push(("curve_peak_rss_mib", peak / 1024.0));
    }
    out
}

/// The points of one engine's curve in one ingest group (`durable` or `build`).
fn points<'a>(raw: &'a Value, group: &str) -> Option<&'a Vec<Value>> {
    raw.get(group)?.get("curve")?.get("points")?.as_array()
}

fn msgs_label(n: f64) -> String {
    if n >= 1e6 && (n % 1e6) == 0.0 {
        format!("{} M", n / 1e6)
    } else {
        num(n)
    }
}

/// Files per level, level 0 first, without the empty levels past the deepest used one.
fn levels(sample: &Value) -> String {
    let v: Vec<u64> = sample
        .get("files_per_level")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let used = v.iter().rposition(|&n| n > 0).map_or(1, |i| i + 1);
    if v.is_empty() {
        return "-".into();
    }
    v[..used]
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

const MODES: [(&str, &str); 2] = [("durable", "durable"), ("build", "buffered")];

/// The tables of a long preset: summaries per mode, throughput per slice side by side, then
/// each engine's curve per mode (last run), then how the figures are taken.
pub fn render(
    engines: &[String],
    by_engine: &BTreeMap<String, Vec<Figures>>,
    raw_runs: &[Value],
    meta: &Meta,
) -> String {
    let mut s = String::new();
    s.push_str(&report::table(
        "Durable ingest (fsync per batch), sustained",
        SUSTAINED_DURABLE_COLUMNS,
        engines,
        by_engine,
    ));
    s.push('\n');
    s.push_str(&report::table(
        "Buffered ingest, sustained",
        SUSTAINED_BUFFERED_COLUMNS,
        engines,
        by_engine,
    ));
    s.push('\n');
    let last = raw_runs.last().and_then(|r| r.get("engines"));
    let raw = |e: &str| last.and_then(|l| l.get(e));
    let with_curve: Vec<&String> = engines
        .iter()
        .filter(|e| raw(e).and_then(|r| points(r, "durable")).is_some())
        .collect();
    let ratio =
        with_curve.iter().any(|e| *e == "chatstore") && with_curve.iter().any(|e| *e == "rocksdb");

    // Throughput per slice, side by side.
    let _ = writeln!(
        s,
        "### Throughput per slice (msgs/s inside the write calls of each slice; last run)\n"
    );
    let _ = write!(s, "| messages |");
    let mut sep = String::from("|---:|");
    for (_, mode) in MODES {
        for e in &with_curve {
            let _ = write!(s, " {e} {mode} |");
            sep.push_str("---:|");
        }
        if ratio {
            let _ = write!(s, " chatstore ÷ rocksdb {mode} |");
            sep.push_str("---:|");
        }
    }
    let _ = writeln!(s, "\n{sep}");
    let rows = with_curve
        .iter()
        .filter_map(|e| raw(e).and_then(|r| points(r, "durable")).map(Vec::len))
        .max()
        .unwrap_or(0);
    let rate = |e: &str, group: &str, i: usize| {
        raw(e)
            .and_then(|r| points(r, group))
            .and_then(|p| p.get(i))
            .and_then(|p| f(p, "msgs_s"))
    };
    for i in 0..rows {
        let msgs = with_curve
            .iter()
            .find_map(|e| raw(e).and_then(|r| points(r, "durable")?.get(i)?.get("msgs")?.as_f64()))
            .unwrap_or(f64::NAN);
        let _ = write!(s, "| {} |", msgs_label(msgs));
        for (group, _) in MODES {
            for e in &with_curve {
                let _ = write!(s, " {} |", rate(e, group, i).map_or("-".into(), num));
            }
            if ratio {
                match (rate("chatstore", group, i), rate("rocksdb", group, i)) {
                    (Some(c), Some(r)) if r > 0.0 => {
                        let _ = write!(s, " **{:.2}×** |", c / r);
                    }
                    _ => s.push_str(" - |"),
                }
            }
        }
        s.push('\n');
    }
    s.push('\n');

    // Each engine's curve per mode.
    for (group, mode) in MODES {
        for e in &with_curve {
            let Some(curve) = raw(e)
                .and_then(|r| r.get(group))
                .and_then(|g| g.get("curve"))
            else {
                continue;
            };
            let Some(pts) = curve.get("points").and_then(Value::as_array) else {
                continue;
            };
            let before = &curve["before"];
            let _ = writeln!(s, "### {e}, {mode} ingest: the curve (last run)\n");
            s.push_str(
                "| messages | msgs/s | ingest s | stalled s | pending compaction MiB | files L0/L1/… | \
                 disk MiB | disk ÷ logical | write amp | RSS MiB | load |\n\
                 |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            let engine_cells = |sample: &Value, logical: f64| -> [String; 4] {
                if !sample.is_object() {
                    return ["-".into(), "-".into(), "-".into(), "-".into()];
                }
                let stalled =
                    (counter(sample, "stall_micros") - counter(before, "stall_micros")) / 1e6;
                [
                    num(stalled),
                    num(counter(sample, "pending_compaction_bytes") / MIB),
                    levels(sample),
                    num((tree_bytes(sample) - tree_bytes(before)) / logical),
                ]
            };
            for p in pts {
                let logical = f(p, "logical_bytes").unwrap_or(f64::NAN);
                let disk = f(p, "disk_bytes").unwrap_or(f64::NAN);
                let [stalled, pending, lv, wamp] = engine_cells(&p["engine"], logical);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {stalled} | {pending} | {lv} | {} | {} | {wamp} | {} | {} |",
                    msgs_label(f(p, "msgs").unwrap_or(f64::NAN)),
                    num(f(p, "msgs_s").unwrap_or(f64::NAN)),
                    num(f(p, "ingest_s").unwrap_or(f64::NAN)),
                    num(disk / MIB),
                    num(disk / logical),
                    num(f(p, "rss_kib").unwrap_or(f64::NAN) / 1024.0),
                    f(p, "load1").map_or("-".into(), |l| format!("{l:.2}")),
                );
            }
            let settled = &curve["settled"];
            if settled.is_object() {
                let logical = meta.logical_bytes as f64;
                let disk = f(settled, "disk_bytes").unwrap_or(f64::NAN);
                let [stalled, pending, lv, wamp] = engine_cells(&settled["engine"], logical);
                let _ = writeln!(
                    s,
                    "| settled (+{} s) | | | {stalled} | {pending} | {lv} | {} | {} | {wamp} | | |",
                    num(f(settled, "settle_s").unwrap_or(f64::NAN)),
                    num(disk / MIB),
                    num(disk / logical),
                );
            }
            s.push('\n');
        }
    }
    s.push_str(METHOD);
    s
}

const METHOD: &str = "\
## How each figure is taken

Every engine runs in its own processes (`chatstore-compare child ENGINE GROUP ...`), one after \
the other: durable ingest into a fresh store, then buffered ingest into another fresh store \
(chatstore's chat model, users and groups, set up first and untimed). The long presets run \
no reads: they measure sustained ingest, as the store grows and compaction debt builds up.

- **Ingest**: all messages written single-threaded in batches of 1000; durable = each batch \
  fsynced before the call returns (chatstore `Durability::Sync`, RocksDB `sync=true`), \
  buffered = no fsync per batch (chatstore `Durability::Buffered` with a 500 ms background \
  sync, RocksDB `sync=false`). Text is generated before the clock starts.
- **The curve**: after every slice (1 M messages for `long`), the harness stops the clock and \
  samples: the slice's msgs/s (slice messages ÷ the time of that slice's write calls and \
  batch assembly), the engine's counters, the bytes on disk (allocated blocks of every file in \
  the store's directory: WAL, manifest, segments / SSTs) and the process's resident memory \
  above what it was before the engine was opened (the pre-generated text arena is not \
  counted). **msgs/s** of the whole phase = messages ÷ the sum of the slices' times.
- **stalled s**: time the engine held writers back, cumulative from the start of the ingest. \
  chatstore: `Stats::write_stall_micros` (at each memtable switch, writers wait while too \
  many frozen memtables wait for their flush, and up to 1 s more while level 0 holds five \
  times its compaction trigger). RocksDB: the `rocksdb.stall.micros` ticker (write \
  slowdowns and stops; statistics are on at `ExceptHistogramOrTimers`, counters only); its \
  `rocksdb.stats` \"Cumulative stall\" line is kept in the JSON beside it. **stalled % of run** = \
  stall time ÷ ingest time.
- **pending compaction**: chatstore `Stats::pending_compaction_bytes`; RocksDB \
  `rocksdb.estimate-pending-compaction-bytes`. The two estimates are computed differently \
  (chatstore: bytes still to move to bring every level within budget, plus provisional \
  level-0 bytes; RocksDB: bytes its compactions would rewrite to bring every level under its \
  target), so compare their trends more than their values.
- **files L0/L1/…**: chatstore `Stats::segments_per_level`; RocksDB \
  `rocksdb.num-files-at-level<N>` (with dynamic level sizes its data lands in the deepest \
  levels first, so the middle levels read 0).
- **write amp** = bytes written to segment / SST files by flushes and compactions since the \
  ingest started ÷ logical bytes ingested so far (chatstore `Stats::flush_bytes_written + \
  compaction_bytes_written`; RocksDB tickers `rocksdb.flush.write.bytes + \
  rocksdb.compact.write.bytes`). The WAL is not counted (each engine writes every message to \
  it once more; `wal_bytes_written` is in the JSON). **at end**: when the last write call \
  returned; **settled**: after the settle below. chatstore's buffered phase also flushes and \
  compacts its chat-model state (memberships of 500 K groups), written before the ingest \
  starts and counted from there on.
- **settle s**: after the ingest, flush, sync and wait until compaction is idle (chatstore: \
  `pending_compaction_bytes` 0; RocksDB: no compaction pending or running), at most 300 s. \
  **disk ÷ logical settled**: allocated bytes of the store's files after that and a clean \
  close, ÷ the logical bytes.
- **peak RSS**: VmHWM of the process minus the VmHWM before the engine was opened.
- **load**: the machine's 1-minute load average when the point was taken (the harness's own \
  process counts for about 1 of it, the engine's background threads for more).

One run takes long (`--runs 1` is the usual choice for `long`), and other builds share the \
machine's two cores: compare engines within one run, and read the load averages above.
";
