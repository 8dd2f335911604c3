//! What an engine's process does: one group of phases per process, results as one JSON line on
//! stdout.
//!
//! - `durable`: durable ingest of the main data set into a fresh directory, then settle (flush,
//!   let compaction finish) and close; the parent measures the files.
//! - `build`: chat setup (chatstore only), buffered ingest of the main data set into a fresh
//!   directory, settle, close.
//!
//! Both ingest phases record the sustained-ingest curve: after every `Preset::slice` messages,
//! the slice's throughput, the engine's stall time, compaction debt, level shape and bytes
//! written ([`Engine::sample`]), the bytes on disk and the RSS.
//! - `reads`: reopen the built store; newest-50 reads, paging every history backwards,
//!   unread-on-reconnect.
//! - `crash`: reopen the built store, write the tail (buffered), report, then wait to be
//!   SIGKILLed by the parent.
//! - `reopen`: time the open after the crash and count how much of the tail survived.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::engines::{self, Cursor, Engine, Got, Mode, Msg, Res};
use crate::workload::{conv_id, Arena, Meta, Preset, Workload, BATCH, PAGE};

/// A field of /proc/self/status, in KiB.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// (anonymous, file-backed and shared) resident KiB from /proc/self/statm: one short line, so
/// sampling it every few milliseconds costs little CPU (reading /proc/self/status that often
/// took a fifth of a core, stolen from the engine's background threads).
fn statm_kib() -> [u64; 2] {
    let page_kib = 4; // x86-64 and aarch64 Linux base pages
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    let (_size, resident, shared) = (f.next(), f.next().unwrap_or(0), f.next().unwrap_or(0));
    [
        resident.saturating_sub(shared) * page_kib,
        shared * page_kib,
    ]
}

/// Samples the process's anonymous and file-backed resident memory every 5 ms and keeps the
/// peaks above the values at the start: VmHWM counts mmapped file pages (an engine reading
/// through mmap is charged for them, one using `pread` is not), so the split tells heap from
/// page cache.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<[AtomicU64; 2]>,
    start: [u64; 2],
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let start = statm_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new([AtomicU64::new(start[0]), AtomicU64::new(start[1])]);
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peaks));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let [anon, file] = statm_kib();
                p[0].fetch_max(anon, Ordering::Relaxed);
                p[1].fetch_max(file, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler {
            stop,
            peaks,
            start,
            thread: Some(thread),
        }
    }

    /// (peak anonymous KiB, peak file-backed KiB) above the start.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peaks[0]
                .load(Ordering::Relaxed)
                .saturating_sub(self.start[0]),
            self.peaks[1]
                .load(Ordering::Relaxed)
                .saturating_sub(self.start[1]),
        )
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Resident KiB of the process now (all of it, anonymous and file-backed).
fn resident_kib() -> u64 {
    let [anon, file] = statm_kib();
    anon + file
}

/// Samples taken during an ingest phase: after every `slice` messages, the time the slice
/// took, the engine's own counters ([`Engine::sample`]), the bytes on disk and the RSS. The
/// samples are taken between slices, outside the clock.
struct Curve<'a> {
    engine: &'a str,
    dir: &'a Path,
    slice: usize,
    /// Resident KiB before the engine was opened (the arena included), subtracted from each
    /// point.
    resident0: u64,
    points: Vec<Value>,
}

impl Curve<'_> {
    fn point(
        &mut self,
        e: &dyn Engine,
        arena: &Arena,
        done: usize,
        slice_msgs: usize,
        slice_time: Duration,
        ingest_time: Duration,
    ) {
        let [anon, _] = statm_kib();
        let sample = e.sample();
        let rate = slice_msgs as f64 / secs(slice_time);
        eprintln!(
            "[{}] {done} messages: {rate:.0} msgs/s in the slice, stalled {:.1} s, pending \
             compaction {} MiB, files per level {}",
            self.engine,
            sample["stall_micros"].as_f64().unwrap_or(0.0) / 1e6,
            sample["pending_compaction_bytes"].as_u64().unwrap_or(0) >> 20,
            sample["files_per_level"],
        );
        self.points.push(json!({
            "msgs": done,
            "slice_msgs": slice_msgs,
            "slice_s": secs(slice_time),
            "msgs_s": rate,
            "ingest_s": secs(ingest_time),
            "logical_bytes": arena.logical_bytes(done),
            "disk_bytes": crate::disk_bytes(self.dir),
            "rss_kib": resident_kib().saturating_sub(self.resident0),
            "anon_kib": anon,
            "load1": crate::machine::loadavg()[0],
            "engine": sample,
        }));
    }
}

/// Writes `arena` in batches of [`BATCH`], numbering messages from `counts`. Returns the time
/// spent in the engine's write calls plus the (cheap, allocation-free) batch assembly; with a
/// `curve`, a point is added after every slice of messages and the time of taking it is left
/// out.
fn ingest(
    e: &mut dyn Engine,
    arena: &Arena,
    counts: &mut [u64],
    mut curve: Option<&mut Curve<'_>>,
) -> Res<Duration> {
    let mut batch: Vec<Msg<'_>> = Vec::with_capacity(BATCH);
    let slice = curve.as_ref().map_or(usize::MAX, |c| c.slice.max(1));
    let mut total = Duration::ZERO;
    let mut slice_start = Instant::now();
    let mut slice_first = 0;
    let mut i = 0;
    while i < arena.len() {
        batch.clear();
        let ts = now_ms();
        let end = (i + BATCH).min(arena.len());
        for j in i..end {
            let c = arena.conv[j] as usize;
            counts[c] += 1;
            batch.push(Msg {
                conv: conv_id(c),
                id: counts[c],
                sender: arena.sender[j] as u64,
                ts_ms: ts,
                content: arena.content(j),
            });
        }
        e.write_batch(&batch)?;
        i = end;
        if i - slice_first >= slice || i == arena.len() {
            let took = slice_start.elapsed();
            total += took;
            if let Some(c) = curve.as_deref_mut() {
                c.point(&*e, arena, i, i - slice_first, took, total);
            }
            slice_first = i;
            slice_start = Instant::now();
        }
    }
    Ok(total)
}

/// The curve's points and the engine's state before the ingest and after the settle.
fn curve_json(
    curve: Curve<'_>,
    before: Value,
    settled: Value,
    settle: Duration,
    dir: &Path,
) -> Value {
    json!({
        "slice": curve.slice,
        "before": before,
        "points": curve.points,
        "settled": {
            "settle_s": secs(settle),
            "disk_bytes": crate::disk_bytes(dir),
            "engine": settled,
        },
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn check(what: &str, got: u64, want: u64) -> Res<()> {
    if got != want {
        return Err(format!("{what}: read {got} messages, expected {want}").into());
    }
    Ok(())
}

pub fn run_child(engine: &str, group: &str, preset: Preset, dir: &Path, work: &Path) -> Res<()> {
    let w = Workload::new(preset);
    let out = match group {
        "durable" => durable(engine, &w, dir)?,
        "build" => build(engine, &w, dir)?,
        "reads" => reads(engine, &w, dir, work)?,
        "crash" => return crash(engine, &w, dir, work),
        "reopen" => reopen(engine, &w, dir, work)?,
        other => return Err(format!("unknown phase group {other}").into()),
    };
    println!("{out}");
    Ok(())
}

fn durable(engine: &str, w: &Workload, dir: &Path) -> Res<Value> {
    let arena = Arena::build(w, false);
    let hwm0 = proc_status_kib("VmHWM:");
    let resident0 = resident_kib();
    let sampler = RssSampler::start();
    let mut e = engines::open(engine, dir, Mode::Durable)?;
    let mut counts = vec![0u64; w.preset.conversations];
    eprintln!("[{engine}] durable ingest of {} messages", arena.len());
    let mut curve = Curve {
        engine,
        dir,
        slice: w.preset.slice as usize,
        resident0,
        points: Vec::new(),
    };
    let before = e.sample();
    let took = ingest(e.as_mut(), &arena, &mut counts, Some(&mut curve))?;
    let t = Instant::now();
    e.settle()?;
    let settle = t.elapsed();
    let curve = curve_json(curve, before, e.sample(), settle, dir);
    let extra = e.extra();
    e.close()?;
    let hwm = proc_status_kib("VmHWM:");
    let (anon, file) = sampler.finish();
    Ok(json!({
        "durable_msgs_s": arena.len() as f64 / secs(took),
        "durable_s": secs(took),
        "settle_s": secs(settle),
        "rss_kib": hwm.saturating_sub(hwm0),
        "anon_kib": anon,
        "file_kib": file,
        "hwm_kib": hwm,
        "harness_kib": hwm0,
        "extra": extra,
        "curve": curve,
    }))
}

fn build(engine: &str, w: &Workload, dir: &Path) -> Res<Value> {
    let arena = Arena::build(w, false);
    let hwm0 = proc_status_kib("VmHWM:");
    let resident0 = resident_kib();
    let sampler = RssSampler::start();
    let mut e = engines::open(engine, dir, Mode::Buffered)?;
    let t = Instant::now();
    e.setup_chat(w.users(), &w.members)?;
    let setup = t.elapsed();
    let mut counts = vec![0u64; w.preset.conversations];
    eprintln!("[{engine}] buffered ingest of {} messages", arena.len());
    let mut curve = Curve {
        engine,
        dir,
        slice: w.preset.slice as usize,
        resident0,
        points: Vec::new(),
    };
    // After the chat setup: its writes are not part of the curve's counters.
    let before = e.sample();
    // What the setup leaves resident, and the engine's state then (chatstore: its block
    // cache and indexes), apart from the ingest's own peak.
    let after_setup = json!({
        "rss_kib": resident_kib().saturating_sub(resident0),
        "sample": before.clone(),
    });
    let took = ingest(e.as_mut(), &arena, &mut counts, Some(&mut curve))?;
    let t = Instant::now();
    e.settle()?;
    let settle = t.elapsed();
    let curve = curve_json(curve, before, e.sample(), settle, dir);
    let extra = e.extra();
    e.close()?;
    let hwm = proc_status_kib("VmHWM:");
    let (anon, file) = sampler.finish();
    Ok(json!({
        "buffered_msgs_s": arena.len() as f64 / secs(took),
        "buffered_s": secs(took),
        "chat_setup_s": secs(setup),
        "after_setup": after_setup,
        "settle_s": secs(settle),
        "rss_kib": hwm.saturating_sub(hwm0),
        "anon_kib": anon,
        "file_kib": file,
        "hwm_kib": hwm,
        "harness_kib": hwm0,
        "extra": extra,
        "curve": curve,
    }))
}

fn reads(engine: &str, w: &Workload, dir: &Path, work: &Path) -> Res<Value> {
    let meta = Meta::load_or_generate(w, work)?;
    let hwm0 = proc_status_kib("VmHWM:");
    let sampler = RssSampler::start();
    let t = Instant::now();
    let mut e = engines::open(engine, dir, Mode::Buffered)?;
    let open = t.elapsed();

    // Newest 50 of Zipf-chosen (non-empty) conversations.
    let mut rng = crate::workload::Rng::new(w.preset.seed ^ 0x4ead_4ead);
    let mut pick = || loop {
        let c = w.zipf.sample(&mut rng) as usize;
        if meta.counts[c] > 0 {
            return c;
        }
    };
    eprintln!("[{engine}] newest-50 reads");
    for _ in 0..w.preset.reads / 10 {
        let c = pick();
        e.latest(conv_id(c), meta.counts[c], PAGE)?;
    }
    let mut lat = Vec::with_capacity(w.preset.reads as usize);
    let mut got = Got::default();
    let mut want = 0;
    let start = Instant::now();
    for _ in 0..w.preset.reads {
        let c = pick();
        let t = Instant::now();
        got.add(e.latest(conv_id(c), meta.counts[c], PAGE)?);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        want += meta.counts[c].min(PAGE);
    }
    let latest_time = start.elapsed();
    check("newest-50", got.msgs, want)?;
    lat.sort_by(|a, b| a.total_cmp(b));

    // Every history, newest page first, back to message 1.
    eprintln!("[{engine}] paging every history backwards");
    let mut paged = Got::default();
    let start = Instant::now();
    for (c, &n) in meta.counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let conv = conv_id(c);
        let mut page = e.latest(conv, n, PAGE)?;
        paged.add(page);
        while page.first > 1 {
            page = e.before(conv, page.first, PAGE)?;
            if page.msgs == 0 {
                return Err(format!("paging stopped early in conversation {conv}").into());
            }
            paged.add(page);
        }
    }
    let paging_time = start.elapsed();
    check("paging", paged.msgs, w.preset.messages)?;

    // Unread on reconnect: users offline since 90 % of the data set fetch up to 50 of the
    // oldest unread of each of their conversations.
    let users = w.reconnecting_users();
    let cursors: Vec<Vec<Cursor>> = users
        .iter()
        .map(|&u| {
            w.convs_of[u as usize]
                .iter()
                .map(|&c| Cursor {
                    conv: conv_id(c as usize),
                    read: meta.counts_offline[c as usize],
                    last: meta.counts[c as usize],
                })
                .collect()
        })
        .collect();
    let flat: Vec<(u64, u64, u64)> = users
        .iter()
        .zip(&cursors)
        .flat_map(|(&u, cs)| cs.iter().map(move |c| (u, c.conv, c.read)))
        .collect();
    let t = Instant::now();
    e.set_read_cursors(&flat)?;
    let cursor_setup = t.elapsed();
    eprintln!("[{engine}] unread for {} reconnecting users", users.len());
    let mut ulat = Vec::with_capacity(users.len());
    let mut unread = Got::default();
    let mut want = 0;
    let start = Instant::now();
    for (&u, cs) in users.iter().zip(&cursors) {
        let t = Instant::now();
        unread.add(e.unread(u, PAGE)?);
        ulat.push(t.elapsed().as_secs_f64() * 1e6);
        want += cs
            .iter()
            .map(|c| c.last.saturating_sub(c.read).min(PAGE))
            .sum::<u64>();
    }
    let unread_time = start.elapsed();
    check("unread", unread.msgs, want)?;
    ulat.sort_by(|a, b| a.total_cmp(b));

    let extra = e.extra();
    e.close()?;
    let hwm = proc_status_kib("VmHWM:");
    let (anon, file) = sampler.finish();
    Ok(json!({
        "open_clean_ms": secs(open) * 1e3,
        "latest_ops_s": w.preset.reads as f64 / secs(latest_time),
        "latest_p50_us": percentile(&lat, 0.50),
        "latest_p99_us": percentile(&lat, 0.99),
        "latest_msgs": got.msgs,
        "paging_msgs_s": paged.msgs as f64 / secs(paging_time),
        "paging_s": secs(paging_time),
        "unread_users_s": users.len() as f64 / secs(unread_time),
        "unread_msgs_s": unread.msgs as f64 / secs(unread_time),
        "unread_p50_us": percentile(&ulat, 0.50),
        "unread_p99_us": percentile(&ulat, 0.99),
        "unread_msgs": unread.msgs,
        "cursor_setup_s": secs(cursor_setup),
        "rss_kib": hwm.saturating_sub(hwm0),
        "anon_kib": anon,
        "file_kib": file,
        "hwm_kib": hwm,
        "harness_kib": hwm0,
        "extra": extra,
    }))
}

fn crash(engine: &str, w: &Workload, dir: &Path, work: &Path) -> Res<()> {
    let meta = Meta::load_or_generate(w, work)?;
    let arena = Arena::build(w, true);
    let mut e = engines::open(engine, dir, Mode::Buffered)?;
    let mut counts = meta.counts.clone();
    eprintln!(
        "[{engine}] writing a tail of {} messages, then crashing",
        arena.len()
    );
    let took = ingest(e.as_mut(), &arena, &mut counts, None)?;
    let extra = e.extra();
    let line = json!({
        "ready": true,
        "tail_msgs_s": arena.len() as f64 / secs(took),
        "extra": extra,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);
    // No clean close: the parent SIGKILLs this process.
    std::mem::forget(e);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn reopen(engine: &str, w: &Workload, dir: &Path, work: &Path) -> Res<Value> {
    let meta = Meta::load_or_generate(w, work)?;
    let mut expected = Vec::with_capacity(w.preset.tail as usize);
    let mut counts = meta.counts.clone();
    w.tail_stream(|c, _, _| {
        counts[c] += 1;
        expected.push((conv_id(c), counts[c]));
    });
    let hwm0 = proc_status_kib("VmHWM:");
    let sampler = RssSampler::start();
    let t = Instant::now();
    let e = engines::open(engine, dir, Mode::Buffered)?;
    let open = t.elapsed();
    let mut recovered = 0u64;
    for &(c, id) in &expected {
        if e.contains(c, id)? {
            recovered += 1;
        }
    }
    // The data set from before the tail must be whole.
    let busiest = conv_id(0);
    if !e.contains(busiest, meta.counts[0])? {
        return Err("the last message before the tail is gone after the crash".into());
    }
    let hwm = proc_status_kib("VmHWM:");
    let (anon, file) = sampler.finish();
    let extra = e.extra();
    e.close()?;
    Ok(json!({
        "reopen_ms": secs(open) * 1e3,
        "tail_recovered": recovered,
        "tail_total": expected.len(),
        "tail_recovered_pct": 100.0 * recovered as f64 / expected.len().max(1) as f64,
        "rss_kib": hwm.saturating_sub(hwm0),
        "anon_kib": anon,
        "file_kib": file,
        "hwm_kib": hwm,
        "extra": extra,
    }))
}
