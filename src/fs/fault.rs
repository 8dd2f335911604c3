//! A fault-injecting, in-memory [`FileSystem`] for crash and I/O-error tests.
//!
//! Modelled on LevelDB's fault-injection env and Pebble's crashable memory file system:
//!
//! - **Power cuts.** Every file keeps the bytes written to it and the length that was made
//!   durable by [`WritableFile::sync`]; every directory keeps the entries that were made durable
//!   by [`FileSystem::sync_dir`] and the changes (creates, renames, removes, new
//!   subdirectories) made since.
//!   [`FaultFs::power_cut`] returns a new file system holding only what would be on the disk
//!   after the power failed: files cut back to their synced length, and directory changes that
//!   were not synced undone (a created file whose directory was not synced disappears, a rename
//!   reverts, a removed file comes back, a new directory whose parent was not synced vanishes
//!   with everything in it). [`CrashMode::Torn`] models a less tidy failure where part of the
//!   unsynced data (not always a prefix: whole pages of it may be lost or stale) and an
//!   in-order prefix of the unsynced directory changes reached the disk,
//!   [`CrashMode::KeepWritten`] a process crash (everything written survives, and what was not
//!   synced stays unsynced, so a later power cut can still lose it).
//!   [`FaultFs::schedule_power_cut`] cuts the power by itself right before the Nth operation,
//!   so a crash can land inside the store's own work.
//! - **Injected errors.** A [`FaultRule`] makes the Nth matching operation (write, sync, create,
//!   rename, read...) fail with `ENOSPC` or `EIO`, once, a few times or from then on.
//!
//! Clones share the same state, so a test keeps one handle while the store owns another:
//!
//! ```
//! use std::sync::Arc;
//! use chatstore::fs::fault::{FaultFs, FaultRule, Injected, Op};
//! use chatstore::{ConversationId, NewMessage, Options, Store, UserId};
//!
//! # fn main() -> chatstore::Result<()> {
//! let fs = FaultFs::new();
//! let opts = Options { fs: Arc::new(fs.clone()), ..Options::default() };
//! let store = Store::open_with("/db", opts.clone())?;
//! store.append(ConversationId(1), NewMessage::text(UserId(1), "kept"))?;
//!
//! fs.inject(FaultRule::new(Op::Write).on_paths_ending_with(".wal").with_error(Injected::NoSpace));
//! assert!(store.append(ConversationId(1), NewMessage::text(UserId(1), "lost")).is_err());
//! drop(store);
//!
//! // What a reboot would find on the disk.
//! let after = fs.power_cut();
//! let store = Store::open_with("/db", Options { fs: Arc::new(after), ..opts })?;
//! assert_eq!(store.latest(ConversationId(1), 10)?.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! Simplifications: [`FileSystem::create`] on an existing
//! file truncates it durably (the pessimistic outcome), and `link_or_copy` is the trait's
//! default copy. Paths are compared by their components, not resolved against a working
//! directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{DirLock, FileSystem, RandomAccessFile, WritableFile};

/// An operation a [`FaultRule`] can match. Every call of the corresponding method counts as one
/// operation (see [`FaultFs::op_count`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`WritableFile::write_all`].
    Write,
    /// [`WritableFile::sync`] and [`FileSystem::sync_file`].
    Sync,
    /// [`FileSystem::create`].
    Create,
    /// [`FileSystem::overwrite`].
    Overwrite,
    /// [`FileSystem::rename`]; a rule's path filter matches either name.
    Rename,
    /// [`FileSystem::remove`].
    Remove,
    /// [`FileSystem::read`].
    Read,
    /// [`FileSystem::open_random_access`].
    Open,
    /// [`FileSystem::sync_dir`]; a rule's path filter matches the directory.
    SyncDir,
    /// [`FileSystem::truncate`].
    Truncate,
    /// [`FileSystem::list`].
    List,
    /// [`FileSystem::create_dir_all`].
    CreateDir,
    /// [`FileSystem::try_lock`].
    Lock,
}

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// `ENOSPC`: no space left on the device.
    NoSpace,
    /// `EIO`: a low-level I/O error.
    Io,
    /// Not an error: the operation panics with an [`InjectedPanic`] payload, to test that a
    /// panic in a background thread poisons the store instead of leaving writers waiting.
    Panic,
}

/// The payload of a panic injected with [`Injected::Panic`].
pub use super::InjectedPanic;

impl Injected {
    /// The `std::io::Error` this fault produces (a raw OS error on Unix, as a real disk would).
    pub fn to_io_error(self) -> io::Error {
        #[cfg(unix)]
        {
            match self {
                Injected::NoSpace => io::Error::from_raw_os_error(28),
                Injected::Io | Injected::Panic => io::Error::from_raw_os_error(5),
            }
        }
        #[cfg(not(unix))]
        {
            match self {
                Injected::NoSpace => {
                    io::Error::new(io::ErrorKind::StorageFull, "injected: no space left")
                }
                Injected::Io | Injected::Panic => io::Error::other("injected: I/O error"),
            }
        }
    }
}

/// Which operations fail, when and how. Build one with [`FaultRule::new`] and the `with_*`-style
/// methods, then install it with [`FaultFs::inject`].
///
/// A rule counts the operations it matches, on any file, from the moment it is installed: it
/// lets the first [`after`](FaultRule::after) of them through, then fails the following ones
/// ([`times`](FaultRule::times) of them, or all of them by default, as a full disk would).
#[derive(Clone, Debug)]
pub struct FaultRule {
    ops: Vec<Op>,
    suffix: Option<String>,
    after: u64,
    times: Option<u64>,
    error: Injected,
    torn: bool,
}

impl FaultRule {
    /// A rule matching `op` on every path, failing at once and forever with `EIO`.
    pub fn new(op: Op) -> Self {
        FaultRule::any_of(&[op])
    }

    /// A rule matching any of `ops`.
    pub fn any_of(ops: &[Op]) -> Self {
        FaultRule {
            ops: ops.to_vec(),
            suffix: None,
            after: 0,
            times: None,
            error: Injected::Io,
            torn: false,
        }
    }

    /// Only matches operations on paths ending with `suffix` (`".wal"`, `"MANIFEST"`...).
    pub fn on_paths_ending_with(mut self, suffix: &str) -> Self {
        self.suffix = Some(suffix.to_string());
        self
    }

    /// Lets `n` matching operations succeed first: the `n + 1`-th is the first to fail.
    pub fn after(mut self, n: u64) -> Self {
        self.after = n;
        self
    }

    /// Fails `n` operations, then lets everything through again.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// The error to fail with.
    pub fn with_error(mut self, error: Injected) -> Self {
        self.error = error;
        self
    }

    /// A failing write first stores the first half of its buffer, as a short write that ran
    /// out of space would.
    pub fn torn(mut self) -> Self {
        self.torn = true;
        self
    }

    fn matches(&self, op: Op, paths: &[&Path]) -> bool {
        self.ops.contains(&op)
            && match &self.suffix {
                None => true,
                Some(s) => paths
                    .iter()
                    .any(|p| p.to_string_lossy().ends_with(s.as_str())),
            }
    }
}

/// How much unsynced state a simulated power cut leaves on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything written survives, as after a process crash where the operating system (and
    /// its page cache) lives on. Bytes and directory changes that were not synced are still
    /// not synced in the image: a power cut of the image before they are synced loses them.
    KeepWritten,
    /// Only what was made durable survives: files are cut back to their synced length and
    /// directory changes since the directory's last sync are undone.
    LoseUnsynced,
    /// Some unsynced state reached the disk, chosen by a seeded generator: each file's size
    /// grows by a random part of its unsynced tail, and within that part each 512-byte page
    /// independently holds the written bytes, zeroes (the size reached the disk but the data
    /// did not) or stale non-zero bytes (an old block exposed), so a later page may survive
    /// while an earlier one is lost; in half the cases the part is an exact prefix. Each
    /// directory keeps a random prefix of its unsynced changes, in the order they were made
    /// (as a journaling file system commits them).
    Torn {
        /// Seed of the choices.
        seed: u64,
    },
}

struct Inode {
    data: Vec<u8>,
    /// Bytes at the start of `data` that are durable.
    synced: usize,
    /// What the disk durably holds from offset `synced` on, from writes before the file was
    /// opened to be overwritten (empty for a file only ever appended to): a power cut
    /// leaves these bytes wherever the newer writes over them were not synced, and the file
    /// at least this long.
    underneath: Vec<u8>,
    writers: usize,
}

impl Inode {
    fn empty() -> Self {
        Inode {
            data: Vec::new(),
            synced: 0,
            underneath: Vec::new(),
            writers: 0,
        }
    }

    /// Everything written is now durable.
    fn sync(&mut self) {
        let newly = self.data.len().saturating_sub(self.synced);
        self.underneath.drain(..newly.min(self.underneath.len()));
        self.synced = self.data.len();
        if self.underneath.is_empty() {
            self.underneath = Vec::new();
        }
    }

    /// What survives a power cut that loses everything not synced.
    fn durable_image(&self) -> Vec<u8> {
        let mut image = self.data[..self.synced.min(self.data.len())].to_vec();
        image.extend_from_slice(&self.underneath);
        image
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Move(String, String),
    /// A subdirectory was created.
    MkDir(String),
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<String, u64>, subdirs: &mut BTreeSet<String>) {
        match self {
            DirOp::MkDir(name) => {
                subdirs.insert(name.clone());
            }
            DirOp::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Unlink(name) => {
                entries.remove(name);
            }
            DirOp::Move(from, to) => {
                if let Some(ino) = entries.remove(from) {
                    entries.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Default, Clone)]
struct Dir {
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    /// Names of the subdirectories, and those whose creation was made durable by a sync of
    /// this directory (a new directory whose parent was not synced vanishes in a power cut).
    subdirs: BTreeSet<String>,
    durable_subdirs: BTreeSet<String>,
    /// Changes since the last sync, oldest first: `durable` with all of them applied is
    /// `current`.
    pending: Vec<DirOp>,
}

struct RuleState {
    rule: FaultRule,
    seen: u64,
    fired: u64,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    locks: BTreeSet<PathBuf>,
    rules: Vec<RuleState>,
    counts: BTreeMap<Op, u64>,
    injected: u64,
    powered_off: bool,
    /// A scheduled power cut: how many more matching operations run before it.
    scheduled_cut: Option<ScheduledCut>,
    /// What the scheduled power cut left, until a test takes it.
    crash_image: Option<Box<State>>,
}

struct Fault {
    error: io::Error,
    torn: bool,
}

struct ScheduledCut {
    left: u64,
    ops: Vec<Op>,
    mode: CrashMode,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = normalize(path);
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir.to_path_buf(), name.to_string_lossy().into_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )),
    }
}

impl State {
    /// Counts the operation and decides whether it fails.
    fn check(&mut self, op: Op, paths: &[&Path]) -> Result<(), Fault> {
        if let Some(cut) = self.scheduled_cut.as_mut().filter(|c| c.ops.contains(&op)) {
            if cut.left == 0 {
                let mode = cut.mode;
                self.scheduled_cut = None;
                self.crash_image = Some(Box::new(self.durable(mode)));
                self.powered_off = true;
            } else {
                cut.left -= 1;
            }
        }
        if self.powered_off {
            return Err(Fault {
                error: io::Error::other("the simulated machine lost power"),
                torn: false,
            });
        }
        *self.counts.entry(op).or_insert(0) += 1;
        for r in &mut self.rules {
            if !r.rule.matches(op, paths) {
                continue;
            }
            if r.seen < r.rule.after {
                r.seen += 1;
                continue;
            }
            if r.rule.times.is_none_or(|t| r.fired < t) {
                r.fired += 1;
                self.injected += 1;
                if r.rule.error == Injected::Panic {
                    std::panic::panic_any(InjectedPanic);
                }
                return Err(Fault {
                    error: r.rule.error.to_io_error(),
                    torn: r.rule.torn,
                });
            }
        }
        Ok(())
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        self.dirs
            .get(&dir)
            .and_then(|d| d.current.get(&name))
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn inode(&self, path: &Path) -> io::Result<&Inode> {
        let ino = self.lookup(path)?;
        self.inodes.get(&ino).ok_or_else(|| not_found(path))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(self.next_ino, Inode::empty());
        self.next_ino
    }

    /// Links a new empty file at `path`, or truncates the existing one. Returns its inode.
    fn create_file(&mut self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        let existing = self.dir_mut(&dir)?.current.get(&name).copied();
        if let Some(ino) = existing {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                *inode = Inode {
                    writers: inode.writers,
                    ..Inode::empty()
                };
                return Ok(ino);
            }
        }
        let ino = self.new_inode();
        let d = self.dir_mut(&dir)?;
        d.current.insert(name.clone(), ino);
        d.pending.push(DirOp::Link(name, ino));
        Ok(ino)
    }

    /// Drops inodes no directory state can reach and no open file writes to.
    fn collect_garbage(&mut self) {
        let mut live: HashSet<u64> = HashSet::new();
        for d in self.dirs.values() {
            live.extend(d.current.values());
            live.extend(d.durable.values());
            for op in &d.pending {
                if let DirOp::Link(_, ino) = op {
                    live.insert(*ino);
                }
            }
        }
        self.inodes
            .retain(|ino, inode| inode.writers > 0 || live.contains(ino));
    }

    /// The state a reboot after a power cut would find.
    fn durable(&self, mode: CrashMode) -> State {
        if mode == CrashMode::KeepWritten {
            return self.after_process_crash();
        }
        let mut rng = match mode {
            CrashMode::KeepWritten | CrashMode::LoseUnsynced => None,
            CrashMode::Torn { seed } => Some(SplitMix(seed)),
        };
        let mut dirs: BTreeMap<PathBuf, Dir> = BTreeMap::new();
        let mut live: BTreeSet<u64> = BTreeSet::new();
        // Parents sort before their children, so a directory's fate is known before its
        // entries are looked at.
        for (path, d) in &self.dirs {
            let survives = match path.parent().filter(|p| self.dirs.contains_key(*p)) {
                None => true,
                Some(parent) => match (dirs.get(parent), path.file_name()) {
                    (Some(p), Some(name)) => p.subdirs.contains(&*name.to_string_lossy()),
                    _ => false,
                },
            };
            let mut entries = d.durable.clone();
            let mut subdirs = d.durable_subdirs.clone();
            if let Some(rng) = rng.as_mut() {
                let keep = rng.below(d.pending.len() as u64 + 1) as usize;
                for op in &d.pending[..keep] {
                    op.apply(&mut entries, &mut subdirs);
                }
            }
            if !survives {
                continue;
            }
            live.extend(entries.values());
            dirs.insert(
                path.clone(),
                Dir {
                    current: entries.clone(),
                    durable: entries,
                    subdirs: subdirs.clone(),
                    durable_subdirs: subdirs,
                    pending: Vec::new(),
                },
            );
        }
        let mut inodes = HashMap::new();
        for ino in live {
            let Some(inode) = self.inodes.get(&ino) else {
                continue;
            };
            let data = match rng.as_mut() {
                Some(rng) => {
                    let synced = inode.synced.min(inode.data.len());
                    let mut data = inode.data[..synced].to_vec();
                    tear_unsynced_tail(&mut data, &inode.data, &inode.underneath, rng);
                    data
                }
                None => inode.durable_image(),
            };
            let synced = data.len();
            inodes.insert(
                ino,
                Inode {
                    data,
                    synced,
                    ..Inode::empty()
                },
            );
        }
        State {
            inodes,
            next_ino: self.next_ino,
            dirs,
            ..State::default()
        }
    }

    /// What survives a process crash: everything written, because the operating system and
    /// its page cache live on. What was not synced is still not synced: a power cut later
    /// (before anyone syncs it) still loses it.
    fn after_process_crash(&self) -> State {
        let inodes = self
            .inodes
            .iter()
            .map(|(&ino, inode)| {
                (
                    ino,
                    Inode {
                        data: inode.data.clone(),
                        synced: inode.synced,
                        underneath: inode.underneath.clone(),
                        writers: 0,
                    },
                )
            })
            .collect();
        let mut next = State {
            inodes,
            next_ino: self.next_ino,
            dirs: self.dirs.clone(),
            ..State::default()
        };
        next.collect_garbage();
        next
    }
}

/// The bytes of the unsynced tail `written[data.len()..]` that a torn power cut leaves after
/// the synced prefix `data`, over `underneath` (what the disk durably held there, for a file
/// opened to be overwritten). Where the file durably had bytes, each page holds the old or the
/// new ones. Past that the file's new size reached the disk for a random part of the tail;
/// within it each page independently holds what was written, zeroes (never written), or stale
/// bytes from an earlier use of the disk block, so a later page can survive while an earlier
/// one is lost.
fn tear_unsynced_tail(data: &mut Vec<u8>, written: &[u8], underneath: &[u8], rng: &mut SplitMix) {
    // Small pages, so that the small files of tests get torn in the middle too.
    let page = TORN_PAGE;
    // One case in two keeps an exact prefix (the tidy failure); otherwise pages are mixed.
    let mixed = rng.below(2) == 0;
    let start = data.len();
    let old_end = start + underneath.len();
    let over_end = written.len().min(old_end);
    if start < over_end {
        let tidy_end = start + rng.below((over_end - start) as u64 + 1) as usize;
        let mut pos = start;
        while pos < over_end {
            let page_end = ((pos / page + 1) * page).min(over_end);
            let new = if mixed {
                rng.below(2) == 0
            } else {
                pos < tidy_end
            };
            if new {
                data.extend_from_slice(&written[pos..page_end]);
            } else {
                data.extend_from_slice(&underneath[pos - start..page_end - start]);
            }
            pos = page_end;
        }
    }
    data.extend_from_slice(&underneath[over_end - start..]);
    let start = data.len();
    let unsynced = written.len().saturating_sub(start);
    let extra = rng.below(unsynced as u64 + 1) as usize;
    let end = start + extra;
    let mut pos = start;
    while pos < end {
        let page_end = ((pos / page + 1) * page).min(end);
        let chunk = &written[pos..page_end];
        match if mixed { rng.below(4) } else { 0 } {
            0 | 1 => data.extend_from_slice(chunk),
            2 => data.resize(data.len() + chunk.len(), 0),
            _ => data.extend((0..chunk.len()).map(|_| rng.next() as u8 | 1)),
        }
        pos = page_end;
    }
}

/// The page size a torn power cut works in (see [`CrashMode::Torn`]).
const TORN_PAGE: usize = 512;

/// A small deterministic generator (SplitMix64), so the crate needs no `rand` dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` must not be 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fault-injecting in-memory file system. See the [module documentation](self).
#[derive(Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("FaultFs")
            .field("dirs", &s.dirs.len())
            .field("files", &s.inodes.len())
            .field("rules", &s.rules.len())
            .field("injected", &s.injected)
            .field("powered_off", &s.powered_off)
            .finish()
    }
}

impl FaultFs {
    /// A writer of inode `ino` (at `path`), appending (`pos` `None`) or writing from `pos`.
    fn writer(
        &self,
        s: &mut State,
        ino: u64,
        path: &Path,
        pos: Option<usize>,
    ) -> Box<dyn WritableFile> {
        if let Some(inode) = s.inodes.get_mut(&ino) {
            inode.writers += 1;
        }
        Box::new(FaultFile {
            state: Arc::clone(&self.state),
            ino,
            path: normalize(path),
            pos,
        })
    }

    /// An empty file system (not even a root directory: [`FileSystem::create_dir_all`] makes
    /// directories, as the store does on open).
    pub fn new() -> Self {
        FaultFs::default()
    }

    /// Installs a fault rule. Rules are checked in the order they were installed; the first
    /// one that fires decides the error, and rules after it do not count that operation.
    pub fn inject(&self, rule: FaultRule) {
        self.state.lock().rules.push(RuleState {
            rule,
            seen: 0,
            fired: 0,
        });
    }

    /// Removes every fault rule: from now on operations succeed (unless the power is off).
    pub fn clear_faults(&self) {
        self.state.lock().rules.clear();
    }

    /// How many operations failed because of a rule so far.
    pub fn injected_count(&self) -> u64 {
        self.state.lock().injected
    }

    /// How many operations of kind `op` were attempted so far (failed ones included).
    pub fn op_count(&self, op: Op) -> u64 {
        self.state.lock().counts.get(&op).copied().unwrap_or(0)
    }

    /// Cuts the power: returns a new, independent file system holding what a reboot would find
    /// ([`CrashMode::LoseUnsynced`]), and makes every later operation on this one (and its
    /// clones and open files) fail with `EIO`, so nothing more can reach the "disk".
    pub fn power_cut(&self) -> FaultFs {
        self.power_cut_with(CrashMode::LoseUnsynced)
    }

    /// [`power_cut`](FaultFs::power_cut) with a choice of how much unsynced state survives.
    pub fn power_cut_with(&self, mode: CrashMode) -> FaultFs {
        let mut s = self.state.lock();
        s.powered_off = true;
        FaultFs {
            state: Arc::new(Mutex::new(s.durable(mode))),
        }
    }

    /// What a crash of kind `mode` right now would leave, without stopping this file system:
    /// it keeps working, so a test can take several crash images of one run.
    pub fn crash_copy(&self, mode: CrashMode) -> FaultFs {
        let s = self.state.lock();
        FaultFs {
            state: Arc::new(Mutex::new(s.durable(mode))),
        }
    }

    /// Cuts the power by itself once `after` more operations of the kinds in `ops` have run
    /// (other kinds do not count): the next such operation, from any thread, fails as if the
    /// machine died just before it, and so does every operation after it.
    /// [`take_crash_image`](FaultFs::take_crash_image) then returns what a reboot would find.
    /// This puts crashes at exact points inside the store's work (between a WAL write and its
    /// sync, in the middle of a flush or a manifest update), where a cut between two API calls
    /// rarely lands; narrowing `ops` (to renames and directory syncs, say) aims them.
    pub fn schedule_power_cut(&self, after: u64, ops: &[Op], mode: CrashMode) {
        self.state.lock().scheduled_cut = Some(ScheduledCut {
            left: after,
            ops: ops.to_vec(),
            mode,
        });
    }

    /// The file system a reboot finds after a scheduled power cut, once it happened. Returns
    /// `None` before the cut, and after the image was taken once.
    pub fn take_crash_image(&self) -> Option<FaultFs> {
        let image = self.state.lock().crash_image.take()?;
        Some(FaultFs {
            state: Arc::new(Mutex::new(*image)),
        })
    }

    /// Whether the power is off: [`power_cut`](FaultFs::power_cut) was called, or a scheduled
    /// cut happened.
    pub fn is_powered_off(&self) -> bool {
        self.state.lock().powered_off
    }

    /// Current length of the file at `path` (synced or not), if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let s = self.state.lock();
        s.inode(path).ok().map(|i| i.data.len() as u64)
    }

    /// Length of the file at `path` that a power cut would keep, if it exists.
    pub fn synced_len(&self, path: &Path) -> Option<u64> {
        let s = self.state.lock();
        s.inode(path).ok().map(|i| i.synced as u64)
    }

    /// Names in `dir` that a power cut would keep, sorted.
    pub fn durable_names(&self, dir: &Path) -> Vec<String> {
        let s = self.state.lock();
        s.dirs
            .get(&normalize(dir))
            .map(|d| d.durable.keys().cloned().collect())
            .unwrap_or_default()
    }
}

struct FaultFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    path: PathBuf,
    /// Where the next write lands, for a file opened to be overwritten; `None` appends at
    /// the end.
    pos: Option<usize>,
}

impl WritableFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        let outcome = s.check(Op::Write, &[&self.path]);
        let stored = match &outcome {
            Ok(()) => buf,
            Err(f) if f.torn => &buf[..buf.len() / 2],
            Err(_) => &[],
        };
        if let Some(inode) = s.inodes.get_mut(&self.ino) {
            let pos = self.pos.unwrap_or(inode.data.len());
            if pos < inode.synced {
                // Overwriting durable bytes: until the next sync the disk holds the old ones.
                let mut old = inode.data[pos..inode.synced].to_vec();
                old.append(&mut inode.underneath);
                inode.underneath = old;
                inode.synced = pos;
            }
            let end = pos + stored.len();
            if inode.data.len() < end {
                inode.data.resize(end, 0);
            }
            inode.data[pos..end].copy_from_slice(stored);
            if self.pos.is_some() {
                self.pos = Some(end);
            }
        }
        outcome.map_err(|f| f.error)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::Sync, &[&self.path]).map_err(|f| f.error)?;
        if let Some(inode) = s.inodes.get_mut(&self.ino) {
            inode.sync();
        }
        Ok(())
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        if let Some(inode) = self.state.lock().inodes.get_mut(&self.ino) {
            inode.writers = inode.writers.saturating_sub(1);
        }
    }
}

#[derive(Debug)]
struct FaultLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl DirLock for FaultLock {}

impl Drop for FaultLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

impl FileSystem for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::CreateDir, &[dir]).map_err(|f| f.error)?;
        let dir = normalize(dir);
        let mut created: Vec<PathBuf> = dir
            .ancestors()
            .filter(|d| !d.as_os_str().is_empty() && !s.dirs.contains_key(*d))
            .map(Path::to_path_buf)
            .collect();
        created.reverse();
        for d in created {
            if let (Some(parent), Some(name)) = (d.parent(), d.file_name()) {
                if let Some(p) = s.dirs.get_mut(parent) {
                    let name = name.to_string_lossy().into_owned();
                    p.subdirs.insert(name.clone());
                    p.pending.push(DirOp::MkDir(name));
                }
            }
            s.dirs.insert(d, Dir::default());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.state.lock();
        s.check(Op::List, &[dir]).map_err(|f| f.error)?;
        let dir = normalize(dir);
        let d = s.dirs.get(&dir).ok_or_else(|| not_found(&dir))?;
        let mut names: Vec<String> = d.current.keys().cloned().collect();
        for sub in s.dirs.keys() {
            if sub.parent() == Some(dir.as_path()) {
                if let Some(n) = sub.file_name() {
                    names.push(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut s = self.state.lock();
        s.check(Op::Create, &[path]).map_err(|f| f.error)?;
        let ino = s.create_file(path)?;
        Ok(self.writer(&mut s, ino, path, None))
    }

    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut s = self.state.lock();
        s.check(Op::Overwrite, &[path]).map_err(|f| f.error)?;
        let ino = s.lookup(path)?;
        Ok(self.writer(&mut s, ino, path, Some(0)))
    }

    fn read(&self, path: &Path) -> io::Result<Bytes> {
        let mut s = self.state.lock();
        s.check(Op::Read, &[path]).map_err(|f| f.error)?;
        Ok(Bytes::copy_from_slice(&s.inode(path)?.data))
    }

    fn open_random_access(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        let mut s = self.state.lock();
        s.check(Op::Open, &[path]).map_err(|f| f.error)?;
        Ok(Arc::new(Bytes::copy_from_slice(&s.inode(path)?.data)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::Rename, &[from, to]).map_err(|f| f.error)?;
        let ino = s.lookup(from)?;
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        s.dir_mut(&to_dir)?;
        if from_dir == to_dir {
            let d = s.dir_mut(&from_dir)?;
            let op = DirOp::Move(from_name, to_name);
            op.apply(&mut d.current, &mut d.subdirs);
            d.pending.push(op);
        } else {
            let d = s.dir_mut(&from_dir)?;
            d.current.remove(&from_name);
            d.pending.push(DirOp::Unlink(from_name));
            let d = s.dir_mut(&to_dir)?;
            d.current.insert(to_name.clone(), ino);
            d.pending.push(DirOp::Link(to_name, ino));
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::Remove, &[path]).map_err(|f| f.error)?;
        s.lookup(path)?;
        let (dir, name) = split(path)?;
        let d = s.dir_mut(&dir)?;
        d.current.remove(&name);
        d.pending.push(DirOp::Unlink(name));
        s.collect_garbage();
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::Truncate, &[path]).map_err(|f| f.error)?;
        let ino = s.lookup(path)?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        if let Some(inode) = s.inodes.get_mut(&ino) {
            inode.data.resize(len, 0);
            // Like the real implementation, this syncs the whole file.
            inode.synced = len;
            inode.underneath = Vec::new();
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::SyncDir, &[dir]).map_err(|f| f.error)?;
        let dir = normalize(dir);
        if dir.as_os_str().is_empty() || dir == Path::new(".") {
            // The working directory of a relative path: taken as durable.
            return Ok(());
        }
        let d = s.dir_mut(&dir)?;
        d.durable = d.current.clone();
        d.durable_subdirs = d.subdirs.clone();
        d.pending.clear();
        s.collect_garbage();
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.check(Op::Sync, &[path]).map_err(|f| f.error)?;
        let ino = s.lookup(path)?;
        if let Some(inode) = s.inodes.get_mut(&ino) {
            inode.sync();
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let mut s = self.state.lock();
        s.check(Op::Lock, &[path]).map_err(|f| f.error)?;
        let path = normalize(path);
        if s.lookup(&path).is_err() {
            s.create_file(&path)?;
        }
        if !s.locks.insert(path.clone()) {
            return Ok(None);
        }
        Ok(Some(Box::new(FaultLock {
            state: Arc::clone(&self.state),
            path,
        })))
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.state.lock();
        let path = normalize(path);
        s.dirs.contains_key(&path) || s.lookup(&path).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> &'static Path {
        Path::new("/db")
    }

    fn fs_with_dir() -> FaultFs {
        let fs = FaultFs::new();
        fs.create_dir_all(dir()).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs
    }

    fn write(fs: &FaultFs, name: &str, data: &[u8], sync: bool) -> Box<dyn WritableFile> {
        let mut f = fs.create(&dir().join(name)).unwrap();
        f.write_all(data).unwrap();
        if sync {
            f.sync().unwrap();
        }
        f
    }

    fn content(fs: &FaultFs, name: &str) -> Option<Vec<u8>> {
        fs.read(&dir().join(name)).ok().map(|b| b.to_vec())
    }

    fn names(fs: &FaultFs) -> Vec<String> {
        let mut n = fs.list(dir()).unwrap();
        n.sort();
        n
    }

    #[test]
    fn reads_see_unsynced_data_but_a_power_cut_keeps_only_the_synced_length() {
        let fs = fs_with_dir();
        let mut f = write(&fs, "a", b"durable", true);
        f.write_all(b" and not").unwrap();
        fs.sync_dir(dir()).unwrap();
        assert_eq!(content(&fs, "a").unwrap(), b"durable and not");
        let file = fs.open_random_access(&dir().join("a")).unwrap();
        assert_eq!(file.read_at(0, 15).unwrap(), &b"durable and not"[..]);
        assert!(
            file.read_at(8, 8).is_err(),
            "a read past the end is an error"
        );
        assert_eq!(fs.file_len(&dir().join("a")), Some(15));
        assert_eq!(fs.synced_len(&dir().join("a")), Some(7));
        let after = fs.power_cut();
        assert_eq!(content(&after, "a").unwrap(), b"durable");
    }

    #[test]
    fn a_file_whose_directory_was_not_synced_disappears() {
        let fs = fs_with_dir();
        write(&fs, "kept", b"k", true);
        fs.sync_dir(dir()).unwrap();
        write(&fs, "lost", b"l", true);
        assert_eq!(names(&fs), ["kept", "lost"]);
        assert_eq!(fs.durable_names(dir()), ["kept"]);
        let after = fs.power_cut();
        assert_eq!(names(&after), ["kept"]);
        assert!(!after.exists(&dir().join("lost")));
    }

    #[test]
    fn unsynced_renames_and_removes_are_undone() {
        let fs = fs_with_dir();
        write(&fs, "MANIFEST", b"old", true);
        write(&fs, "gone", b"g", true);
        fs.sync_dir(dir()).unwrap();
        write(&fs, "MANIFEST.tmp", b"new", true);
        fs.rename(&dir().join("MANIFEST.tmp"), &dir().join("MANIFEST"))
            .unwrap();
        fs.remove(&dir().join("gone")).unwrap();
        assert_eq!(content(&fs, "MANIFEST").unwrap(), b"new");
        assert_eq!(names(&fs), ["MANIFEST"]);

        let after = fs.crash_copy(CrashMode::LoseUnsynced);
        assert_eq!(content(&after, "MANIFEST").unwrap(), b"old");
        assert_eq!(content(&after, "gone").unwrap(), b"g");
        assert_eq!(names(&after), ["MANIFEST", "gone"]);

        fs.sync_dir(dir()).unwrap();
        let after = fs.power_cut();
        assert_eq!(content(&after, "MANIFEST").unwrap(), b"new");
        assert_eq!(names(&after), ["MANIFEST"]);
    }

    #[test]
    fn a_scheduled_power_cut_strikes_before_the_nth_operation() {
        let fs = fs_with_dir();
        let mut f = write(&fs, "a", b"synced", true);
        fs.sync_dir(dir()).unwrap();
        fs.schedule_power_cut(2, &[Op::Write, Op::Sync], CrashMode::LoseUnsynced);
        f.write_all(b" written").unwrap();
        fs.read(&dir().join("a")).unwrap();
        f.write_all(b" twice").unwrap();
        assert!(fs.take_crash_image().is_none());
        assert!(
            f.sync().is_err(),
            "the third write or sync finds the power off"
        );
        assert!(fs.is_powered_off());
        assert!(fs.read(&dir().join("a")).is_err());
        let after = fs.take_crash_image().unwrap();
        assert!(fs.take_crash_image().is_none());
        assert_eq!(content(&after, "a").unwrap(), b"synced");
    }

    #[test]
    fn a_process_crash_keeps_everything_written_but_not_as_synced() {
        let fs = fs_with_dir();
        let mut f = write(&fs, "a", b"synced", true);
        fs.sync_dir(dir()).unwrap();
        f.write_all(b" and written").unwrap();
        write(&fs, "b", b"unsynced dir", false);
        let after = fs.power_cut_with(CrashMode::KeepWritten);
        assert_eq!(content(&after, "a").unwrap(), b"synced and written");
        assert_eq!(content(&after, "b").unwrap(), b"unsynced dir");
        // What was never synced is still at the mercy of the next power cut.
        let again = after.power_cut();
        assert_eq!(names(&again), ["a"]);
        assert_eq!(content(&again, "a").unwrap(), b"synced");
    }

    #[test]
    fn a_new_directory_vanishes_unless_its_parent_is_synced() {
        let fs = fs_with_dir();
        fs.create_dir_all(Path::new("/db/sub/deeper")).unwrap();
        let mut f = fs.create(Path::new("/db/sub/deeper/x")).unwrap();
        f.write_all(b"x").unwrap();
        f.sync().unwrap();
        fs.sync_dir(Path::new("/db/sub/deeper")).unwrap();
        let lost = fs.crash_copy(CrashMode::LoseUnsynced);
        assert!(!lost.exists(Path::new("/db/sub")));
        assert!(!lost.exists(Path::new("/db/sub/deeper/x")));
        assert!(lost.exists(dir()));
        // The deeper directory needs its own parent synced too.
        fs.sync_dir(dir()).unwrap();
        let half = fs.crash_copy(CrashMode::LoseUnsynced);
        assert!(half.exists(Path::new("/db/sub")));
        assert!(!half.exists(Path::new("/db/sub/deeper")));
        fs.sync_dir(Path::new("/db/sub")).unwrap();
        let kept = fs.power_cut();
        assert_eq!(kept.read(Path::new("/db/sub/deeper/x")).unwrap(), &b"x"[..]);
    }

    #[test]
    fn a_file_removed_while_open_keeps_taking_writes() {
        let fs = fs_with_dir();
        let mut f = write(&fs, "a", b"x", true);
        fs.remove(&dir().join("a")).unwrap();
        fs.sync_dir(dir()).unwrap();
        f.write_all(b"y").unwrap();
        f.sync().unwrap();
        assert!(fs.read(&dir().join("a")).is_err());
    }

    #[test]
    fn the_nth_matching_operation_fails_and_keeps_failing() {
        let fs = fs_with_dir();
        fs.inject(
            FaultRule::new(Op::Write)
                .on_paths_ending_with(".wal")
                .after(2)
                .with_error(Injected::NoSpace),
        );
        let mut wal = fs.create(&dir().join("000001.wal")).unwrap();
        let mut other = fs.create(&dir().join("000002.seg")).unwrap();
        wal.write_all(b"1").unwrap();
        other.write_all(b"not counted").unwrap();
        wal.write_all(b"2").unwrap();
        let e = wal.write_all(b"3").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(wal.write_all(b"4").is_err());
        other.write_all(b"still fine").unwrap();
        assert_eq!(fs.injected_count(), 2);
        assert_eq!(fs.op_count(Op::Write), 6);
        assert_eq!(content(&fs, "000001.wal").unwrap(), b"12");
        fs.clear_faults();
        wal.write_all(b"5").unwrap();
        assert_eq!(content(&fs, "000001.wal").unwrap(), b"125");
    }

    #[test]
    fn limited_rules_stop_failing_and_torn_writes_store_half() {
        let fs = fs_with_dir();
        fs.inject(FaultRule::any_of(&[Op::Sync, Op::Write]).times(2).torn());
        let mut f = fs.create(&dir().join("a")).unwrap();
        assert!(f.write_all(b"abcdef").is_err());
        let e = f.sync().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5));
        f.write_all(b"gh").unwrap();
        f.sync().unwrap();
        assert_eq!(content(&fs, "a").unwrap(), b"abcgh");
    }

    #[test]
    fn directory_and_read_operations_can_fail() {
        let fs = fs_with_dir();
        write(&fs, "a", b"x", true);
        for op in [
            Op::Read,
            Op::Open,
            Op::SyncDir,
            Op::Rename,
            Op::Remove,
            Op::Create,
        ] {
            fs.inject(FaultRule::new(op).times(1));
        }
        let a = dir().join("a");
        assert!(fs.read(&a).is_err());
        assert!(fs.open_random_access(&a).is_err());
        assert!(fs.sync_dir(dir()).is_err());
        assert!(fs.rename(&a, &dir().join("b")).is_err());
        assert!(fs.remove(&a).is_err());
        assert!(fs.create(&dir().join("c")).is_err());
        assert_eq!(names(&fs), ["a"]);
        // Each rule fired once; everything works again.
        fs.read(&a).unwrap();
        fs.sync_dir(dir()).unwrap();
        fs.rename(&a, &dir().join("b")).unwrap();
        assert_eq!(fs.injected_count(), 6);
    }

    #[test]
    fn missing_files_and_directories_are_not_found() {
        let fs = fs_with_dir();
        let nf = |r: io::Result<()>| assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        nf(fs.read(&dir().join("x")).map(|_| ()));
        nf(fs.remove(&dir().join("x")));
        nf(fs.rename(&dir().join("x"), &dir().join("y")));
        nf(fs.create(Path::new("/nodir/x")).map(|_| ()));
        nf(fs.list(Path::new("/nodir")).map(|_| ()));
        nf(fs.sync_dir(Path::new("/nodir")));
        assert!(fs.exists(dir()));
        assert!(fs.exists(Path::new("/")));
    }

    #[test]
    fn locks_are_per_path_and_released_on_drop() {
        let fs = fs_with_dir();
        let lock = dir().join("LOCK");
        let held = fs.try_lock(&lock).unwrap().unwrap();
        assert!(fs.try_lock(&lock).unwrap().is_none());
        assert!(fs.try_lock(&dir().join("OTHER")).unwrap().is_some());
        assert!(fs.exists(&lock));
        drop(held);
        assert!(fs.try_lock(&lock).unwrap().is_some());
    }

    #[test]
    fn clones_share_state_and_a_power_cut_stops_the_old_machine() {
        let fs = fs_with_dir();
        let other = fs.clone();
        let mut f = write(&other, "a", b"x", true);
        other.sync_dir(dir()).unwrap();
        assert_eq!(content(&fs, "a").unwrap(), b"x");
        let lock = fs.try_lock(&dir().join("LOCK")).unwrap();
        let after = fs.power_cut();
        assert!(other.is_powered_off());
        assert!(f.write_all(b"y").is_err());
        assert!(f.sync().is_err());
        assert!(other.read(&dir().join("a")).is_err());
        assert!(!after.is_powered_off());
        // A reboot does not remember who held a lock.
        assert!(after.try_lock(&dir().join("LOCK")).unwrap().is_some());
        drop(lock);
        assert_eq!(content(&after, "a").unwrap(), b"x");
    }

    #[test]
    fn truncate_is_durable_and_create_truncates() {
        let fs = fs_with_dir();
        let mut f = write(&fs, "a", b"0123456789", false);
        fs.sync_dir(dir()).unwrap();
        fs.truncate(&dir().join("a"), 4).unwrap();
        f.write_all(b"!").unwrap();
        assert_eq!(
            content(&fs.crash_copy(CrashMode::LoseUnsynced), "a").unwrap(),
            b"0123"
        );
        fs.truncate(&dir().join("a"), 7).unwrap();
        assert_eq!(content(&fs, "a").unwrap(), b"0123!\0\0");
        write(&fs, "a", b"new", false);
        let after = fs.power_cut();
        assert_eq!(content(&after, "a").unwrap(), b"");
    }

    #[test]
    fn torn_crashes_keep_a_prefix_of_directory_changes_and_pages_of_unsynced_data() {
        let written: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        let (mut lens, mut zeroed, mut stale, mut holes) = (BTreeSet::new(), false, false, false);
        let mut name_sets = BTreeSet::new();
        for seed in 0..300 {
            let fs = fs_with_dir();
            let mut f = write(&fs, "a", b"sync", true);
            fs.sync_dir(dir()).unwrap();
            f.write_all(&written).unwrap();
            write(&fs, "b", b"b", true);
            write(&fs, "c", b"c", true);
            fs.remove(&dir().join("a")).unwrap();
            let after = fs.power_cut_with(CrashMode::Torn { seed });
            let n = names(&after);
            // Directory changes land in order: c never without b, and "a" goes last.
            let ok: &[&[&str]] = &[&["a"], &["a", "b"], &["a", "b", "c"], &["b", "c"]];
            assert!(ok.contains(&n.iter().map(String::as_str).collect::<Vec<_>>().as_slice()));
            name_sets.insert(n);
            let Some(a) = content(&after, "a") else {
                continue;
            };
            assert!(a.len() >= 4 && a.len() <= 4 + written.len());
            assert_eq!(&a[..4], b"sync");
            lens.insert(a.len());
            // Page by page (pages are counted from the start of the file).
            let mut lost_before = false;
            for (i, page) in a.chunks(TORN_PAGE).enumerate() {
                let from = i * TORN_PAGE;
                let expected: Vec<u8> = (from..from + page.len())
                    .map(|p| if p < 4 { b"sync"[p] } else { written[p - 4] })
                    .collect();
                if page == expected.as_slice() {
                    holes |= lost_before;
                } else if page.iter().all(|&b| b == 0) {
                    zeroed = true;
                    lost_before = true;
                } else {
                    assert!(i > 0 || page.starts_with(b"sync"));
                    stale = true;
                    lost_before = true;
                }
            }
        }
        assert!(lens.len() > 5, "{lens:?}");
        assert!(
            zeroed && stale,
            "pages are lost as zeroes and as stale bytes"
        );
        assert!(holes, "a later page survives where an earlier one was lost");
        assert_eq!(name_sets.len(), 4);
    }

    #[test]
    fn removed_files_are_collected_once_unreachable() {
        let fs = fs_with_dir();
        write(&fs, "a", &[7; 1000], true);
        fs.sync_dir(dir()).unwrap();
        fs.remove(&dir().join("a")).unwrap();
        assert_eq!(
            fs.state.lock().inodes.len(),
            1,
            "still durable until the dir is synced"
        );
        fs.sync_dir(dir()).unwrap();
        assert!(fs.state.lock().inodes.is_empty());
    }

    #[test]
    fn an_overwritten_file_keeps_its_old_bytes_until_the_new_ones_are_synced() {
        let fs = fs_with_dir();
        let old: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 | 1).collect();
        drop(write(&fs, "log", &old, true));
        fs.sync_dir(dir()).unwrap();
        let mut f = fs.overwrite(&dir().join("log")).unwrap();
        f.write_all(&[0xAA; 1200]).unwrap();
        let mut now = vec![0xAA; 1200];
        now.extend_from_slice(&old[1200..]);
        assert_eq!(content(&fs, "log").unwrap(), now, "reads see the new bytes");

        let lost = fs.crash_copy(CrashMode::LoseUnsynced);
        assert_eq!(
            content(&lost, "log").unwrap(),
            old,
            "nothing new was synced"
        );
        let mut seen_both = false;
        for seed in 0..64 {
            let torn = fs.crash_copy(CrashMode::Torn { seed });
            let got = content(&torn, "log").unwrap();
            assert_eq!(got.len(), old.len(), "seed {seed}: the file never shrinks");
            for (page, chunk) in got.chunks(TORN_PAGE).enumerate() {
                let at = page * TORN_PAGE;
                let want_old = &old[at..at + chunk.len()];
                let want_new = &now[at..at + chunk.len()];
                assert!(
                    chunk == want_old || chunk == want_new,
                    "seed {seed}: page {page} is neither the old nor the new bytes"
                );
            }
            seen_both |= got[..TORN_PAGE] == now[..TORN_PAGE] && got[1024..1200] == old[1024..1200];
        }
        assert!(
            seen_both,
            "some cut keeps an earlier new page and loses a later one"
        );

        // Past the old end the file grows as any other.
        f.write_all(&[0xBB; 2000]).unwrap();
        f.sync().unwrap();
        let mut synced = vec![0xAA; 1200];
        synced.extend_from_slice(&[0xBB; 2000]);
        assert_eq!(fs.synced_len(&dir().join("log")), Some(3200));
        assert_eq!(
            content(&fs.crash_copy(CrashMode::LoseUnsynced), "log").unwrap(),
            synced
        );
    }

    #[test]
    fn a_sync_of_an_overwrite_makes_the_rest_of_the_old_file_durable_as_it_was() {
        let fs = fs_with_dir();
        drop(write(&fs, "log", &[7u8; 2048], true));
        fs.sync_dir(dir()).unwrap();
        let mut f = fs.overwrite(&dir().join("log")).unwrap();
        f.write_all(b"header").unwrap();
        f.sync().unwrap();
        f.write_all(b" and more").unwrap();
        let mut want = b"header".to_vec();
        want.extend_from_slice(&[7u8; 2042]);
        for mode in [CrashMode::LoseUnsynced, CrashMode::Torn { seed: 3 }] {
            let got = content(&fs.crash_copy(mode), "log").unwrap();
            assert_eq!(got.len(), 2048);
            assert_eq!(&got[..6], b"header", "{mode:?}");
            if mode == CrashMode::LoseUnsynced {
                assert_eq!(got, want);
            }
        }
        fs.truncate(&dir().join("log"), 15).unwrap();
        assert_eq!(
            content(&fs.crash_copy(CrashMode::Torn { seed: 9 }), "log").unwrap(),
            b"header and more"
        );
    }

    #[test]
    fn overwriting_a_missing_file_is_an_error_and_counts_as_an_operation() {
        let fs = fs_with_dir();
        assert!(fs.overwrite(&dir().join("none")).is_err());
        assert_eq!(fs.op_count(Op::Overwrite), 1);
        fs.inject(FaultRule::new(Op::Overwrite).times(1));
        drop(write(&fs, "log", b"x", true));
        assert!(fs.overwrite(&dir().join("log")).is_err(), "injected");
        assert!(fs.overwrite(&dir().join("log")).is_ok());
    }
}
