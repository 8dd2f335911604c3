//! `store_ops`: the public [`Store`] API driven by a sequence of operations decoded from the
//! input (appends, batches, edits, deletes, reads, flushes, compactions, reopens, retention,
//! export/import, verify, checkpoint, a read-only view), on a store in a temporary directory
//! with small options, checked after every step against a `BTreeMap` model of what each
//! conversation holds (ids gapless from 1, every field of every message).
//!
//! A panic, a mismatch with the model, or an error other than the documented bad-input errors
//! (`EmptyMessage`, `MessageTooLarge`, `IdOutOfRange`, `NotTheSender`, `InvalidArgument`, each
//! only where the model expects it) is a finding.
//!
//! The input is decoded by hand (one byte at a time, zero once it runs out) rather than with
//! `arbitrary`, so that `tests/fuzz_corpus.rs` replays it on stable Rust with the root crate's
//! dependencies only. Layout: one configuration byte, then operations, each an opcode byte and
//! its argument bytes; at most [`MAX_OPS`] operations run.
//!
//! Retention is time-based, so a conversation that ever had a short time-to-live (or a
//! time-to-live over imported messages with arbitrary timestamps) becomes "lossy": its reads
//! may leave out expired messages or show them as stubs, and the model then checks only that
//! whatever is returned is in range, in order, and consistent with the model.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chatstore::{
    ChatError, CompactionPolicy, Compression, ConversationId, Durability, Error, Message,
    MessageId, MessageKind, NewMessage, Options, Store, UserId,
};

/// Most operations one input runs.
pub const MAX_OPS: usize = 96;
/// `Options::max_message_bytes` of the store under test.
pub const MAX_MESSAGE_BYTES: usize = 1024;
const CONVS: [u64; 6] = [1, 2, 3, 0, 1 << 40, u64::MAX];
const SENDERS: [u64; 4] = [1, 2, 0, u64::MAX];
const LONG_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const SHORT_TTL: Duration = Duration::from_millis(1);

/// Opcodes (the opcode byte modulo [`OPCODES`]). Public so the seed generator can write inputs.
pub mod op {
    /// Append one message.
    pub const APPEND: u8 = 0;
    /// Append a batch of messages.
    pub const APPEND_BATCH: u8 = 1;
    /// Edit a message.
    pub const EDIT: u8 = 2;
    /// Delete a message.
    pub const DELETE: u8 = 3;
    /// `latest`.
    pub const LATEST: u8 = 4;
    /// `before`.
    pub const BEFORE: u8 = 5;
    /// `after`.
    pub const AFTER: u8 = 6;
    /// `around`.
    pub const AROUND: u8 = 7;
    /// `get` and `last_id`.
    pub const GET: u8 = 8;
    /// `flush`.
    pub const FLUSH: u8 = 9;
    /// `compact`.
    pub const COMPACT: u8 = 10;
    /// Close and reopen.
    pub const REOPEN: u8 = 11;
    /// `set_retention`.
    pub const SET_RETENTION: u8 = 12;
    /// `export`.
    pub const EXPORT: u8 = 13;
    /// `import`.
    pub const IMPORT: u8 = 14;
    /// `verify`.
    pub const VERIFY: u8 = 15;
    /// `checkpoint`, then open the copy and check it.
    pub const CHECKPOINT: u8 = 16;
    /// Open a read-only view beside the writer and check it.
    pub const READ_ONLY: u8 = 17;
    /// `sync` and `stats`.
    pub const SYNC_STATS: u8 = 18;
}
/// Number of opcodes.
pub const OPCODES: u8 = 19;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    let config = Config::from_byte(input.byte());
    let dir = temp_root();
    let tmp = tempfile::Builder::new()
        .prefix("chatstore-fuzz-")
        .tempdir_in(&dir)
        .unwrap_or_else(|e| panic!("cannot create a temporary directory in {dir:?}: {e}"));
    let path = tmp.path().join("db");
    let mut h = Harness {
        config,
        path: path.clone(),
        root: tmp.path().to_path_buf(),
        store: None,
        model: BTreeMap::new(),
        history: format!("config {config:?}\n"),
        counter: 0,
        step: 0,
    };
    let store = h.ok("open", Store::open_with(&path, config.options()));
    h.store = Some(store);
    let mut ops = 0;
    while !input.done() && ops < MAX_OPS {
        h.step = ops;
        h.apply(&mut input);
        ops += 1;
    }
    h.check_all_of(h.store(), "final check");
    let report = h.ok("final verify", h.store().verify());
    if !report.is_ok() {
        h.fail(format!("verify found problems: {:?}", report.problems));
    }
    let store = h.store.take().expect("store is open");
    h.ok("final close", store.close());
    if std::env::var_os("CHATSTORE_FUZZ_TRACE").is_some() {
        eprintln!("{}", h.history);
    }
}

/// Where stores are created: `$CHATSTORE_FUZZ_TMPDIR`, else `/dev/shm` (fsync is free on
/// tmpfs, so the fuzzer runs many more inputs), else the system temporary directory.
fn temp_root() -> PathBuf {
    if let Some(d) = std::env::var_os("CHATSTORE_FUZZ_TMPDIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// The store's options, from the first input byte.
#[derive(Clone, Copy, Debug)]
struct Config {
    compression: Compression,
    dictionary_bytes: usize,
    background_compaction: bool,
    buffered: bool,
    tiered: bool,
    max_frozen: usize,
}

impl Config {
    fn from_byte(b: u8) -> Self {
        let (compression, dictionary_bytes) = match b & 3 {
            0 => (Compression::None, 0),
            1 => (Compression::Lz4, 0),
            2 => (Compression::Zstd(1), 0),
            _ => (Compression::Zstd(3), 1024),
        };
        Config {
            compression,
            dictionary_bytes,
            background_compaction: b & 4 != 0,
            buffered: b & 8 != 0,
            tiered: b & 16 != 0,
            max_frozen: if b & 32 != 0 { 2 } else { 1 },
        }
    }

    fn options(&self) -> Options {
        Options {
            durability: if self.buffered {
                Durability::Buffered {
                    interval: Duration::from_millis(5),
                }
            } else {
                Durability::Sync
            },
            memtable_bytes: 4096,
            max_frozen_memtables: self.max_frozen,
            max_message_bytes: MAX_MESSAGE_BYTES,
            compression: self.compression,
            block_bytes: 512,
            dictionary_bytes: self.dictionary_bytes,
            memory_budget_bytes: 32 << 10,
            l0_compaction_trigger: 2,
            level_base_bytes: 16 << 10,
            target_segment_bytes: 4096,
            compaction_policy: if self.tiered {
                CompactionPolicy::Tiered
            } else {
                CompactionPolicy::Leveled
            },
            background_compaction: self.background_compaction,
            ..Options::default()
        }
    }
}

/// What a call should return, by the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Empty,
    TooLarge,
    OutOfRange,
    Invalid,
}

/// The documented bad-input errors; `None` for anything else (always a finding).
fn classify(e: &Error) -> Option<Expect> {
    match e {
        Error::Chat(ChatError::EmptyMessage) => Some(Expect::Empty),
        Error::MessageTooLarge { .. } => Some(Expect::TooLarge),
        Error::IdOutOfRange { .. } => Some(Expect::OutOfRange),
        Error::InvalidArgument(_) => Some(Expect::Invalid),
        _ => None,
    }
}

#[derive(Default)]
struct Conv {
    /// Message `id` is `rows[id - 1]`, exactly as reads must return it.
    rows: Vec<Message>,
    ttl: Option<Duration>,
    imported: bool,
    /// Reads may leave out or stub expired messages (see the module docs).
    lossy: bool,
}

struct Harness {
    config: Config,
    path: PathBuf,
    root: PathBuf,
    store: Option<Store>,
    model: BTreeMap<u64, Conv>,
    history: String,
    counter: u64,
    step: usize,
}

fn content_len(b: u8) -> usize {
    let low = usize::from(b & 63);
    match b >> 6 {
        0 => low,
        1 => low * 4,
        2 => low * 16,
        // Around the limit: 992..=1055 bytes.
        _ => MAX_MESSAGE_BYTES - 32 + low,
    }
}

fn pick_id(b: u8, last: u64) -> u64 {
    match b % 8 {
        0 => 0,
        1 => last.saturating_add(1),
        2 => u64::MAX,
        _ => last.saturating_sub(u64::from(b / 8)),
    }
}

fn pick_n(b: u8) -> usize {
    match b {
        255 => usize::MAX,
        254 => 0,
        _ => usize::from(b) % 40,
    }
}

fn pick_conv(b: u8) -> u64 {
    CONVS[usize::from(b) % CONVS.len()]
}

fn pick_sender(b: u8) -> UserId {
    UserId(SENDERS[usize::from(b) % SENDERS.len()])
}

/// What the store returns for a deleted message.
fn deleted(mut m: Message, at_ms: Option<u64>) -> Message {
    m.kind = MessageKind::Deleted;
    m.content = Bytes::new();
    m.attachment = None;
    m.mentions = Vec::new();
    m.reply_to = None;
    m.edited_ms = at_ms;
    m
}

/// The checks every message of a write passes before any is appended (the raw store keeps
/// empty messages: refusing them is a chat rule).
fn check_size(m: &NewMessage) -> Expect {
    if m.size() > MAX_MESSAGE_BYTES {
        Expect::TooLarge
    } else {
        Expect::Ok
    }
}

/// What appending `m` to a conversation whose last id is `last` should do.
fn check_new(m: &NewMessage, last: u64) -> Expect {
    match (check_size(m), m.reply_to) {
        (Expect::Ok, Some(r)) if r.0 == 0 || r.0 > last => Expect::OutOfRange,
        (e, _) => e,
    }
}

fn ids(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.id.0).collect()
}

impl Harness {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    fn fail(&self, msg: String) -> ! {
        panic!(
            "store_ops finding at step {}: {msg}\n--- operations so far ---\n{}",
            self.step, self.history
        );
    }

    fn ok<T>(&self, what: &str, r: chatstore::Result<T>) -> T {
        r.unwrap_or_else(|e| self.fail(format!("{what}: unexpected error: {e:?}")))
    }

    fn log(&mut self, line: String) {
        let _ = writeln!(self.history, "{:>3}: {line}", self.step);
    }

    fn len(&self, conv: u64) -> u64 {
        self.model.get(&conv).map_or(0, |c| c.rows.len() as u64)
    }

    fn lossy(&self, conv: u64) -> bool {
        self.model.get(&conv).is_some_and(|c| c.lossy)
    }

    fn content(&mut self, len: usize) -> Bytes {
        self.counter += 1;
        let head = format!("#{}:", self.counter);
        let v: Vec<u8> = head
            .into_bytes()
            .into_iter()
            .chain((0usize..).map(|i| b"hello chat store "[i % 17]))
            .take(len)
            .collect();
        Bytes::from(v)
    }

    fn new_message(&mut self, input: &mut Input<'_>, last: u64) -> NewMessage {
        let sender = pick_sender(input.byte());
        let len = content_len(input.byte());
        let flags = input.byte();
        let content = self.content(len);
        let kind = match (flags >> 3) & 3 {
            1 => MessageKind::System,
            2 => MessageKind::Deleted,
            _ => MessageKind::Normal,
        };
        let attachment = (flags & 1 != 0).then(|| {
            let n = usize::from(input.byte() % 64);
            self.content(n)
        });
        let reply_to = (flags & 2 != 0).then(|| MessageId(pick_id(input.byte(), last)));
        let mentions = if flags & 4 != 0 {
            let n = input.byte() % 4;
            (0..n).map(|_| pick_sender(input.byte())).collect()
        } else {
            Vec::new()
        };
        NewMessage {
            sender,
            content,
            kind,
            attachment,
            reply_to,
            mentions,
        }
    }

    /// The appended message must be `m` with the next id.
    fn check_appended(&self, conv: u64, id: u64, m: &NewMessage, got: &Message) {
        let want = Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: m.sender,
            timestamp_ms: got.timestamp_ms,
            kind: m.kind,
            content: m.content.clone(),
            attachment: m.attachment.clone(),
            reply_to: m.reply_to,
            mentions: m.mentions.clone(),
            edited_ms: None,
        };
        if *got != want {
            self.fail(format!("append returned {got:?}, expected {want:?}"));
        }
    }

    /// `got` is a read of ids `lo..=hi` (clipped to the conversation) of `conv`.
    fn check_range(&self, what: &str, conv: u64, lo: u64, hi: u64, got: &[Message]) {
        let c = self.model.get(&conv);
        let rows: &[Message] = c.map_or(&[], |c| &c.rows);
        let hi = hi.min(rows.len() as u64);
        let lo = lo.max(1);
        let want: &[Message] = if lo > hi {
            &[]
        } else {
            &rows[(lo - 1) as usize..hi as usize]
        };
        if !self.lossy(conv) {
            if got != want {
                self.fail(format!(
                    "{what} of conversation {conv}, ids {lo}..={hi}: got ids {:?}, expected {:?}\n\
                     got: {got:?}\nexpected: {want:?}",
                    ids(got),
                    ids(want)
                ));
            }
            return;
        }
        let mut prev = 0;
        for m in got {
            let id = m.id.0;
            if id < lo || id > hi || id <= prev {
                self.fail(format!(
                    "{what} of lossy conversation {conv}, ids {lo}..={hi}: got ids {:?}",
                    ids(got)
                ));
            }
            prev = id;
            let row = &rows[(id - 1) as usize];
            let consistent = m == row
                || (m.conversation == row.conversation
                    && m.sender == row.sender
                    && m.timestamp_ms == row.timestamp_ms
                    && m.kind == MessageKind::Deleted);
            if !consistent {
                self.fail(format!(
                    "{what} of lossy conversation {conv}: got {m:?}, model has {row:?}"
                ));
            }
        }
    }

    /// Every conversation the harness can touch must read back exactly as the model holds it.
    fn check_all_of(&self, store: &Store, what: &str) {
        for conv in CONVS {
            let len = self.len(conv);
            let last = store
                .last_id(ConversationId(conv))
                .map_or(u64::MAX, |id| id.0);
            if last != len {
                self.fail(format!(
                    "{what}: last_id of conversation {conv} is {last}, model has {len}"
                ));
            }
            let got = self.ok(what, store.latest(ConversationId(conv), usize::MAX));
            self.check_range(what, conv, 1, len, &got);
        }
    }

    /// Compares an outcome with the expectation; returns the value when both say Ok.
    fn outcome<T: std::fmt::Debug>(
        &self,
        what: &str,
        expect: Expect,
        also_ok: &[Expect],
        got: chatstore::Result<T>,
    ) -> Option<T> {
        match got {
            Ok(v) if expect == Expect::Ok || also_ok.contains(&Expect::Ok) => Some(v),
            Err(e) if classify(&e).is_some_and(|k| k == expect || also_ok.contains(&k)) => None,
            other => self.fail(format!("{what}: expected {expect:?}, got {other:?}")),
        }
    }

    fn apply(&mut self, input: &mut Input<'_>) {
        let code = input.byte() % OPCODES;
        match code {
            op::APPEND => {
                let conv = pick_conv(input.byte());
                let last = self.len(conv);
                let m = self.new_message(input, last);
                let expect = check_new(&m, last);
                self.log(format!(
                    "append conv {conv} sender {} len {} kind {:?} att {:?} reply {:?} mentions {} -> {expect:?}",
                    m.sender, m.content.len(), m.kind, m.attachment.as_ref().map(Bytes::len),
                    m.reply_to, m.mentions.len()
                ));
                let got = self.store().append(ConversationId(conv), m.clone());
                if let Some(msg) = self.outcome("append", expect, &[], got) {
                    self.check_appended(conv, last + 1, &m, &msg);
                    self.model.entry(conv).or_default().rows.push(msg);
                }
            }
            op::APPEND_BATCH => {
                let n = input.byte() % 6;
                let mut lasts: BTreeMap<u64, u64> = BTreeMap::new();
                let mut batch = Vec::new();
                for _ in 0..n {
                    let conv = pick_conv(input.byte());
                    let last = *lasts.entry(conv).or_insert_with(|| self.len(conv));
                    let m = self.new_message(input, last);
                    // The batch's own messages count for later replies in the same batch.
                    lasts.insert(conv, last + 1);
                    batch.push((conv, m));
                }
                // Every message is checked for size first, then appended in order.
                let mut expect = batch
                    .iter()
                    .map(|(_, m)| check_size(m))
                    .find(|e| *e != Expect::Ok)
                    .unwrap_or(Expect::Ok);
                let mut ids = Vec::new();
                if expect == Expect::Ok {
                    let mut lasts: BTreeMap<u64, u64> = BTreeMap::new();
                    for (conv, m) in &batch {
                        let last = *lasts.entry(*conv).or_insert_with(|| self.len(*conv));
                        let e = check_new(m, last);
                        if e != Expect::Ok {
                            expect = e;
                            break;
                        }
                        lasts.insert(*conv, last + 1);
                        ids.push(last + 1);
                    }
                }
                self.log(format!(
                    "append_batch {:?} -> {expect:?}",
                    batch
                        .iter()
                        .map(|(c, m)| (*c, m.content.len(), m.reply_to.map(|r| r.0)))
                        .collect::<Vec<_>>()
                ));
                let got = self.store().append_batch(
                    batch
                        .iter()
                        .map(|(c, m)| (ConversationId(*c), m.clone()))
                        .collect(),
                );
                if let Some(msgs) = self.outcome("append_batch", expect, &[], got) {
                    if msgs.len() != batch.len() {
                        self.fail(format!(
                            "append_batch of {} returned {} messages",
                            batch.len(),
                            msgs.len()
                        ));
                    }
                    for (((conv, m), msg), id) in batch.iter().zip(msgs).zip(ids) {
                        self.check_appended(*conv, id, m, &msg);
                        self.model.entry(*conv).or_default().rows.push(msg);
                    }
                }
            }
            op::EDIT | op::DELETE => {
                let delete = code == op::DELETE;
                let conv = pick_conv(input.byte());
                let last = self.len(conv);
                let id = pick_id(input.byte(), last);
                let by = pick_sender(input.byte());
                let content = if delete {
                    Bytes::new()
                } else {
                    let len = content_len(input.byte());
                    self.content(len)
                };
                let row = (id >= 1 && id <= last)
                    .then(|| self.model[&conv].rows[(id - 1) as usize].clone());
                let expect = if !delete && content.len() > MAX_MESSAGE_BYTES {
                    Expect::TooLarge
                } else {
                    match &row {
                        None => Expect::OutOfRange,
                        Some(r) if r.kind == MessageKind::Deleted => Expect::Invalid,
                        Some(_) => Expect::Ok,
                    }
                };
                // An expired message is out of range; a retention stub reads as deleted.
                let also: &[Expect] =
                    if self.lossy(conv) && !matches!(expect, Expect::Empty | Expect::TooLarge) {
                        &[Expect::OutOfRange, Expect::Invalid]
                    } else {
                        &[]
                    };
                let what = if delete { "delete" } else { "edit" };
                self.log(format!(
                    "{what} conv {conv} id {id} by {by} len {} -> {expect:?}",
                    content.len()
                ));
                let got = if delete {
                    self.store().delete(ConversationId(conv), MessageId(id))
                } else {
                    self.store()
                        .edit(ConversationId(conv), MessageId(id), content.clone())
                };
                if let Some(msg) = self.outcome(what, expect, also, got) {
                    let Some(row) = row else {
                        self.fail(format!("{what} of a missing message succeeded: {msg:?}"));
                    };
                    let Some(at) = msg.edited_ms else {
                        self.fail(format!("{what} returned no edit time: {msg:?}"));
                    };
                    let want = if delete {
                        deleted(row, Some(at))
                    } else {
                        let mut w = row;
                        w.content = content;
                        w.edited_ms = Some(at);
                        w
                    };
                    if msg != want {
                        self.fail(format!("{what} returned {msg:?}, expected {want:?}"));
                    }
                    self.model.get_mut(&conv).expect("conversation exists").rows
                        [(id - 1) as usize] = msg;
                }
            }
            op::LATEST => {
                let conv = pick_conv(input.byte());
                let n = pick_n(input.byte());
                let last = self.len(conv);
                self.log(format!("latest conv {conv} n {n}"));
                let got = self.ok("latest", self.store().latest(ConversationId(conv), n));
                let lo = last.saturating_sub(n as u64).saturating_add(1);
                self.check_range("latest", conv, lo, last, &got);
            }
            op::BEFORE | op::AFTER | op::AROUND => {
                let conv = pick_conv(input.byte());
                let last = self.len(conv);
                let id = pick_id(input.byte(), last);
                let n = pick_n(input.byte());
                let n64 = n as u64;
                let (what, expect, lo, hi) = match code {
                    op::BEFORE => (
                        "before",
                        if id == 0 || id > last {
                            Expect::OutOfRange
                        } else {
                            Expect::Ok
                        },
                        id.saturating_sub(n64).max(1),
                        id.saturating_sub(1),
                    ),
                    op::AFTER => (
                        "after",
                        if id > last {
                            Expect::OutOfRange
                        } else {
                            Expect::Ok
                        },
                        id.saturating_add(1),
                        id.saturating_add(n64).min(last),
                    ),
                    _ => (
                        "around",
                        if id == 0 || id > last {
                            Expect::OutOfRange
                        } else {
                            Expect::Ok
                        },
                        id.saturating_sub(n64).max(1),
                        id.saturating_add(n64).min(last),
                    ),
                };
                self.log(format!("{what} conv {conv} id {id} n {n} -> {expect:?}"));
                let c = ConversationId(conv);
                let got = match code {
                    op::BEFORE => self.store().before(c, MessageId(id), n),
                    op::AFTER => self.store().after(c, MessageId(id), n),
                    _ => self.store().around(c, MessageId(id), n),
                };
                if let Some(msgs) = self.outcome(what, expect, &[], got) {
                    self.check_range(what, conv, lo, hi, &msgs);
                }
            }
            op::GET => {
                let conv = pick_conv(input.byte());
                let last = self.len(conv);
                let id = pick_id(input.byte(), last);
                self.log(format!("get conv {conv} id {id}"));
                let got = self.ok("get", self.store().get(ConversationId(conv), MessageId(id)));
                match got {
                    None if id == 0 || id > last || self.lossy(conv) => {}
                    Some(m) if id >= 1 && id <= last => {
                        self.check_range("get", conv, id, id, std::slice::from_ref(&m))
                    }
                    other => self.fail(format!(
                        "get of conversation {conv} id {id} (last {last}) returned {other:?}"
                    )),
                }
                let got_last = self
                    .store()
                    .last_id(ConversationId(conv))
                    .map_or(u64::MAX, |id| id.0);
                if got_last != last {
                    self.fail(format!("last_id of {conv} is {got_last}, model has {last}"));
                }
            }
            op::FLUSH => {
                self.log("flush".into());
                self.ok("flush", self.store().flush());
                self.check_all_of(self.store(), "after flush");
            }
            op::COMPACT => {
                self.log("compact".into());
                self.ok("compact", self.store().compact());
                self.check_all_of(self.store(), "after compact");
            }
            op::REOPEN => {
                self.log("reopen".into());
                let store = self.store.take().expect("store is open");
                self.ok("close", store.close());
                let store = self.ok(
                    "reopen",
                    Store::open_with(&self.path, self.config.options()),
                );
                self.store = Some(store);
                self.check_all_of(self.store(), "after reopen");
            }
            op::SET_RETENTION => {
                let conv = pick_conv(input.byte());
                let (ttl, expect) = match input.byte() % 4 {
                    0 => (None, Expect::Ok),
                    1 => (Some(Duration::ZERO), Expect::Invalid),
                    2 => (Some(LONG_TTL), Expect::Ok),
                    _ => (Some(SHORT_TTL), Expect::Ok),
                };
                self.log(format!("set_retention conv {conv} {ttl:?} -> {expect:?}"));
                let got = self.store().set_retention(ConversationId(conv), ttl);
                if self.outcome("set_retention", expect, &[], got).is_some() {
                    let c = self.model.entry(conv).or_default();
                    c.ttl = ttl;
                    if ttl == Some(SHORT_TTL) || (ttl.is_some() && c.imported) {
                        c.lossy = true;
                    }
                }
            }
            op::EXPORT => {
                let conv = pick_conv(input.byte());
                self.log(format!("export conv {conv}"));
                let mut got = Vec::new();
                for m in self.store().export(ConversationId(conv)) {
                    got.push(self.ok("export", m));
                }
                self.check_range("export", conv, 1, u64::MAX, &got);
            }
            op::IMPORT => self.import(input),
            op::VERIFY => {
                self.log("verify".into());
                let report = self.ok("verify", self.store().verify());
                if !report.is_ok() {
                    self.fail(format!("verify found problems: {:?}", report.problems));
                }
            }
            op::CHECKPOINT => {
                let dest = self.root.join(format!("checkpoint-{}", self.step));
                self.log("checkpoint".into());
                self.ok("checkpoint", self.store().checkpoint(&dest));
                let options = Options {
                    background_compaction: false,
                    ..self.config.options()
                };
                let copy = self.ok("open checkpoint", Store::open_with(&dest, options));
                self.check_all_of(&copy, "checkpoint copy");
                self.ok("close checkpoint", copy.close());
                let _ = std::fs::remove_dir_all(&dest);
            }
            op::READ_ONLY => {
                self.log("read-only view".into());
                let options = Options {
                    read_only: true,
                    ..self.config.options()
                };
                // Beside the live writer, whose background flush and compaction keep running.
                let view = self.ok("read-only open", Store::open_with(&self.path, options));
                self.check_all_of(&view, "read-only view");
                if !matches!(
                    view.append(ConversationId(1), NewMessage::text(UserId(1), "x")),
                    Err(Error::ReadOnly)
                ) {
                    self.fail("a read-only view accepted a write".into());
                }
                self.ok("close read-only view", view.close());
            }
            _ => {
                self.log("sync + stats".into());
                self.ok("sync", self.store().sync());
                let _ = self.store().stats();
            }
        }
    }

    fn import(&mut self, input: &mut Input<'_>) {
        let n = 1 + input.byte() % 3;
        let now = now_ms();
        let mut lasts: BTreeMap<u64, u64> = BTreeMap::new();
        let mut msgs = Vec::new();
        // `Store::import` checks every message's own fields first (size, an id from 1, a
        // reply to an earlier id), then restores them in order (each id must continue its
        // conversation): the first failure of the first pass wins over any of the second.
        let mut own_fields = Expect::Ok;
        let mut continues = Expect::Ok;
        for _ in 0..n {
            let conv = pick_conv(input.byte());
            let last = *lasts.entry(conv).or_insert_with(|| self.len(conv));
            let id = match input.byte() % 4 {
                0 | 1 => last + 1,
                2 => last + 2,
                _ => 0,
            };
            let m = self.new_message(input, last);
            let t = input.byte();
            let timestamp_ms = match t % 3 {
                0 => now,
                1 => 0,
                _ => u64::MAX,
            };
            let edited_ms = match (t / 3) % 3 {
                0 => None,
                1 => Some(now),
                _ => Some(7),
            };
            let msg = Message {
                conversation: ConversationId(conv),
                id: MessageId(id),
                sender: m.sender,
                timestamp_ms,
                kind: m.kind,
                content: m.content,
                attachment: m.attachment,
                reply_to: m.reply_to,
                mentions: m.mentions,
                edited_ms,
            };
            if own_fields == Expect::Ok {
                if msg.content.len() + msg.attachment.as_ref().map_or(0, Bytes::len)
                    > MAX_MESSAGE_BYTES
                {
                    own_fields = Expect::TooLarge;
                } else if id == 0 {
                    own_fields = Expect::Invalid;
                } else if msg.reply_to.is_some_and(|r| r.0 == 0 || r.0 >= id) {
                    own_fields = Expect::OutOfRange;
                }
            }
            if continues == Expect::Ok && id != last + 1 {
                continues = Expect::Invalid;
            }
            lasts.insert(conv, last + 1);
            msgs.push(msg);
        }
        let expect = if own_fields == Expect::Ok {
            continues
        } else {
            own_fields
        };
        self.log(format!(
            "import {:?} -> {expect:?}",
            msgs.iter()
                .map(|m| (
                    m.conversation.0,
                    m.id.0,
                    m.content.len(),
                    m.kind,
                    m.edited_ms
                ))
                .collect::<Vec<_>>()
        ));
        let got = self.store().import(msgs.clone());
        if self.outcome("import", expect, &[], got).is_some() {
            for m in msgs {
                let c = self.model.entry(m.conversation.0).or_default();
                c.imported = true;
                if c.ttl.is_some() {
                    c.lossy = true;
                }
                let row = match m.edited_ms {
                    Some(at) if m.kind == MessageKind::Deleted => deleted(m, Some(at)),
                    _ => m,
                };
                c.rows.push(row);
            }
        }
    }
}
