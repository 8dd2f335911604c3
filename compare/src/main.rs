//! The comparison harness: chatstore side by side with RocksDB, fjall, sled and redb on one
//! chat workload, each engine in its own processes, median of several runs.
//!
//! `cargo run --release -- --preset quick` (see README.md). The binary re-invokes itself as
//! `chatstore-compare child ENGINE GROUP PRESET DIR WORKDIR` for each engine and group of
//! phases; a child prints its figures as one JSON line.

mod engines;
mod machine;
mod phases;
mod report;
mod sustained;
mod workload;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use engines::{Res, ENGINES};
use report::{col, Better, Column, Figures};
use workload::{Meta, Preset, Workload, BATCH};

struct Args {
    preset: Preset,
    runs: usize,
    engines: Vec<String>,
    work: PathBuf,
    out: PathBuf,
    /// Re-render results/<preset>.md from results/<preset>.json without running anything.
    rerender: bool,
}

fn usage() -> String {
    let presets: Vec<&str> = workload::PRESETS.iter().map(|p| p.name).collect();
    format!(
        "usage: chatstore-compare [--preset {}] [--runs N] [--engines {}] [--dir WORKDIR] [--out RESULTS_DIR]",
        presets.join("|"),
        ENGINES.join(",")
    )
}

fn parse_args(args: &[String]) -> Res<Args> {
    let mut a = Args {
        preset: workload::preset("quick").ok_or("no quick preset")?,
        runs: 3,
        engines: ENGINES.iter().map(|s| s.to_string()).collect(),
        work: std::env::temp_dir().join("chatstore-compare"),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
        rerender: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(usage);
        match flag.as_str() {
            "--preset" => {
                let v = value()?;
                a.preset = workload::preset(&v).ok_or_else(|| format!("unknown preset {v}"))?;
            }
            "--runs" => a.runs = value()?.parse()?,
            "--engines" => a.engines = value()?.split(',').map(str::to_string).collect(),
            "--dir" => a.work = PathBuf::from(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--rerender" => a.rerender = true,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{}", usage()).into()),
        }
    }
    for e in &a.engines {
        if !ENGINES.contains(&e.as_str()) {
            return Err(format!("unknown engine {e}\n{}", usage()).into());
        }
    }
    Ok(a)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("child") {
        child(&args[1..])
    } else {
        parse_args(&args).and_then(|a| if a.rerender { rerender(a) } else { parent(&a) })
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn child(args: &[String]) -> Res<()> {
    let [engine, group, preset, dir, work] = args else {
        return Err("usage: chatstore-compare child ENGINE GROUP PRESET DIR WORKDIR".into());
    };
    let preset = workload::preset(preset).ok_or("unknown preset")?;
    phases::run_child(engine, group, preset, Path::new(dir), Path::new(work))
}

/// Bytes the files under `dir` occupy on disk (allocated blocks).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += disk_bytes(&entry.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Sum of file lengths under `dir`.
fn file_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += file_bytes(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn run_group(engine: &str, group: &str, a: &Args, dir: &Path) -> Res<Value> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "child",
            engine,
            group,
            a.preset.name,
            &dir.to_string_lossy(),
            &a.work.to_string_lossy(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut result = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            let ready = v.get("ready").is_some();
            result = Some(v);
            if ready {
                // The crash: SIGKILL, no clean close.
                child.kill()?;
                break;
            }
        }
    }
    let status = child.wait()?;
    match result {
        Some(v) => Ok(v),
        None => Err(format!("{engine} {group} failed ({status})").into()),
    }
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Runs every group of one engine once; returns the raw results per group.
fn run_engine(engine: &str, a: &Args, meta: &Meta) -> Res<Value> {
    let durable_dir = a.work.join(format!("{engine}-durable"));
    let main_dir = a.work.join(format!("{engine}-main"));
    for d in [&durable_dir, &main_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    let durable = run_group(engine, "durable", a, &durable_dir)?;
    let durable_disk = disk_bytes(&durable_dir);
    let durable_files = file_bytes(&durable_dir);
    std::fs::remove_dir_all(&durable_dir)?;
    let build = run_group(engine, "build", a, &main_dir)?;
    let build_disk = disk_bytes(&main_dir);
    if a.preset.ingest_only {
        std::fs::remove_dir_all(&main_dir)?;
        return Ok(json!({
            "durable": durable,
            "durable_disk_bytes": durable_disk,
            "durable_file_bytes": durable_files,
            "build": build,
            "build_disk_bytes": build_disk,
            "logical_bytes": meta.logical_bytes,
        }));
    }
    let reads = run_group(engine, "reads", a, &main_dir)?;
    let crash = run_group(engine, "crash", a, &main_dir)?;
    let crashed_disk = disk_bytes(&main_dir);
    let reopen = run_group(engine, "reopen", a, &main_dir)?;
    std::fs::remove_dir_all(&main_dir)?;
    Ok(json!({
        "durable": durable,
        "durable_disk_bytes": durable_disk,
        "durable_file_bytes": durable_files,
        "build": build,
        "build_disk_bytes": build_disk,
        "reads": reads,
        "crash": crash,
        "crashed_disk_bytes": crashed_disk,
        "reopen": reopen,
        "logical_bytes": meta.logical_bytes,
    }))
}

/// The figures of the tables, from one engine's raw results and the run's disk limits.
fn figures(raw: &Value, disk: &Value, meta: &Meta, messages: u64) -> Figures {
    let mut m = Figures::new();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let g = |group: &str, key: &str| raw.get(group).and_then(|v| f(v, key));
    let durable = g("durable", "durable_msgs_s");
    let buffered = g("build", "buffered_msgs_s");
    put("durable_msgs_s", durable);
    put("buffered_msgs_s", buffered);
    let logical_per_msg = meta.logical_bytes as f64 / messages as f64;
    if let (Some(d), Some(fs)) = (durable, f(disk, "fsyncs_s")) {
        put("durable_pct", Some(100.0 * d / (fs * BATCH as f64)));
    }
    if let (Some(b), Some(bw)) = (buffered, f(disk, "write_mb_s")) {
        put(
            "buffered_pct",
            Some(100.0 * b * logical_per_msg / (bw * 1e6)),
        );
    }
    let disk_bytes = f(raw, "durable_disk_bytes");
    put(
        "disk_bytes_per_msg",
        disk_bytes.map(|d| d / messages as f64),
    );
    put(
        "disk_ratio",
        disk_bytes.map(|d| d / meta.logical_bytes as f64),
    );
    for (group, key) in [
        ("reads", "latest_ops_s"),
        ("reads", "latest_p50_us"),
        ("reads", "latest_p99_us"),
        ("reads", "paging_msgs_s"),
        ("reads", "unread_users_s"),
        ("reads", "unread_p99_us"),
        ("reads", "open_clean_ms"),
        ("reopen", "reopen_ms"),
        ("reopen", "tail_recovered_pct"),
    ] {
        put(key, g(group, key));
    }
    let mib = |group: &str| g(group, "rss_kib").map(|k| k / 1024.0);
    let rss: Vec<f64> = ["durable", "build", "reads", "reopen"]
        .iter()
        .filter_map(|grp| mib(grp))
        .collect();
    for grp in ["durable", "build", "reads", "reopen"] {
        put(&format!("rss_{grp}_mib"), mib(grp));
    }
    let peak = |key: &str| {
        ["durable", "build", "reads", "reopen"]
            .iter()
            .filter_map(|grp| g(grp, key).map(|k| k / 1024.0))
            .reduce(f64::max)
    };
    put("peak_anon_mib", peak("anon_kib"));
    put("peak_file_mib", peak("file_kib"));
    put("peak_rss_mib", rss.iter().copied().reduce(f64::max));
    for (group, mode, disk_key) in [
        ("durable", "durable", "durable_disk_bytes"),
        ("build", "buffered", "build_disk_bytes"),
    ] {
        if let Some(c) = raw.get(group).and_then(|g| g.get("curve")) {
            for (k, v) in sustained::curve_figures(c, f(raw, disk_key), meta.logical_bytes) {
                m.insert(format!("{mode}_{k}"), v);
            }
        }
    }
    m
}

const INGEST_COLUMNS: &[Column] = &[
    col("durable_msgs_s", "durable ingest msgs/s", Better::Higher),
    col("durable_pct", "% of fsync limit", Better::Higher),
    col("buffered_msgs_s", "buffered ingest msgs/s", Better::Higher),
    col("buffered_pct", "% of write bandwidth", Better::Higher),
    col("disk_bytes_per_msg", "disk bytes/msg", Better::Lower),
    col("disk_ratio", "disk ÷ logical", Better::Lower),
    col("peak_rss_mib", "peak RSS MiB", Better::Lower),
];

const READ_COLUMNS: &[Column] = &[
    col("latest_ops_s", "newest-50 ops/s", Better::Higher),
    col("latest_p50_us", "p50 µs", Better::Lower),
    col("latest_p99_us", "p99 µs", Better::Lower),
    col("paging_msgs_s", "paging msgs/s", Better::Higher),
    col("unread_users_s", "unread reconnects/s", Better::Higher),
    col("unread_p99_us", "unread p99 µs", Better::Lower),
    col("reopen_ms", "reopen after crash ms", Better::Lower),
    col("tail_recovered_pct", "tail recovered %", Better::Info),
];

const RSS_COLUMNS: &[Column] = &[
    col("rss_durable_mib", "durable ingest", Better::Lower),
    col("rss_build_mib", "buffered ingest", Better::Lower),
    col("rss_reads_mib", "reads", Better::Lower),
    col("rss_reopen_mib", "reopen after crash", Better::Lower),
    col("peak_anon_mib", "peak anonymous (heap)", Better::Lower),
    col("peak_file_mib", "peak file-backed (mmap)", Better::Info),
    col("open_clean_ms", "clean open ms", Better::Lower),
];

fn engine_versions() -> String {
    let lock = include_str!("../Cargo.lock");
    let mut out = Vec::new();
    let mut name = "";
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = n.trim_matches('"');
        } else if let Some(v) = line.strip_prefix("version = ") {
            if [
                "rocksdb",
                "librocksdb-sys",
                "fjall",
                "lsm-tree",
                "sled",
                "redb",
            ]
            .contains(&name)
            {
                out.push(format!("{name} {}", v.trim_matches('"')));
            }
        }
    }
    out.join(", ")
}

fn parent(a: &Args) -> Res<()> {
    std::fs::create_dir_all(&a.work)?;
    std::fs::create_dir_all(&a.out)?;
    let p = a.preset;
    let started = now_utc();
    eprintln!(
        "preset {}: {} messages, {} conversations, {} run(s), engines {}",
        p.name,
        p.messages,
        p.conversations,
        a.runs,
        a.engines.join(",")
    );
    let wall = std::time::Instant::now();
    let load_start = machine::loadavg();
    let w = Workload::new(p);
    let meta = Meta::load_or_generate(&w, &a.work)?;

    let commit = chatstore_commit();
    let mut by_engine: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
    let mut raw_runs = Vec::new();
    let mut disks = Vec::new();
    for run in 0..a.runs {
        eprintln!("== run {} of {}: disk limits", run + 1, a.runs);
        let disk = machine::disk_limits(&a.work, 2048, 1024)?;
        eprintln!("   {disk}");
        disks.push(disk.clone());
        let mut raw_engines = serde_json::Map::new();
        for e in &a.engines {
            eprintln!("== run {} of {}: {e}", run + 1, a.runs);
            let (t, load_before) = (std::time::Instant::now(), machine::loadavg());
            let mut raw = run_engine(e, a, &meta)?;
            raw["wall_s"] = json!(t.elapsed().as_secs_f64());
            raw["load_before"] = json!(load_before);
            raw["load_after"] = json!(machine::loadavg());
            let figs = figures(&raw, &disk, &meta, p.messages);
            eprintln!("   {e}: {}", serde_json::to_string(&figs)?);
            by_engine.entry(e.clone()).or_default().push(figs);
            raw_engines.insert(e.clone(), raw);
        }
        raw_runs.push(json!({ "disk": disk, "engines": raw_engines }));
    }

    let info = RunInfo {
        started: started.clone(),
        commit: commit.clone(),
        wall_s: Some(wall.elapsed().as_secs_f64()),
        load_start: Some(load_start),
        load_end: Some(machine::loadavg()),
    };
    let md = render(a, &w, &meta, &info, &disks, &by_engine, &raw_runs);
    let md_path = a.out.join(format!("{}.md", p.name));
    std::fs::write(&md_path, &md)?;
    let json_path = a.out.join(format!("{}.json", p.name));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({
            "preset": p,
            "command": command_line(a),
            "started": started,
            "chatstore_commit": commit,
            "wall_s": info.wall_s,
            "load_start": info.load_start,
            "load_end": info.load_end,
            "machine": machine::describe(&a.work),
            "logical_bytes": meta.logical_bytes,
            "content_bytes": meta.content_bytes,
            "runs": raw_runs,
        }))?,
    )?;
    println!("{md}");
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

/// The chatstore commit the harness was built from (recorded by `build.rs`).
fn chatstore_commit() -> String {
    env!("CHATSTORE_COMMIT").to_string()
}

/// Rebuilds the markdown from the JSON of an earlier run (e.g. after a change of layout).
fn rerender(mut a: Args) -> Res<()> {
    let json_path = a.out.join(format!("{}.json", a.preset.name));
    let v: Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
    let runs = v["runs"].as_array().ok_or("no runs in the JSON")?.clone();
    let messages = a.preset.messages;
    let w = Workload::new(a.preset);
    let meta = Meta {
        preset: a.preset.name.to_string(),
        counts: Vec::new(),
        counts_offline: Vec::new(),
        logical_bytes: v["logical_bytes"].as_u64().ok_or("no logical_bytes")?,
        content_bytes: v["content_bytes"].as_u64().ok_or("no content_bytes")?,
    };
    a.runs = runs.len();
    let mut engines: Vec<String> = Vec::new();
    let mut by_engine: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
    let mut disks = Vec::new();
    for run in &runs {
        disks.push(run["disk"].clone());
        if let Some(map) = run["engines"].as_object() {
            for e in ENGINES {
                if let Some(raw) = map.get(*e) {
                    if !engines.iter().any(|x| x == e) {
                        engines.push(e.to_string());
                    }
                    by_engine.entry(e.to_string()).or_default().push(figures(
                        raw,
                        &run["disk"],
                        &meta,
                        messages,
                    ));
                }
            }
        }
    }
    a.engines = engines;
    let started = v["started"].as_str().unwrap_or("?").to_string();
    let commit = v["chatstore_commit"].as_str().unwrap_or("?").to_string();
    let load = |k: &str| serde_json::from_value::<[f64; 3]>(v[k].clone()).ok();
    let info = RunInfo {
        started,
        commit,
        wall_s: v["wall_s"].as_f64(),
        load_start: load("load_start"),
        load_end: load("load_end"),
    };
    let md = render(&a, &w, &meta, &info, &disks, &by_engine, &runs);
    let md_path = a.out.join(format!("{}.md", a.preset.name));
    std::fs::write(&md_path, &md)?;
    eprintln!("re-rendered {}", md_path.display());
    Ok(())
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn command_line(a: &Args) -> String {
    let mut s = format!(
        "cd compare && cargo run --release -- --preset {}",
        a.preset.name
    );
    if a.runs != 3 {
        s.push_str(&format!(" --runs {}", a.runs));
    }
    if a.engines.len() != ENGINES.len() {
        s.push_str(&format!(" --engines {}", a.engines.join(",")));
    }
    s
}

/// When and against what a run was made, how long it took and how loaded the machine was.
struct RunInfo {
    started: String,
    commit: String,
    wall_s: Option<f64>,
    load_start: Option<[f64; 3]>,
    load_end: Option<[f64; 3]>,
}

fn render(
    a: &Args,
    w: &Workload,
    meta: &Meta,
    info: &RunInfo,
    disks: &[Value],
    by_engine: &BTreeMap<String, Vec<Figures>>,
    raw_runs: &[Value],
) -> String {
    let p = a.preset;
    let disk_figs: Vec<Figures> = disks
        .iter()
        .map(|d| {
            ["write_mb_s", "fsync_write_mb_s", "fsyncs_s"]
                .iter()
                .filter_map(|k| f(d, k).map(|v| (k.to_string(), v)))
                .collect()
        })
        .collect();
    let refs: Vec<&Figures> = disk_figs.iter().collect();
    let dstat = |k: &str| {
        report::stat(&refs, k).map_or("-".to_string(), |(m, lo, hi)| {
            format!(
                "{} ({}–{})",
                report::num(m),
                report::num(lo),
                report::num(hi)
            )
        })
    };
    let mean_text = meta.content_bytes as f64 / p.messages as f64;
    let mut s = String::new();
    if p.ingest_only {
        s.push_str(&format!(
            "# Sustained ingest, preset `{}`: {}\n\n",
            p.name,
            a.engines.join(", ")
        ));
    } else {
        s.push_str(&format!(
            "# chatstore vs RocksDB, fjall, sled, redb: preset `{}`\n\n",
            p.name
        ));
    }
    s.push_str(&format!("- Command: `{}`\n", command_line(a)));
    s.push_str(&format!("- Date: {}\n", info.started));
    if let Some(wall) = info.wall_s {
        s.push_str(&format!(
            "- Wall time of the whole run: {:.1} min\n",
            wall / 60.0
        ));
    }
    if let (Some(l0), Some(l1)) = (info.load_start, info.load_end) {
        let l = |x: [f64; 3]| format!("{:.2} / {:.2} / {:.2}", x[0], x[1], x[2]);
        s.push_str(&format!(
            "- Load average (1 / 5 / 15 min) at the start: {}; at the end: {} (the machine is \
             shared with other work; each engine's load before and after is in the JSON)\n",
            l(l0),
            l(l1)
        ));
    }
    s.push_str(&format!("- Machine: {}\n", machine::describe(&a.work)));
    s.push_str(&format!(
        "- Crates: chatstore at commit {}; {}\n",
        info.commit,
        engine_versions()
    ));
    s.push_str(&format!(
        "- Workload: {} messages over {} conversations chosen by Zipf(1.0), 2-8 members each ({} users), \
         word-like text of ~{} B median (mean {:.0} B), batches of {BATCH}; logical size {:.1} MB \
         (key 16 B + sender 8 B + timestamp 8 B + content = {:.0} B/msg).\n",
        p.messages,
        p.conversations,
        w.users(),
        workload::TEXT_MEDIAN,
        mean_text,
        meta.logical_bytes as f64 / 1e6,
        meta.logical_bytes as f64 / p.messages as f64,
    ));
    s.push_str(&format!(
        "- Disk limits (sequential 128 KiB writes): {} MB/s without fsync; with an fdatasync after each, {} MB/s = {} fdatasyncs/s.\n",
        dstat("write_mb_s"),
        dstat("fsync_write_mb_s"),
        dstat("fsyncs_s")
    ));
    s.push_str(&format!(
        "- Each cell: median of {} run(s) (min–max). ↑ higher is better, ↓ lower is better. \
         The last row divides chatstore's median by the best peer's median in that column \
         (for ↓ columns, below 1 means chatstore leads).\n\n",
        a.runs
    ));
    if p.ingest_only {
        s.push_str(&sustained::render(&a.engines, by_engine, raw_runs, meta));
        return s;
    }
    s.push_str(&report::table(
        "Ingest, space, memory",
        INGEST_COLUMNS,
        &a.engines,
        by_engine,
    ));
    s.push('\n');
    s.push_str(&report::table(
        "Reads and recovery",
        READ_COLUMNS,
        &a.engines,
        by_engine,
    ));
    s.push('\n');
    s.push_str(&report::table(
        "Peak RSS by process (MiB) and clean open time",
        RSS_COLUMNS,
        &a.engines,
        by_engine,
    ));
    s.push('\n');
    // chatstore's own counters, last run.
    if let Some(cs) = raw_runs
        .last()
        .and_then(|r| r.get("engines"))
        .and_then(|e| e.get("chatstore"))
    {
        let x = |group: &str, key: &str| {
            cs.get(group)
                .and_then(|g| g.get("extra"))
                .and_then(|e| e.get(key))
                .map_or("-".to_string(), |v| match v.as_f64() {
                    Some(n) if !v.is_array() => report::num(n),
                    _ => v.to_string(),
                })
        };
        s.push_str(&format!(
            "chatstore's `stats()` (last run): after durable ingest and settle, write amplification {}, \
             space amplification {}, {} segments (per level {}), {} write stalls ({} µs); \
             in the reads process, read amplification {} segments per read, block cache {} hits / {} misses.\n\n",
            x("durable", "write_amplification"),
            x("durable", "space_amplification"),
            x("durable", "segments"),
            x("durable", "segments_per_level"),
            x("durable", "write_stalls"),
            x("durable", "write_stall_micros"),
            x("reads", "read_amplification"),
            x("reads", "block_cache_hits"),
            x("reads", "block_cache_misses"),
        ));
    }
    s.push_str(METHOD);
    s
}

const METHOD: &str = "\
## How each figure is taken

Every engine runs in its own processes (`chatstore-compare child ENGINE GROUP ...`), one \
after the other, so engines never share a CPU, a page cache warm-up or a heap.

- **durable ingest**: a fresh store; all messages written single-threaded in batches of 1000, \
  each batch fsynced before the call returns (chatstore `append_batch` with `Durability::Sync`, \
  RocksDB `WriteBatch` with `sync=true`, fjall batch with `PersistMode::SyncData`, sled \
  `apply_batch` + `flush`, redb one write transaction with `Durability::Immediate`). Text is \
  generated before the clock starts. **% of fsync limit** = msgs/s ÷ (fdatasyncs/s × 1000).
- **buffered ingest**: the same into another fresh store, no fsync per batch (chatstore \
  `Durability::Buffered` with a 500 ms background sync, RocksDB `sync=false`, fjall \
  `PersistMode::Buffer`, sled without `flush` (its own 500 ms flusher), redb \
  `Durability::None`). chatstore's chat model (users, groups) is set up first, untimed. \
  **% of write bandwidth** = msgs/s × logical bytes/msg ÷ sequential write MB/s without fsync.
- **disk bytes/msg**, **disk ÷ logical**: the durable store after a flush, after background \
  compaction went idle and a clean close: allocated blocks of every file in the directory \
  (WAL, manifest, everything), divided by the message count and by the logical bytes.
- **newest-50**: the built store reopened; conversations drawn by the same Zipf(1.0) law (empty \
  ones skipped), a tenth as many untimed warm-up reads first. chatstore `Store::latest`; peers \
  a bounded range scan from the counter the harness keeps. Latency per call.
- **paging**: every conversation's whole history, newest page of 50 first, then the 50 before \
  the oldest seen (`Store::before`; peers a bounded range), back to message 1: all messages \
  once. msgs/s over the whole walk.
- **unread reconnects**: users spread over the id space went offline after 90 % of the data \
  set; each fetches up to 50 of the oldest unread messages of each of their conversations. \
  Every engine stores the read cursors first (untimed): chatstore in its chat model \
  (`mark_read`), peers as keys (`0xFFFFFFFF00000000` | user) ++ conversation in the same \
  table. Timed: chatstore `ChatStore::unread_messages(user, 50)`; peers a prefix scan of the \
  user's cursors, then per conversation a reverse seek for its last id and a bounded range scan \
  of the oldest unread.
- **reopen after crash**: the built store reopened in a new process, a tail of messages \
  written buffered, the process SIGKILLed (no clean close), then the time of the open call in \
  another new process. **tail recovered %**: tail messages readable after that open (redb \
  drops non-durable commits on a crash; sled loses what its flusher had not written).
- **peak RSS**: VmHWM of each engine process minus the VmHWM before the engine was opened (the \
  pre-generated text arena of the ingest processes is not counted); the peak column is the \
  largest of the processes. VmHWM includes file pages mapped into the process (an engine that \
  reads through mmap is charged for the pages it touched; chatstore, RocksDB, fjall and redb \
  read with `pread` into their own caches). The per-process table splits the peak into \
  anonymous memory (heap: memtables, caches) and file-backed pages, sampled every 5 ms from \
  /proc/self/statm (cheap enough not to steal CPU from the engine's background threads).
- **fjall's disk bytes** include its active journal, which stays on disk after a flush until \
  the journal rotates.

Background compaction, flush threads and other builds on the machine share its cores, so the \
spread between runs is part of the result. RocksDB is built by `librocksdb-sys` without \
SSE4.2 (its build warns that CRC32C is then computed in software), as a plain `cargo build` \
gives it; chatstore's CRC (crc32fast) picks the CPU's instructions at run time.
";
