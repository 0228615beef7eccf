//! The static table and the observer's model of the dynamic table (RFC 7541 §2.3, §4).
//!
//! The model is a list of the insertions tracked since the state was last known to be exact, newest
//! first, each either known (name and value) or a placeholder whose content is unknown, possibly
//! followed by an *unknown tail* of older entries whose number and content are unknown. On top of the
//! content, the model keeps what is certain about presence:
//!
//! - `certain` newest slots are present for sure (all of them known entries); the slots after them
//!   may already have been evicted by an encoder whose maximum size was unknown when they were
//!   inserted. An index into them still refers to them if the encoder is valid, so they still
//!   resolve; they only stop the table from counting as fully known.
//! - `max_size` is the current maximum size when known (it only changes through dynamic table size
//!   updates, which are all seen since tracking began), and `size_limit` an upper bound on it when
//!   the advertised settings are known.
//!
//! Sizes give proofs of eviction: the table holds a contiguous run of the newest insertions whose
//! total size is at most the maximum, and every entry takes at least 32 bytes (a placeholder at
//! least 32 plus its value). So a tracked slot whose running lower-bound total from the newest slot
//! exceeds the maximum is gone, together with everything older; and when the whole tracked list plus
//! one more 32-byte entry would exceed the maximum, the unknown tail is gone. These are the only ways
//! the model forgets anything besides the memory cap, which drops the oldest slots into the unknown
//! tail.

use std::collections::VecDeque;

use bytes::Bytes;

/// Per-entry overhead counted by the size of an entry (RFC 7541 §4.1).
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// Memory counted for each tracked slot besides its name and value bytes: the slot itself plus the
/// header of a shared allocation (an estimate; names from the static table allocate nothing).
pub(super) const SLOT_MEMORY: usize = std::mem::size_of::<Slot>() + 32;

/// Most placeholders kept; older slots beyond them go to the unknown tail. A table with the default
/// maximum of 4096 bytes holds at most 128 entries, so this costs nothing for ordinary encoders.
/// (The memory cap bounds the slots as well; this bounds them more tightly where nothing is known.)
pub(super) const MAX_PLACEHOLDERS: usize = 512;

/// The static table (RFC 7541 Appendix A); index `i` of the wire is `STATIC_TABLE[i - 1]`.
pub(super) const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// A known dynamic table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) name: Bytes,
    pub(super) value: Bytes,
}

impl Entry {
    /// The entry's size as RFC 7541 §4.1 counts it.
    fn size(&self) -> usize {
        self.name.len().saturating_add(self.value.len()).saturating_add(ENTRY_OVERHEAD)
    }
}

/// One tracked insertion.
#[derive(Debug, Clone)]
enum Slot {
    Known(Entry),
    /// An insertion whose content is unknown (its name came from an unknown entry); its size is at
    /// least `min_size`.
    Placeholder {
        min_size: usize,
    },
}

impl Slot {
    /// A lower bound of the entry's size (exact for a known entry).
    fn min_size(&self) -> usize {
        match self {
            Slot::Known(entry) => entry.size(),
            Slot::Placeholder { min_size } => *min_size,
        }
    }

    /// Bytes this slot accounts for in [`Table::memory`].
    fn memory(&self) -> usize {
        match self {
            Slot::Known(entry) => {
                entry.name.len().saturating_add(entry.value.len()).saturating_add(SLOT_MEMORY)
            }
            Slot::Placeholder { .. } => SLOT_MEMORY,
        }
    }
}

/// What a dynamic table index refers to.
#[derive(Debug)]
pub(super) enum Lookup<'a> {
    Known(&'a Entry),
    /// An entry exists there (if the encoder is valid) but its content is unknown.
    Unknown,
    /// The table provably has no entry there.
    Missing,
}

/// The observer's model of one direction's dynamic table.
#[derive(Debug, Clone)]
pub(super) struct Table {
    /// Tracked insertions, newest first.
    slots: VecDeque<Slot>,
    /// The `certain` newest slots are known entries present for sure.
    certain: usize,
    /// Whether entries older than the tracked slots may still be in the table.
    unknown_tail: bool,
    /// The current maximum size, when known.
    max_size: Option<usize>,
    /// An upper bound on the maximum size, when known.
    size_limit: Option<usize>,
    /// Sum of the slots' lower-bound sizes.
    min_total: usize,
    /// Sum of the slots' [`Slot::memory`].
    memory: usize,
    /// Number of placeholder slots.
    placeholders: usize,
    /// Most bytes of [`Table::memory`] held at once.
    memory_cap: usize,
}

impl Table {
    /// An empty table whose maximum size is `max_size`: the state of a connection seen from its start.
    pub(super) fn known(max_size: usize, memory_cap: usize) -> Self {
        let mut table = Self::unknown(memory_cap);
        table.unknown_tail = false;
        table.max_size = Some(max_size);
        table.settle();
        table
    }

    /// A table of which nothing is known.
    pub(super) fn unknown(memory_cap: usize) -> Self {
        Table {
            slots: VecDeque::new(),
            certain: 0,
            unknown_tail: true,
            max_size: None,
            size_limit: None,
            min_total: 0,
            memory: 0,
            placeholders: 0,
            memory_cap,
        }
    }

    /// Forgets every entry: they all become part of the unknown tail, and the maximum size is unknown.
    pub(super) fn lose_state(&mut self) {
        self.slots.clear();
        self.certain = 0;
        self.unknown_tail = true;
        self.max_size = None;
        self.min_total = 0;
        self.memory = 0;
        self.placeholders = 0;
    }

    /// Sets the most bytes held at once.
    pub(super) fn set_memory_cap(&mut self, memory_cap: usize) {
        self.memory_cap = memory_cap;
        self.settle();
    }

    /// Sets the known upper bound on the maximum size (`None`: unknown).
    pub(super) fn set_size_limit(&mut self, limit: Option<usize>) {
        self.size_limit = limit;
        self.settle();
    }

    /// The entry at dynamic index `position` (0 is the newest entry, wire index 62).
    pub(super) fn get(&self, position: usize) -> Lookup<'_> {
        match self.slots.get(position) {
            Some(Slot::Known(entry)) => Lookup::Known(entry),
            Some(Slot::Placeholder { .. }) => Lookup::Unknown,
            None if self.unknown_tail => Lookup::Unknown,
            None => Lookup::Missing,
        }
    }

    /// Number of tracked slots.
    pub(super) fn tracked(&self) -> usize {
        self.slots.len()
    }

    /// Inserts a known entry (RFC 7541 §4.4).
    pub(super) fn insert(&mut self, name: Bytes, value: Bytes) {
        let slot = Slot::Known(Entry { name, value });
        self.push(slot);
        if self.max_size.is_some() {
            // With a known maximum, the new entry is present unless it alone exceeds the maximum (which
            // `settle` then proves), and the certain entries before it stay exactly as long as their
            // exact total allows: the encoder evicts the uncertain older entries first.
            self.certain = self.certain.saturating_add(1);
        }
        self.settle();
    }

    /// Inserts an entry whose content is unknown and whose size is at least `min_size`.
    pub(super) fn insert_placeholder(&mut self, min_size: usize) {
        self.push(Slot::Placeholder { min_size });
        // Whether the older entries survive this insertion depends on its unknown size.
        self.certain = 0;
        self.settle();
    }

    /// Applies a dynamic table size update (RFC 7541 §4.3, §6.3).
    pub(super) fn set_max_size(&mut self, max_size: usize) {
        // A first known maximum says nothing about which slots survived the unknown one before it, so
        // `certain` (0 while the maximum was unknown) stays as it is.
        self.max_size = Some(max_size);
        self.settle();
    }

    /// Whether the model is exact: every entry present is known and every known entry is present.
    pub(super) fn fully_known(&self) -> bool {
        self.max_size.is_some() && !self.unknown_tail && self.certain == self.slots.len()
    }

    /// Bytes held: names and values plus [`SLOT_MEMORY`] per slot.
    pub(super) fn memory(&self) -> usize {
        self.memory
    }

    /// The table's size when fully known.
    #[cfg(test)]
    pub(super) fn size(&self) -> Option<usize> {
        self.fully_known().then_some(self.min_total)
    }

    /// The current maximum size, when known.
    #[cfg(test)]
    pub(super) fn max_size(&self) -> Option<usize> {
        self.max_size
    }

    /// The tracked slots, newest first (`None` for a placeholder).
    #[cfg(test)]
    pub(super) fn entries(&self) -> Vec<Option<(Bytes, Bytes)>> {
        self.slots
            .iter()
            .map(|slot| match slot {
                Slot::Known(entry) => Some((entry.name.clone(), entry.value.clone())),
                Slot::Placeholder { .. } => None,
            })
            .collect()
    }

    fn push(&mut self, slot: Slot) {
        self.min_total = self.min_total.saturating_add(slot.min_size());
        self.memory = self.memory.saturating_add(slot.memory());
        if matches!(slot, Slot::Placeholder { .. }) {
            self.placeholders += 1;
        }
        self.slots.push_front(slot);
    }

    fn pop_oldest(&mut self) {
        if let Some(slot) = self.slots.pop_back() {
            self.min_total = self.min_total.saturating_sub(slot.min_size());
            self.memory = self.memory.saturating_sub(slot.memory());
            if matches!(slot, Slot::Placeholder { .. }) {
                self.placeholders = self.placeholders.saturating_sub(1);
            }
        }
        self.certain = self.certain.min(self.slots.len());
    }

    /// Applies every eviction that can be proven, then the memory bounds.
    fn settle(&mut self) {
        if let Some(bound) = self.max_size.or(self.size_limit) {
            if self.min_total > bound {
                // The running lower-bound total is monotonic: popping while it exceeds the bound
                // removes exactly the slots from the first one that cannot fit, and everything older.
                while self.min_total > bound && !self.slots.is_empty() {
                    self.pop_oldest();
                }
                self.unknown_tail = false;
            } else if self.unknown_tail && self.min_total.saturating_add(ENTRY_OVERHEAD) > bound {
                // An older entry could only be present together with every tracked one.
                self.unknown_tail = false;
            }
        }
        while self.memory > self.memory_cap || self.placeholders > MAX_PLACEHOLDERS {
            if self.slots.is_empty() {
                break;
            }
            self.pop_oldest();
            self.unknown_tail = true;
        }
    }
}
