//! Where each input of a merge holds a conversation, found by walking the inputs'
//! conversation indexes forward.
//!
//! A merge needs, for every conversation it meets, the id range each input holds of it (holes
//! between those ranges lie below a watermark). Searching every input's conversation index
//! anew for every conversation was ~10 % of a level-0 → level-1 merge's time on the chat
//! workload: half a million conversations, each searched for in every input, almost all
//! of them cache misses in indexes of megabytes. A merge meets conversations in key order and
//! the indexes are sorted the same way, so a cursor per input reads its conversation index a
//! partition at a time as the merge moves on (`IndexCursor`) and walks it: the merge asks for
//! every conversation any input holds, so an input's next entry is nearly always the one asked
//! for (found) or one after it (not there), one entry read per question. Searching instead,
//! even by interpolation within a partition of 128 entries, was ~6 % of the CPU time of a
//! sustained ingest.

use std::sync::Arc;

use crate::engine::version::Segment;
use crate::error::Result;
use crate::format::index_partitions::IndexCursor;
use crate::types::ConversationId;

/// One cursor per input of a merge, on its conversation index.
pub(crate) struct ConversationCursors<'a> {
    inputs: Vec<IndexCursor<'a>>,
}

impl<'a> ConversationCursors<'a> {
    /// Cursors on `inputs`, each reading its input's conversation index a partition at a time.
    pub(crate) fn open(inputs: &'a [Arc<Segment>]) -> Self {
        let inputs = inputs.iter().map(|s| s.reader.index_cursor()).collect();
        ConversationCursors { inputs }
    }

    /// Calls `each` with the (first, last) ids of `conv` in every input that holds it. Cheapest
    /// when called in conversation order, as a merge does; any order gives the right answer.
    pub(crate) fn ranges(
        &mut self,
        conv: ConversationId,
        mut each: impl FnMut(u64, u64),
    ) -> Result<()> {
        for index in &mut self.inputs {
            if let Some((first, last)) = index.conversation_range(conv)? {
                each(first, last);
            }
        }
        Ok(())
    }
}
