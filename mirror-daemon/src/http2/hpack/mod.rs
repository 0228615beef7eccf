//! HPACK (RFC 7541) header block decoding for an observer of HTTP/2 connections.
//!
//! The daemon decodes header blocks of connections it is not part of, so unlike an endpoint it cannot
//! assume it has seen every block since the connection started:
//!
//! - it may start watching a connection that has been open for hours, whose dynamic table holds
//!   entries inserted before capture began;
//! - it may lose a block (a dropped packet) or give one up (too large), after which the table state
//!   is no longer known.
//!
//! Both cases lead to the *partial* state. HPACK indexes the dynamic table from the newest entry:
//! index 62 is the most recent insertion, 62 + k the k-th most recent if it still exists. So every
//! insertion seen since the state was lost keeps a known position, whatever the older unknown entries
//! are, and eviction only ever removes entries from the old end, which never changes what a valid
//! index refers to. In the partial state the decoder therefore tracks insertions (newest first, each
//! known or, when its name came from an unknown entry, a placeholder of unknown content) in front of
//! an unknown tail: references into the tracked part decode exactly, references to placeholders or
//! beyond are reported as unresolved, and nothing is ever guessed. Sizes still bound the table, so
//! eviction proofs (see `table.rs`) let the decoder drop what is provably gone, and become fully known
//! again once everything that is left is proven exact. A fixed memory cap bounds what is held
//! whatever table size the encoder announces; beyond it, the oldest tracked entries become unknown.
//!
//! Blocks are decoded strictly (RFC 7541 §5, §6 and Appendix B): malformed integers, strings,
//! Huffman codes, indices and misplaced or oversized table size updates are errors, after which the
//! decoder switches to the partial state by itself.

mod huffman;
mod table;
#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};

use self::table::{ENTRY_OVERHEAD, Lookup, STATIC_TABLE, Table};

/// The dynamic table's initial maximum size (RFC 9113 §6.5.2, SETTINGS_HEADER_TABLE_SIZE).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Default bound on the bytes one decoder's table model holds (see [`Decoder::memory`]).
pub const DEFAULT_MEMORY_CAP: usize = 64 * 1024;

/// Fields allocated up front for a list.
const FIELDS_PREALLOCATED: usize = 16;

/// Number of entries of the static table (RFC 7541 Appendix A).
const STATIC_ENTRIES: usize = STATIC_TABLE.len();

/// One decoded header field (name and value as on the wire, after Huffman decoding).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    /// The field name.
    pub name: Bytes,
    /// The field value.
    pub value: Bytes,
}

/// Bounds on one header list (RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE semantics: each field counts
/// its name and value lengths plus 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of the list, counted as name + value + 32 per field.
    pub max_list_size: usize,
    /// Most field lines of the list.
    pub max_fields: usize,
}

/// The result of decoding one header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Fields in order, excluding unresolved ones.
    pub fields: Vec<Field>,
    /// Field lines whose name or value refers to a table entry whose content is unknown.
    pub unresolved: usize,
    /// The list exceeded the [`Limits`]: `fields` holds only the fields before the limit was reached,
    /// but the table state is still exact (the whole block was processed for its insertions).
    pub over_limit: bool,
}

/// Why a header block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// An integer (index, length or size) above `u32::MAX`, or with too many continuation bytes.
    #[error("HPACK integer does not fit in 32 bits")]
    IntegerOverflow,
    /// The block ends inside an integer or before a field line's value.
    #[error("header block ends in the middle of a field line")]
    Truncated,
    /// A string literal's length runs past the end of the block.
    #[error("string literal of {claimed} bytes is longer than the {remaining} bytes left in the block")]
    StringPastEnd { claimed: usize, remaining: usize },
    /// Index 0 in an indexed field line.
    #[error("field line refers to index 0, which is not a table index")]
    ZeroIndex,
    /// An index past the last entry, when the table provably has no entry there.
    #[error("index {index} is beyond the table ({dynamic} dynamic entries)")]
    IndexBeyondTable { index: usize, dynamic: usize },
    /// A Huffman-coded string containing the EOS symbol.
    #[error("Huffman-coded string contains the EOS symbol")]
    HuffmanEos,
    /// A Huffman-coded string whose padding is longer than 7 bits or not all ones.
    #[error("Huffman-coded string ends with padding longer than 7 bits or not all ones")]
    HuffmanPadding,
    /// A dynamic table size update above the largest size the decoding endpoint advertised.
    #[error("dynamic table size update to {size} exceeds the advertised limit of {limit}")]
    SizeUpdateTooLarge { size: usize, limit: usize },
    /// A dynamic table size update after the first field line of a block.
    #[error("dynamic table size update after a field line of the block")]
    SizeUpdateNotAtStart,
}

/// Decodes the header blocks of one direction of one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    table: Table,
    /// Bound on dynamic table size updates: the largest SETTINGS_HEADER_TABLE_SIZE advertised by the
    /// decoding endpoint, when every advertisement has been seen; `None` for a connection joined in
    /// progress, whose earlier SETTINGS may have been missed.
    size_update_limit: Option<usize>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// The table is known from the connection's start: empty, max size 4096.
    pub fn new() -> Self {
        let mut decoder = Decoder {
            table: Table::known(DEFAULT_TABLE_SIZE, DEFAULT_MEMORY_CAP),
            size_update_limit: Some(DEFAULT_TABLE_SIZE),
        };
        decoder.table.set_size_limit(decoder.size_update_limit);
        decoder
    }

    /// Joining a connection in progress: every entry already in the table is unknown, and so is the
    /// limit on table size updates (the SETTINGS that set it may predate the capture), so size updates
    /// are not checked against it.
    pub fn mid_stream() -> Self {
        Decoder { table: Table::unknown(DEFAULT_MEMORY_CAP), size_update_limit: None }
    }

    /// Sets the bound on the bytes held by the table model (default [`DEFAULT_MEMORY_CAP`]); entries
    /// beyond it become unknown.
    pub fn with_memory_cap(mut self, memory_cap: usize) -> Self {
        self.table.set_memory_cap(memory_cap);
        self
    }

    /// A decoder known from the start whose table has the initial maximum `max_size` (RFC 7541's
    /// examples assume 256 without a size update).
    #[cfg(test)]
    fn with_initial_max_size(max_size: usize) -> Self {
        let limit = max_size.max(DEFAULT_TABLE_SIZE);
        let mut table = Table::known(max_size, DEFAULT_MEMORY_CAP);
        table.set_size_limit(Some(limit));
        Decoder { table, size_update_limit: Some(limit) }
    }

    /// The decoding endpoint advertised SETTINGS_HEADER_TABLE_SIZE = `size`. Passively this cannot be
    /// ordered reliably against the other direction, so the bound applied to dynamic table size
    /// updates is the largest size advertised so far (at least 4096). Ignored by a decoder created
    /// with [`Decoder::mid_stream`], which cannot know what was advertised before the capture.
    pub fn advertised_table_size(&mut self, size: u32) {
        if let Some(limit) = &mut self.size_update_limit {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            *limit = (*limit).max(size);
            self.table.set_size_limit(Some(*limit));
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION fragments already joined, padding
    /// removed). On `Err`, the table state is unknown afterwards (the decoder has already switched to
    /// the partial state itself); the next blocks still decode what can be proven.
    pub fn decode(&mut self, block: &[u8], limits: &Limits) -> Result<Decoded, HpackError> {
        let result = self.decode_block(block, limits);
        if result.is_err() {
            self.table.lose_state();
        }
        result
    }

    /// A block of this direction was lost or skipped: the table state is no longer known.
    pub fn lose_state(&mut self) {
        self.table.lose_state();
    }

    /// Whether every entry of the table is known (false after [`Decoder::mid_stream`] or
    /// [`Decoder::lose_state`] until proven otherwise by size updates and evictions).
    pub fn fully_known(&self) -> bool {
        self.table.fully_known()
    }

    /// Bytes held by the table model, for the caller's memory accounting: names and values plus a
    /// fixed per-entry cost (about 100 bytes, the entry's own storage); never more than the cap.
    pub fn memory(&self) -> usize {
        self.table.memory()
    }

    fn decode_block(&mut self, block: &[u8], limits: &Limits) -> Result<Decoded, HpackError> {
        let mut input = Input { bytes: block };
        let mut strings = Strings::new(block.len());
        let mut list = ListBuilder::new(limits, block.len());
        let mut field_seen = false;
        while let Some(first) = input.byte() {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                field_seen = true;
                let index = input.integer(first, 7)?;
                match self.field(index)? {
                    Some((name, value)) => list.push(name, value),
                    None => list.push_unresolved(0),
                }
            } else if first & 0x40 != 0 {
                // Literal header field with incremental indexing (§6.2.1).
                field_seen = true;
                let index = input.integer(first, 6)?;
                let name = self.literal_name(index, &mut input, &mut strings)?;
                let value = input.string(&mut strings)?;
                match name {
                    Some(name) => {
                        let (name, value) = owned_entry(name, value);
                        self.table.insert(name.bytes.clone(), value.clone());
                        list.push(name.bytes, value);
                    }
                    None => {
                        let min_size = value.len().saturating_add(ENTRY_OVERHEAD);
                        self.table.insert_placeholder(min_size);
                        list.push_unresolved(value.len());
                    }
                }
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3), only before the first field line (§4.2).
                if field_seen {
                    return Err(HpackError::SizeUpdateNotAtStart);
                }
                let size = input.integer(first, 5)?;
                if let Some(limit) = self.size_update_limit
                    && size > limit
                {
                    return Err(HpackError::SizeUpdateTooLarge { size, limit });
                }
                self.table.set_max_size(size);
            } else {
                // Literal header field without indexing (0000, §6.2.2) or never indexed (0001,
                // §6.2.3): neither touches the table.
                field_seen = true;
                let index = input.integer(first, 4)?;
                let name = self.literal_name(index, &mut input, &mut strings)?;
                let value = input.string(&mut strings)?;
                match name {
                    Some(name) => list.push(name.bytes, value),
                    None => list.push_unresolved(value.len()),
                }
            }
        }
        Ok(list.finish())
    }

    /// The field at `index` of the static or dynamic table, `None` if its content is unknown.
    fn field(&self, index: usize) -> Result<Option<(Bytes, Bytes)>, HpackError> {
        match index {
            0 => Err(HpackError::ZeroIndex),
            1..=STATIC_ENTRIES => Ok(STATIC_TABLE
                .get(index - 1)
                .map(|(name, value)| (Bytes::from_static(name), Bytes::from_static(value)))),
            _ => match self.table.get(index - STATIC_ENTRIES - 1) {
                Lookup::Known(entry) => Ok(Some((entry.name.clone(), entry.value.clone()))),
                Lookup::Unknown => Ok(None),
                Lookup::Missing => Err(HpackError::IndexBeyondTable { index, dynamic: self.table.tracked() }),
            },
        }
    }

    /// The name of a literal field line: a string literal for index 0, else the indexed entry's name.
    fn literal_name(
        &self,
        index: usize,
        input: &mut Input<'_>,
        strings: &mut Strings,
    ) -> Result<Option<Name>, HpackError> {
        if index == 0 {
            Ok(Some(Name { bytes: input.string(strings)?, from_block: true }))
        } else {
            Ok(self.field(index)?.map(|(name, _)| Name { bytes: name, from_block: false }))
        }
    }
}

/// A field name and whether it lives in the block's string buffer.
struct Name {
    bytes: Bytes,
    from_block: bool,
}

/// Copies a literal name and value out of the block's string buffer into one allocation of their
/// own, so that the table does not keep the whole buffer alive (nor exceed its memory accounting).
fn owned_entry(name: Name, value: Bytes) -> (Name, Bytes) {
    if name.from_block {
        let mut buf = BytesMut::with_capacity(name.bytes.len().saturating_add(value.len()));
        buf.put_slice(&name.bytes);
        buf.put_slice(&value);
        let mut buf = buf.freeze();
        let value = buf.split_off(name.bytes.len());
        (Name { bytes: buf, from_block: false }, value)
    } else {
        (name, Bytes::copy_from_slice(&value))
    }
}

/// The unread rest of a header block.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// Reads an integer with an N-bit prefix (RFC 7541 §5.1) whose first byte is `first`. Values
    /// above `u32::MAX` are rejected, which also bounds the number of continuation bytes.
    fn integer(&mut self, first: u8, prefix_bits: u32) -> Result<usize, HpackError> {
        let mask = u8::MAX >> (8 - prefix_bits);
        let prefix = first & mask;
        if prefix < mask {
            return Ok(usize::from(prefix));
        }
        let mut value = u64::from(mask);
        let mut shift = 0u32;
        loop {
            let byte = self.byte().ok_or(HpackError::Truncated)?;
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            value += u64::from(byte & 0x7f) << shift;
            if value > u64::from(u32::MAX) {
                return Err(HpackError::IntegerOverflow);
            }
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        usize::try_from(value).map_err(|_| HpackError::IntegerOverflow)
    }

    /// Takes `len` bytes, checked against what is left before anything is allocated.
    fn take(&mut self, len: usize) -> Result<&'a [u8], HpackError> {
        if len > self.bytes.len() {
            return Err(HpackError::StringPastEnd { claimed: len, remaining: self.bytes.len() });
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    /// Reads a string literal (RFC 7541 §5.2).
    fn string(&mut self, strings: &mut Strings) -> Result<Bytes, HpackError> {
        let first = self.byte().ok_or(HpackError::Truncated)?;
        let len = self.integer(first, 7)?;
        let raw = self.take(len)?;
        if first & 0x80 != 0 { strings.huffman(raw) } else { Ok(strings.raw(raw)) }
    }
}

/// One buffer for all the strings of a block, allocated on first use with room for the most the
/// block's bytes can decode to; each string is split off it.
struct Strings {
    buf: BytesMut,
    capacity: usize,
}

impl Strings {
    fn new(block_len: usize) -> Self {
        Strings { buf: BytesMut::new(), capacity: huffman::max_decoded_len(block_len) }
    }

    fn reserve(&mut self, len: usize) {
        if self.buf.capacity().saturating_sub(self.buf.len()) < len {
            self.buf.reserve(len.max(self.capacity));
        }
    }

    fn raw(&mut self, raw: &[u8]) -> Bytes {
        self.reserve(raw.len());
        self.buf.put_slice(raw);
        self.buf.split().freeze()
    }

    fn huffman(&mut self, encoded: &[u8]) -> Result<Bytes, HpackError> {
        self.reserve(huffman::max_decoded_len(encoded.len()));
        huffman::decode(encoded, &mut self.buf)?;
        Ok(self.buf.split().freeze())
    }
}

/// Collects a header list within its [`Limits`].
struct ListBuilder<'a> {
    limits: &'a Limits,
    decoded: Decoded,
    /// Field lines so far, resolved or not.
    lines: usize,
    /// List size so far (known lengths + 32 per line).
    size: usize,
}

impl<'a> ListBuilder<'a> {
    fn new(limits: &'a Limits, block_len: usize) -> Self {
        // Every field line takes at least one byte; most lists have a few to a few tens of fields.
        let fields = Vec::with_capacity(block_len.min(FIELDS_PREALLOCATED));
        ListBuilder { limits, decoded: Decoded { fields, ..Decoded::default() }, lines: 0, size: 0 }
    }

    /// Counts one field line of `known_len` known bytes; false once the list is over its limits.
    fn count(&mut self, known_len: usize) -> bool {
        self.lines = self.lines.saturating_add(1);
        self.size = self.size.saturating_add(known_len).saturating_add(ENTRY_OVERHEAD);
        if self.lines > self.limits.max_fields || self.size > self.limits.max_list_size {
            self.decoded.over_limit = true;
        }
        !self.decoded.over_limit
    }

    fn push(&mut self, name: Bytes, value: Bytes) {
        if self.count(name.len().saturating_add(value.len())) {
            self.decoded.fields.push(Field { name, value });
        }
    }

    fn push_unresolved(&mut self, known_len: usize) {
        self.count(known_len);
        self.decoded.unresolved = self.decoded.unresolved.saturating_add(1);
    }

    fn finish(self) -> Decoded {
        self.decoded
    }
}
