//! Choosing what to compact: leveled compaction, partitioned by key range.
//!
//! Level 0 holds flushed segments, each covering every conversation active while its
//! memtable filled. When there are `l0_trigger` of them, all of them are merged with the level-1
//! segments they overlap. Levels 1 and deeper are sorted runs: their segments hold disjoint
//! conversation ranges (message segments) or disjoint key ranges (state segments). When a
//! level outgrows its budget (`level_base_bytes` for level 1, ten times more per level below),
//! one of its segments, chosen round-robin by key range, is merged with the overlapping
//! segments of the next level. So a key's newer data is always in a lower level, and a read
//! touches at most the level-0 segments plus one segment per level. See
//! `docs/compaction.md` for the reasoning and measurements.

use bytes::Bytes;

use crate::options::Compression;

/// Number of levels.
pub const LEVELS: usize = 7;
/// How much bigger each level's budget is than the one above.
pub const LEVEL_MULTIPLIER: u64 = 10;

/// What the picker needs to know of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// File number.
    pub number: u64,
    /// Level.
    pub level: u32,
    /// File size.
    pub bytes: u64,
    /// What its messages weigh uncompressed (`SegmentReader::logical_bytes`): compares
    /// segments whatever their codecs.
    pub logical_bytes: u64,
    /// Conversation range of its messages.
    pub conversations: Option<(u64, u64)>,
    /// Key range of its state entries.
    pub state_keys: Option<(Bytes, Bytes)>,
    /// Written with the flush's fast codec rather than the store's own: worth rewriting before
    /// level 0 fills up, when that is cheap.
    pub provisional: bool,
    /// Its blocks of several conversations are in a faster codec than the store's (see
    /// [`SharedBlocks`]): a quiet store folds such a run within level 0 into level 1, and
    /// rewrites such a level-1 segment in the store's codec, rather than keep those blocks.
    pub fast_shared_blocks: bool,
}

/// Level 0 holding provisional (fast-codec) segments is compacted below its trigger once its
/// bytes reach this fraction of level 1's: a store at rest, or a small one, ends up in its
/// compact form, while the rewrite costs at most `1 + PROVISIONAL_RATIO` times the level-0
/// bytes.
pub const PROVISIONAL_RATIO: u64 = 4;

/// Whether level 0 should be compacted now because of provisional segments.
fn provisional_due(segs: &[SegmentMeta]) -> bool {
    let l0 = level_bytes(segs, 0);
    let l1 = level_bytes(segs, 1);
    segs.iter().any(|s| s.level == 0 && s.provisional) && l0.saturating_mul(PROVISIONAL_RATIO) >= l1
}

/// Whether a quiet store should fold level 0 into level 1 below the trigger: for provisional
/// segments (`provisional_due`), and for runs made within level 0 under writes (see
/// `level0_tiering`) once they weigh a quarter of level 1. Left in level 0, such a run is a
/// second place every read of a busy conversation looks in, for as long as the store stays
/// at rest (on the full preset: 1.35 segments per read instead of 1, newest-50 p99 from
/// ~30 to ~42 us).
fn level0_due_at_rest(segs: &[SegmentMeta]) -> bool {
    let l0 = level_bytes(segs, 0);
    let l1 = level_bytes(segs, 1);
    let runs = segs.iter().any(|s| s.level == 0 && !s.provisional);
    provisional_due(segs)
        || (runs && l1 > 0 && l0.saturating_mul(PROVISIONAL_RATIO) >= l1)
        || segs.iter().any(|s| s.level == 0 && s.fast_shared_blocks)
}

/// Total bytes of `segs` (an estimate: saturates rather than wraps).
fn total_bytes<'a>(segs: impl IntoIterator<Item = &'a SegmentMeta>) -> u64 {
    segs.into_iter()
        .fold(0u64, |acc, s| acc.saturating_add(s.bytes))
}

/// Bytes of the segments of `level`.
fn level_bytes(segs: &[SegmentMeta], level: u32) -> u64 {
    total_bytes(segs.iter().filter(|s| s.level == level))
}

/// The deepest level a compaction may write to.
const LAST_LEVEL: u32 = LEVELS as u32 - 1;

/// Picker settings.
#[derive(Clone, Copy, Debug)]
pub struct PickerOptions {
    /// Level-0 segment count that triggers a compaction.
    pub l0_trigger: usize,
    /// Level-1 budget in bytes.
    pub level_base_bytes: u64,
    /// The store is quiet (no flush for a while): provisional level-0 segments may be folded
    /// into level 1 below the trigger (`provisional_due`). Under writes that would compete with
    /// the flush for nothing level 0 needs yet.
    pub quiet: bool,
    /// `Options::level0_max_runs`: runs a level-0 batch may gather within level 0 (see
    /// `level0_tiering`); 0 turns that off.
    pub level0_max_runs: usize,
}

/// Level 0 is merged into level 1 once the runs made within it (see `level0_tiering`) weigh
/// this fraction of level 1, or number `Options::level0_max_runs`; before that, each
/// trigger's worth of flushed (provisional) segments is merged into one more run within
/// level 0.
pub const LEVEL0_TIER_RATIO: u64 = 4;

/// Under writes, a trigger's worth of flushed segments merged into one run within level 0,
/// when merging level 0 into level 1 would still rewrite much more than it brings. Every
/// flushed segment spans every active conversation, so each level-0 -> level-1 merge rewrites
/// all of level 1 whatever level 0 brings: the larger the level-0 batch, the fewer such
/// rewrites. Waiting as flushed segments would leave the level-0 count (and with it the
/// write controller's delays, reads' probes and resident indexes) growing; runs merged within
/// level 0 keep it small while the batch grows. The run costs one encode of the new rows,
/// which the level-1 merge would pay anyway, and it then copies the blocks of busy
/// conversations as stored. Whether level 0 takes that path now: its runs are still few and
/// small against level 1.
fn level0_tiering(segs: &[SegmentMeta], max_runs: usize) -> bool {
    let runs = segs
        .iter()
        .filter(|s| s.level == 0 && !s.provisional)
        .count();
    // Weighed uncompressed: a run stores its shared blocks in the flush's codec (see
    // `SharedBlocks::FlushCodec`), so its file is larger than the same rows in level 1, and by file
    // size level 0 would go down into level 1 after fewer rows, rewriting level 1 more often.
    let run_bytes = segs
        .iter()
        .filter(|s| s.level == 0 && !s.provisional)
        .map(|s| s.logical_bytes)
        .fold(0u64, u64::saturating_add);
    let level1 = segs
        .iter()
        .filter(|s| s.level == 1)
        .map(|s| s.logical_bytes)
        .fold(0u64, u64::saturating_add);
    runs < max_runs && run_bytes.saturating_mul(LEVEL0_TIER_RATIO) < level1
}

/// A chosen compaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Input segment numbers.
    pub inputs: Vec<u64>,
    /// Level the outputs go to.
    pub output_level: u32,
    /// Whether deletions can be dropped (nothing older lies below the output level).
    pub drop_tombstones: bool,
    /// The codec of the outputs' blocks holding several conversations.
    pub shared_blocks: SharedBlocks,
}

/// Where a compaction's outputs store their blocks holding several conversations (quiet
/// conversations, a few rows each). The next merge of such a block with newer rows re-encodes
/// it whatever its codec, since newer rows of its conversations fall inside it; blocks of one
/// conversation are copied as stored instead. So outputs that a merge will read again soon
/// keep their shared blocks in a codec fast to write and read, and only their blocks of one
/// conversation in the store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedBlocks {
    /// In the store's codec, as every other block: outputs the data settles in.
    StoreCodec,
    /// In the flush's codec (raw by default): a run within level 0 made under writes, which
    /// the merge into level 1 reads again within a few flushes.
    FlushCodec,
    /// In LZ4 when the store's codec is zstd (see [`fast_codec`]): level 1 written under
    /// writes, whose shared blocks every merge of level 0 into it rewrites (every flushed
    /// segment holds rows of nearly every conversation). A quiet store rewrites them in the
    /// store's codec ([`pick_level1_recompress`]).
    Fast,
}

/// The codec of [`SharedBlocks::Fast`] blocks for a store whose codec is `store`: LZ4 for
/// zstd (~2 times faster to write, ~3.5 times to read, ~1.8 times the bytes on chat blocks;
/// `examples/codec_probe.rs`), else the store's own.
pub fn fast_codec(store: Compression) -> Compression {
    match store {
        Compression::Zstd(_) => Compression::Lz4,
        other => other,
    }
}

/// Round-robin positions per level: where the last compaction of each level ended; and
/// whether the last compaction was level 0's.
#[derive(Clone, Debug, Default)]
pub struct Cursors {
    after: [Option<Bytes>; LEVELS],
    level0_last: bool,
}

/// Level 0 may hold this many times its trigger before its compaction stops giving way to
/// level 1's (see `pick`): where the write controller's delay reaches its longest. Draining
/// level 1 is what keeps the next level-0 compaction affordable, so it goes on through the
/// slowdown; only writers waiting the longest delay come first.
pub const LEVEL0_YIELDS_BELOW: usize = crate::engine::write_controller::STOP_FACTOR;

/// The budget of level `level` (>= 1).
pub fn level_budget(opts: &PickerOptions, level: u32) -> u64 {
    let mut b = opts.level_base_bytes;
    for _ in 1..level {
        b = b.saturating_mul(LEVEL_MULTIPLIER);
    }
    b
}

/// The level-0 segments a rewrite within level 0 takes: every one from the oldest
/// provisional segment on (a suffix by age, so the output, numbered after all of them, sits
/// where they sat).
fn level0_rewrite_inputs(segs: &[SegmentMeta]) -> Vec<&SegmentMeta> {
    let Some(oldest) = segs
        .iter()
        .filter(|s| s.level == 0 && s.provisional)
        .map(|s| s.number)
        .min()
    else {
        return Vec::new();
    };
    segs.iter()
        .filter(|s| s.level == 0 && s.number >= oldest)
        .collect()
}

/// Bytes that compaction still has to move to bring every level within budget, and every
/// provisional segment into the store's codec.
pub fn pending_bytes(segs: &[SegmentMeta], opts: &PickerOptions) -> u64 {
    let l0: Vec<&SegmentMeta> = segs.iter().filter(|s| s.level == 0).collect();
    let mut pending = if l0.len() >= opts.l0_trigger || level0_due_at_rest(segs) {
        total_bytes(l0.iter().copied())
    } else {
        total_bytes(level0_rewrite_inputs(segs))
    };
    for level in 1..=LAST_LEVEL {
        let over = level_bytes(segs, level).saturating_sub(level_budget(opts, level));
        pending = pending.saturating_add(over);
    }
    // Level-1 segments whose shared blocks wait for the store's codec.
    let fast = segs.iter().filter(|s| s.level == 1 && s.fast_shared_blocks);
    pending.saturating_add(total_bytes(fast))
}

/// A sort key for a segment's position in its level (message ranges before state ranges).
fn range_start(s: &SegmentMeta) -> Bytes {
    match (&s.conversations, &s.state_keys) {
        (Some((lo, _)), _) => {
            let mut k = vec![0u8];
            k.extend_from_slice(&lo.to_be_bytes());
            Bytes::from(k)
        }
        (None, Some((lo, _))) => {
            let mut k = vec![1u8];
            k.extend_from_slice(lo);
            Bytes::from(k)
        }
        (None, None) => Bytes::new(),
    }
}

fn overlaps_conv(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> bool {
    matches!((a, b), (Some((a0, a1)), Some((b0, b1))) if a0 <= b1 && b0 <= a1)
}

fn overlaps_keys(a: &Option<(Bytes, Bytes)>, b: &Option<(Bytes, Bytes)>) -> bool {
    matches!((a, b), (Some((a0, a1)), Some((b0, b1))) if a0 <= b1 && b0 <= a1)
}

fn union_conv(segs: &[&SegmentMeta]) -> Option<(u64, u64)> {
    segs.iter()
        .filter_map(|s| s.conversations)
        .fold(None, |acc, (lo, hi)| match acc {
            None => Some((lo, hi)),
            Some((a, b)) => Some((a.min(lo), b.max(hi))),
        })
}

fn union_keys(segs: &[&SegmentMeta]) -> Option<(Bytes, Bytes)> {
    segs.iter()
        .filter_map(|s| s.state_keys.clone())
        .fold(None, |acc, (lo, hi)| match acc {
            None => Some((lo, hi)),
            Some((a, b)) => Some((a.min(lo), b.max(hi))),
        })
}

/// The segments of `level` that overlap `chosen`.
fn overlapping<'a>(
    segs: &'a [SegmentMeta],
    level: u32,
    chosen: &[&SegmentMeta],
) -> Vec<&'a SegmentMeta> {
    let conv = union_conv(chosen);
    let keys = union_keys(chosen);
    segs.iter()
        .filter(|s| s.level == level)
        .filter(|s| overlaps_conv(s.conversations, conv) || overlaps_keys(&s.state_keys, &keys))
        .collect()
}

fn finish(inputs: Vec<&SegmentMeta>, output_level: u32, segs: &[SegmentMeta]) -> Pick {
    let drop_tombstones = !segs
        .iter()
        .any(|s| s.level > output_level && s.state_keys.is_some());
    let mut numbers: Vec<u64> = inputs.iter().map(|s| s.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    Pick {
        inputs: numbers,
        output_level,
        drop_tombstones,
        shared_blocks: SharedBlocks::StoreCodec,
    }
}

/// The most urgent compaction, if any level is over its trigger or budget.
pub fn pick(segs: &[SegmentMeta], opts: &PickerOptions, cursors: &mut Cursors) -> Option<Pick> {
    let l0: Vec<&SegmentMeta> = segs.iter().filter(|s| s.level == 0).collect();
    // While level 0 gathers runs, only the flushed segments not yet in one count towards its
    // trigger: the runs wait for the merge into level 1.
    let tiering = level0_tiering(segs, opts.level0_max_runs);
    let raw = level0_rewrite_inputs(segs);
    let due = if tiering { raw.len() } else { l0.len() };
    let mut best: Option<(f64, u32)> = None;
    if due > 0 {
        let score = due as f64 / opts.l0_trigger as f64;
        if score >= 1.0 {
            best = Some((score, 0));
        }
    }
    for level in 1..LAST_LEVEL {
        let score = level_bytes(segs, level) as f64 / level_budget(opts, level) as f64;
        if score >= 1.0 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, level));
        }
    }
    if best.is_none() && opts.quiet && level0_due_at_rest(segs) {
        best = Some((0.0, 0));
    }
    let (_, mut level) = best?;
    // Under sustained writes level 0's score wins every time, and level 1, never drained,
    // grows into a rewrite of the whole store at each level-0 compaction. So a level-0
    // compaction that leaves level 1 over its budget is followed by one of level 1 moving the
    // excess down, unless level 0 is far enough behind for writers to wait the longest. (One
    // segment a turn was not enough: each level-0 compaction adds a few segments' worth to
    // level 1, which grew to 2-3 times its budget over a 20 M-message ingest.)
    let level1_over = level_bytes(segs, 1) > level_budget(opts, 1);
    if level == 0
        && cursors.level0_last
        && level1_over
        && l0.len() < opts.l0_trigger.saturating_mul(LEVEL0_YIELDS_BELOW)
    {
        level = 1;
    }
    cursors.level0_last = level == 0;
    if level == 0 {
        if tiering && raw.len() >= opts.l0_trigger {
            let mut inputs: Vec<u64> = raw.iter().map(|s| s.number).collect();
            inputs.sort_unstable();
            return Some(Pick {
                inputs,
                output_level: 0,
                // Older data (earlier runs, level 1 and below) may hold what a tombstone hides.
                drop_tombstones: false,
                shared_blocks: SharedBlocks::FlushCodec,
            });
        }
        let mut inputs = l0.clone();
        inputs.extend(overlapping(segs, 1, &l0));
        let mut pick = finish(inputs, 1, segs);
        if !opts.quiet {
            pick.shared_blocks = SharedBlocks::Fast;
        }
        return Some(pick);
    }
    // Round-robin: the first segment after where this level's last compaction started.
    let mut in_level: Vec<&SegmentMeta> = segs.iter().filter(|s| s.level == level).collect();
    in_level.sort_by_key(|s| range_start(s));
    let cursor = &mut cursors.after[level as usize];
    let first = in_level
        .iter()
        .position(|s| cursor.as_ref().is_none_or(|c| range_start(s) > *c))
        .unwrap_or(0);
    // From there, neighbours in key order (never wrapping, so the range stays contiguous and
    // the level below keeps disjoint segments) until the level's excess over its budget is
    // taken, at most a budget's worth: one job moves what the level must shed.
    let excess = level_bytes(segs, level).saturating_sub(level_budget(opts, level));
    let most = level_budget(opts, level);
    let mut chosen: Vec<&SegmentMeta> = Vec::new();
    let mut bytes = 0u64;
    for s in in_level.iter().skip(first) {
        if !chosen.is_empty() && (bytes >= excess || bytes.saturating_add(s.bytes) > most) {
            break;
        }
        chosen.push(s);
        bytes = bytes.saturating_add(s.bytes);
    }
    let last = chosen.last().copied()?;
    *cursor = Some(range_start(last));
    // `level` < LAST_LEVEL (the loop above), so the next level exists.
    let below = level.saturating_add(1).min(LAST_LEVEL);
    let mut inputs = chosen.clone();
    inputs.extend(overlapping(segs, below, &chosen));
    Some(finish(inputs, below, segs))
}

/// When nothing else is due (and the store is quiet): rewrite the provisional part of level 0
/// in the store's codec, as one level-0 segment, without touching level 1 (folding it into
/// level 1 waits until that is cheap). Costs only level-0 bytes; a store at rest so holds no
/// segment in the flush's codec. The caller gives the output a number above every input's.
pub fn pick_level0_rewrite(segs: &[SegmentMeta]) -> Option<Pick> {
    let inputs = level0_rewrite_inputs(segs);
    if inputs.is_empty() {
        return None;
    }
    let mut numbers: Vec<u64> = inputs.iter().map(|s| s.number).collect();
    numbers.sort_unstable();
    Some(Pick {
        inputs: numbers,
        output_level: 0,
        // Older data (the rest of level 0, level 1 and below) may hold what a tombstone hides.
        drop_tombstones: false,
        shared_blocks: SharedBlocks::StoreCodec,
    })
}

/// When nothing else is due (and the store is quiet): a level-1 segment written under writes
/// with its shared blocks in a fast codec (see [`SharedBlocks::Fast`]), rewritten alone within
/// level 1 in the store's codec. One segment a pick, so writes that resume find at most one
/// such rewrite under way. Costs that segment's bytes: level 1 holds disjoint ranges, so the
/// output covers exactly the input's.
pub fn pick_level1_recompress(segs: &[SegmentMeta]) -> Option<Pick> {
    let s = segs
        .iter()
        .filter(|s| s.level == 1 && s.fast_shared_blocks)
        .min_by_key(|s| range_start(s))?;
    Some(finish(vec![s], 1, segs))
}

/// Size-tiered alternative (kept for comparison; see `docs/compaction.md`): each level is a
/// tier of whole runs, one segment per run; when a tier holds `l0_trigger` runs they are merged
/// into one run in the tier below. Less rewriting than leveled, more segments per read.
pub fn pick_tiered(segs: &[SegmentMeta], opts: &PickerOptions) -> Option<Pick> {
    for level in 0..LAST_LEVEL {
        let tier: Vec<&SegmentMeta> = segs.iter().filter(|s| s.level == level).collect();
        if tier.len() >= opts.l0_trigger {
            // Runs already in the tier below are older and may hold what a tombstone hides.
            let drop_tombstones = !segs
                .iter()
                .any(|s| s.level > level && s.state_keys.is_some());
            let mut inputs: Vec<u64> = tier.iter().map(|s| s.number).collect();
            inputs.sort_unstable();
            return Some(Pick {
                inputs,
                output_level: level.saturating_add(1),
                drop_tombstones,
                shared_blocks: SharedBlocks::StoreCodec,
            });
        }
    }
    None
}

/// A compaction of everything into one level: the deepest level in use (at least 1).
pub fn pick_all(segs: &[SegmentMeta]) -> Option<Pick> {
    if segs.is_empty() {
        return None;
    }
    let deepest = segs.iter().map(|s| s.level).max().unwrap_or(0).max(1);
    Some(finish(segs.iter().collect(), deepest, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(number: u64, level: u32, bytes: u64, conv: (u64, u64)) -> SegmentMeta {
        SegmentMeta {
            number,
            level,
            bytes,
            logical_bytes: bytes,
            conversations: Some(conv),
            state_keys: None,
            provisional: false,
            fast_shared_blocks: false,
        }
    }

    fn opts() -> PickerOptions {
        PickerOptions {
            l0_trigger: 4,
            level_base_bytes: 1000,
            quiet: true,
            level0_max_runs: RUNS,
        }
    }

    /// Runs level 0 may gather in these tests (the mechanism is off by default).
    const RUNS: usize = 4;

    #[test]
    fn level0_gathers_runs_until_they_weigh_a_quarter_of_level1() {
        let flushed = |number, bytes| SegmentMeta {
            provisional: true,
            ..seg(number, 0, bytes, (0, 100))
        };
        let run = |number, bytes| seg(number, 0, bytes, (0, 100));
        // Under writes (a quiet store folds flushed segments into level 1 early).
        let busy = PickerOptions {
            quiet: false,
            ..opts()
        };
        let mut segs = vec![seg(1, 1, 900, (0, 100))];
        let mut c = Cursors::default();
        for n in 10..13 {
            segs.push(flushed(n, 60));
            assert_eq!(pick(&segs, &busy, &mut c), None);
        }
        // A trigger's worth of flushed segments becomes one run within level 0.
        segs.push(flushed(13, 60));
        let p = pick(&segs, &busy, &mut c).unwrap();
        assert_eq!(
            (p.inputs.clone(), p.output_level),
            (vec![10, 11, 12, 13], 0)
        );
        assert!(!p.drop_tombstones);
        segs.retain(|s| !p.inputs.contains(&s.number));
        segs.push(run(20, 80));
        // The run waits: only flushed segments count towards the trigger meanwhile.
        for n in 21..24 {
            segs.push(flushed(n, 60));
            assert_eq!(pick(&segs, &busy, &mut c), None, "{n}");
        }
        segs.push(flushed(24, 60));
        let p = pick(&segs, &busy, &mut c).unwrap();
        assert_eq!(
            (p.inputs.clone(), p.output_level),
            (vec![21, 22, 23, 24], 0)
        );
        segs.retain(|s| !p.inputs.contains(&s.number));
        segs.push(run(30, 180));
        // Runs of 260 bytes against level 1's 900: past a quarter, everything goes down.
        for n in 31..35 {
            segs.push(flushed(n, 60));
        }
        let p = pick(&segs, &busy, &mut c).unwrap();
        assert_eq!(p.output_level, 1);
        assert_eq!(p.inputs, vec![1, 20, 30, 31, 32, 33, 34]);

        // At most `level0_max_runs` runs wait, however small.
        let mut segs = vec![seg(1, 1, 900, (0, 100))];
        segs.extend((0..RUNS as u64).map(|i| run(10 + i, 10)));
        segs.extend((20..24).map(|n| flushed(n, 10)));
        let p = pick(&segs, &busy, &mut Cursors::default()).unwrap();
        assert_eq!(p.output_level, 1);
        assert_eq!(p.inputs.len(), 1 + RUNS + 4);

        // Runs are weighed uncompressed: one whose file is large for its rows (shared blocks
        // in the flush's codec) waits as long as the same rows compressed would.
        let raw_run = SegmentMeta {
            logical_bytes: 200,
            ..run(10, 600)
        };
        let mut segs = vec![seg(1, 1, 900, (0, 100)), raw_run];
        segs.extend((20..24).map(|n| flushed(n, 10)));
        let p = pick(&segs, &busy, &mut Cursors::default()).unwrap();
        assert_eq!((p.output_level, p.inputs), (0, vec![20, 21, 22, 23]));
    }

    #[test]
    fn level0_waits_for_its_trigger_then_takes_overlapping_level1() {
        let mut segs = vec![
            seg(1, 1, 100, (0, 10)),
            seg(2, 1, 100, (11, 20)),
            seg(3, 1, 100, (500, 900)),
        ];
        let mut c = Cursors::default();
        // Under writes (at rest, level 0 is folded in early once it weighs a quarter of
        // level 1).
        let busy = PickerOptions {
            quiet: false,
            ..opts()
        };
        for n in 10..13 {
            segs.push(seg(n, 0, 50, (5, 15)));
            assert_eq!(pick(&segs, &busy, &mut c), None);
        }
        segs.push(seg(13, 0, 50, (0, 12)));
        let p = pick(&segs, &busy, &mut c).unwrap();
        assert_eq!(p.inputs, vec![1, 2, 10, 11, 12, 13]);
        assert_eq!(p.output_level, 1);
        assert!(p.drop_tombstones);
        assert_eq!(p.shared_blocks, SharedBlocks::Fast, "level 1 under writes");
        let quiet = pick(&segs, &opts(), &mut Cursors::default()).unwrap();
        assert_eq!(quiet.inputs, p.inputs);
        assert_eq!(quiet.shared_blocks, SharedBlocks::StoreCodec, "at rest");
    }

    #[test]
    fn without_runs_level0_goes_into_level1_at_every_trigger() {
        let busy = PickerOptions {
            quiet: false,
            level0_max_runs: 0,
            ..opts()
        };
        let mut segs = vec![seg(1, 1, 900, (0, 100))];
        for n in 10..14 {
            segs.push(SegmentMeta {
                provisional: true,
                ..seg(n, 0, 10, (0, 100))
            });
        }
        let p = pick(&segs, &busy, &mut Cursors::default()).unwrap();
        assert_eq!(p.inputs, vec![1, 10, 11, 12, 13]);
        assert_eq!(p.output_level, 1);
        assert_eq!(p.shared_blocks, SharedBlocks::Fast);
        // With runs allowed, the same level 0 makes a run within itself first.
        let runs = PickerOptions {
            level0_max_runs: RUNS,
            ..busy
        };
        let p = pick(&segs, &runs, &mut Cursors::default()).unwrap();
        assert_eq!(p.output_level, 0);
        assert_eq!(p.shared_blocks, SharedBlocks::FlushCodec);
    }

    #[test]
    fn at_rest_level1_segments_with_fast_shared_blocks_are_rewritten_one_at_a_time() {
        let fast = |number, conv| SegmentMeta {
            fast_shared_blocks: true,
            ..seg(number, 1, 100, conv)
        };
        let mut segs = vec![
            seg(1, 2, 900, (0, 100)),
            fast(3, (50, 100)),
            seg(4, 1, 100, (101, 200)),
            fast(2, (0, 49)),
        ];
        // Owed a rewrite, whatever the budget.
        assert_eq!(pending_bytes(&segs, &opts()), 200);
        let first = pick_level1_recompress(&segs).unwrap();
        assert_eq!(first.inputs, vec![2], "lowest range first");
        assert_eq!(first.output_level, 1);
        assert_eq!(first.shared_blocks, SharedBlocks::StoreCodec);
        assert!(first.drop_tombstones, "no state below");
        segs.retain(|s| s.number != 2);
        segs.push(seg(5, 1, 100, (0, 49)));
        assert_eq!(pick_level1_recompress(&segs).unwrap().inputs, vec![3]);
        segs.retain(|s| s.number != 3);
        assert_eq!(pick_level1_recompress(&segs), None);
        assert_eq!(pending_bytes(&segs, &opts()), 0);
        // Level 0's runs with fast shared blocks are folded by `pick`, not rewritten here.
        segs.push(SegmentMeta {
            fast_shared_blocks: true,
            ..seg(6, 0, 10, (0, 10))
        });
        assert_eq!(pick_level1_recompress(&segs), None);
    }

    #[test]
    fn an_oversized_level_compacts_round_robin_into_the_next() {
        let segs = vec![
            seg(1, 1, 600, (0, 10)),
            seg(2, 1, 600, (11, 20)),
            seg(3, 2, 100, (5, 12)),
            seg(4, 2, 100, (30, 40)),
        ];
        let mut c = Cursors::default();
        let first = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(first.inputs, vec![1, 3]);
        assert_eq!(first.output_level, 2);
        let second = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(second.inputs, vec![2, 3]);
        let third = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(third.inputs, vec![1, 3], "wraps around");
    }

    #[test]
    fn level1_over_budget_gets_a_turn_between_level0_compactions() {
        // Level 1 at 1.5 times its budget, level 0 at twice its trigger: level 0 scores higher.
        let mut segs = vec![seg(1, 1, 750, (0, 10)), seg(2, 1, 750, (11, 20))];
        segs.extend((10..18).map(|n| seg(n, 0, 50, (0, 20))));
        let mut c = Cursors::default();
        let first = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(first.output_level, 1);
        let second = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(
            second.output_level, 2,
            "level 1 drains after a level-0 compaction"
        );
        let third = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(third.output_level, 1, "then level 0 again");
        // Far behind (where writers wait the longest), level 0 keeps the turn.
        segs.extend((20..76).map(|n| seg(n, 0, 50, (0, 20))));
        let mut c = Cursors::default();
        for _ in 0..3 {
            assert_eq!(pick(&segs, &opts(), &mut c).unwrap().output_level, 1);
        }
    }

    #[test]
    fn level1_sheds_its_excess_in_one_contiguous_job() {
        // Level 1 at 2.4 times its budget: its turn takes neighbours from the cursor on, up to
        // a budget's worth, and the level-2 segments under them.
        let mut segs: Vec<SegmentMeta> = (0..6)
            .map(|i| seg(1 + i, 1, 400, (i * 100, i * 100 + 99)))
            .collect();
        segs.push(seg(20, 2, 5000, (0, 150)));
        segs.push(seg(21, 2, 5000, (151, 600)));
        let mut c = Cursors::default();
        let p = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(p.output_level, 2);
        assert_eq!(p.inputs, vec![1, 2, 20, 21]);
        let next = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(
            next.inputs,
            vec![3, 4, 21],
            "the next job goes on from there"
        );
        // The last segments of the level: no wrapping into the first ones.
        let last = pick(&segs, &opts(), &mut c).unwrap();
        assert_eq!(last.inputs, vec![5, 6, 21]);
    }

    #[test]
    fn tombstones_stay_while_older_state_lies_below() {
        let mut deep = seg(9, 3, 10, (0, 1));
        deep.state_keys = Some((Bytes::from_static(b"a"), Bytes::from_static(b"z")));
        let mut segs = vec![deep];
        for n in 1..=4 {
            segs.push(seg(n, 0, 10, (0, 5)));
        }
        let p = pick(&segs, &opts(), &mut Cursors::default()).unwrap();
        assert!(!p.drop_tombstones);
        let all = pick_all(&segs).unwrap();
        assert_eq!(all.output_level, 3);
        assert!(all.drop_tombstones);
    }

    #[test]
    fn tiers_merge_when_full() {
        let mut segs: Vec<SegmentMeta> = (1..=3).map(|n| seg(n, 0, 10, (0, 9))).collect();
        assert_eq!(pick_tiered(&segs, &opts()), None);
        segs.push(seg(4, 0, 10, (0, 9)));
        segs.push(seg(9, 1, 40, (0, 9)));
        let p = pick_tiered(&segs, &opts()).unwrap();
        assert_eq!(p.inputs, vec![1, 2, 3, 4]);
        assert_eq!(p.output_level, 1);
    }

    #[test]
    fn pending_bytes_counts_what_is_over_budget() {
        let segs = vec![seg(1, 1, 1500, (0, 1)), seg(2, 0, 10, (0, 1))];
        assert_eq!(pending_bytes(&segs, &opts()), 500);
        assert_eq!(level_budget(&opts(), 3), 100_000);
    }

    #[test]
    fn at_rest_runs_made_within_level0_are_folded_into_level1_once_they_weigh_a_quarter() {
        let mut c = Cursors::default();
        let busy = PickerOptions {
            quiet: false,
            ..opts()
        };
        // A run that weighs a quarter of level 1: folded in at rest, left under writes.
        let heavy = vec![seg(1, 1, 800, (0, 100)), seg(5, 0, 200, (0, 100))];
        let p = pick(&heavy, &opts(), &mut c).unwrap();
        assert_eq!((p.inputs, p.output_level), (vec![1, 5], 1));
        assert_eq!(pick(&heavy, &busy, &mut c), None);
        // Counted as pending either way: a store is settled once it is done.
        assert_eq!(pending_bytes(&heavy, &busy), 200);
        // Lighter: rewriting level 1 for it is not worth it yet.
        let light = vec![seg(1, 1, 900, (0, 100)), seg(5, 0, 200, (0, 100))];
        assert_eq!(pick(&light, &opts(), &mut c), None);
        assert_eq!(pending_bytes(&light, &opts()), 0);
        // Alone in the store, a run has nothing to be folded into.
        let alone = vec![seg(5, 0, 200, (0, 100))];
        assert_eq!(pick(&alone, &opts(), &mut c), None);
    }

    #[test]
    fn provisional_level0_is_folded_in_below_the_trigger_only_while_cheap() {
        let provisional = |number, bytes| SegmentMeta {
            provisional: true,
            ..seg(number, 0, bytes, (1, 100))
        };
        let mut cursors = Cursors::default();
        // A small store: everything in one fast-codec level-0 segment.
        let small = vec![provisional(1, 100)];
        assert!(pending_bytes(&small, &opts()) > 0);
        let p = pick(&small, &opts(), &mut cursors).unwrap();
        assert_eq!((p.inputs, p.output_level), (vec![1], 1));
        // A big level 1: rewriting it for one small level-0 segment is not worth it.
        let big = vec![seg(1, 1, 900, (1, 100)), provisional(2, 100)];
        assert_eq!(pick(&big, &opts(), &mut cursors), None);
        // Segments already in the store's codec never trigger it.
        let done = vec![seg(1, 0, 100, (1, 100))];
        assert_eq!(pick(&done, &opts(), &mut cursors), None);
        assert_eq!(pick_level0_rewrite(&done), None);
        assert_eq!(pending_bytes(&done, &opts()), 0);
    }

    #[test]
    fn at_rest_provisional_level0_is_rewritten_within_level0() {
        let provisional = |number, bytes| SegmentMeta {
            provisional: true,
            ..seg(number, 0, bytes, (1, 100))
        };
        // Level 1 is too big to fold into, so the rewrite stays in level 0 and takes the
        // provisional segments and everything newer, but nothing older.
        let segs = vec![
            seg(1, 1, 900, (1, 100)),
            seg(3, 0, 50, (1, 100)),
            provisional(5, 100),
            seg(7, 0, 60, (1, 100)),
        ];
        assert_eq!(pick(&segs, &opts(), &mut Cursors::default()), None);
        assert_eq!(pending_bytes(&segs, &opts()), 160);
        let p = pick_level0_rewrite(&segs).unwrap();
        assert_eq!(
            (p.inputs, p.output_level, p.drop_tombstones),
            (vec![5, 7], 0, false)
        );
    }
}
