//! The machine's own limits and description: sequential write bandwidth with and without
//! fdatasync, cores, memory, disk.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

const CHUNK: usize = 128 << 10;

/// Sequential 128 KiB writes: `buffered_chunks` without fsync (page cache, timed until the
/// last write returns), then `synced_chunks` with an fdatasync after each.
pub fn disk_limits(
    dir: &Path,
    buffered_chunks: usize,
    synced_chunks: usize,
) -> std::io::Result<Value> {
    std::fs::create_dir_all(dir)?;
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();

    let path = dir.join("disk-limit.tmp");
    let mut f = File::create(&path)?;
    let t = Instant::now();
    for _ in 0..buffered_chunks {
        f.write_all(&buf)?;
    }
    let buffered = t.elapsed().as_secs_f64();
    f.sync_data()?;
    drop(f);
    std::fs::remove_file(&path)?;

    let mut f = File::create(&path)?;
    let t = Instant::now();
    for _ in 0..synced_chunks {
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    let synced = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;

    let mb = |chunks: usize, s: f64| (chunks * CHUNK) as f64 / s / 1e6;
    Ok(json!({
        "write_mb_s": mb(buffered_chunks, buffered),
        "fsync_write_mb_s": mb(synced_chunks, synced),
        "fsyncs_s": synced_chunks as f64 / synced,
    }))
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l.split_once(':').map_or(l, |(_, v)| v).trim().to_string())
}

fn command(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A one-paragraph description: cores, memory, CPU, the disk under `dir`.
pub fn describe(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: f64 = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0.0);
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_default();
    let df = command("df", &["-hT", &dir.to_string_lossy()])
        .and_then(|s| s.lines().nth(1).map(str::to_string))
        .unwrap_or_default();
    let cols: Vec<&str> = df.split_whitespace().collect();
    let (dev, fs, size) = (
        cols.first().copied().unwrap_or("?"),
        cols.get(1).copied().unwrap_or("?"),
        cols.get(2).copied().unwrap_or("?"),
    );
    let name = dev.trim_start_matches("/dev/");
    let rotational = std::fs::read_to_string(format!("/sys/block/{name}/queue/rotational"))
        .map(|s| {
            if s.trim() == "1" {
                "rotational"
            } else {
                "non-rotational"
            }
        })
        .unwrap_or("?");
    let kernel = command("uname", &["-r"]).unwrap_or_default();
    format!(
        "nproc {cores}, {:.1} GiB memory, {cpu}; disk {dev} ({fs}, {size}, {rotational}) holding {}; Linux {kernel}",
        mem_kib / (1 << 20) as f64,
        dir.display()
    )
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg): how busy the machine was around a
/// measurement (other builds share it).
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}
