//! Streaming CSV validation for `COPY ... FROM STDIN (FORMAT csv)`, sans-I/O.
//!
//! An upload's body arrives in chunks of any size. [`CsvValidator::push`]
//! scans each chunk, appends every complete, valid *data* record to an output
//! buffer (ready to go out as COPY data) and keeps the incomplete record at the
//! end for the next chunk; [`CsvValidator::finish`] flushes the last record at
//! the end of the body. The first bad record stops everything with a
//! [`CsvError`] carrying its line number and the reason.
//!
//! # Accepted format
//!
//! RFC 4180 with UTF-8 text:
//!
//! - records end with LF or CRLF (both may be mixed); the last record may
//!   lack its line terminator;
//! - fields are separated by `,`; a field that starts with `"` is quoted:
//!   inside it `""` is a literal quote and `,`, CR and LF are data; after its
//!   closing quote only `,` or the end of the record may follow
//!   ([`CsvErrorKind::TextAfterClosingQuote`]); a `"` anywhere else in an
//!   unquoted field is [`CsvErrorKind::QuoteInUnquotedField`]; outside quotes
//!   a CR must be followed by LF ([`CsvErrorKind::BareCarriageReturn`]);
//! - the first record is the header ([`Header`]): it is not forwarded, its
//!   names are unquoted and trimmed and must be non-empty and distinct
//!   (compared exactly, case-sensitively); every data record must then have
//!   exactly as many fields as the header has columns;
//! - every record must be valid UTF-8; a byte-order mark at the very start of
//!   the input is skipped;
//! - an empty line (nothing before its LF or CRLF) between or after records
//!   is skipped: not forwarded, not counted. Consequently a one-column file
//!   cannot express a NULL by an empty line; write `""` for an empty string.
//!   An empty *first* line is [`CsvErrorKind::EmptyHeader`].
//!
//! This is stricter than PostgreSQL's own CSV reader, which quietly accepts
//! text around quotes (`a"b,c"d` is one field there): whatever passes here
//! splits into the same fields in PostgreSQL as it does here.
//!
//! # Output
//!
//! Each data record is appended to `out` byte for byte, followed by a single
//! LF: a CRLF terminator becomes LF and a last record without terminator
//! gets one, because PostgreSQL insists on one newline style per COPY
//! ("unquoted newline found in data") while uploads mix them. CR and LF
//! inside quoted fields are left alone. One record is rewritten: a record
//! consisting of exactly `\.` is sent as `"\."` (the same value): before
//! PostgreSQL 18 an unquoted `\.` line ends the COPY data and everything
//! after it would be dropped silently.
//!
//! # Line numbers
//!
//! Physical lines, 1-based: every LF of the input counts, those inside quoted
//! fields included (the header is line 1 unless it contains quoted
//! newlines). An error names the line where the bad record *starts*.
//!
//! # Which error
//!
//! Errors are checked byte by byte in input order, so the verdict does not
//! depend on how the input was split into chunks. Within a record:
//! structural errors (quotes, bare CR, [`CsvErrorKind::TooManyFields`] on the
//! comma that opens one field too many) and [`CsvErrorKind::RecordTooLong`]
//! (on the first data byte beyond the limit) fire at the byte that causes
//! them; UTF-8 and then the field count are checked when the record ends.
//! When an error is returned, `out` holds exactly the records before the bad
//! one, and every later call returns the same error.
//!
//! # Limits and cost
//!
//! A record may hold at most [`Limits::max_record_bytes`] bytes, not counting
//! its line terminator (quoted CR/LF count); the validator buffers at most
//! one record, so its memory stays bounded. Data records that lie inside
//! one chunk on one line (no quoted newline, no CR but a CRLF's) take a fast
//! path: a few `memchr`-class scans per line, one copy for a run of
//! LF-terminated lines. Everything else goes through the state machine, which
//! still skips plain bytes with `memchr2`/`memchr3`. Both apply the same
//! rules; the fast path hands anything doubtful to the state machine.

use std::collections::HashSet;
use std::fmt;

use bytes::{BufMut, BytesMut};
use memchr::{memchr, memchr2, memchr3};

/// UTF-8 byte-order mark, skipped at the very start of the input.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Per-record limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest record in bytes, line terminator not counted (default 64 KiB).
    pub max_record_bytes: usize,
    /// Most fields in a record, the header's included (default 64). Zero is
    /// treated as one.
    pub max_fields: usize,
}

impl Limits {
    pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;
    pub const DEFAULT_MAX_FIELDS: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: Self::DEFAULT_MAX_RECORD_BYTES,
            max_fields: Self::DEFAULT_MAX_FIELDS,
        }
    }
}

/// The first record: the column names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Field names of the first record in order, unquoted (`""` → `"`) and
    /// trimmed; otherwise as given (no case folding).
    pub columns: Vec<String>,
}

/// Why an upload was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    /// 1-based physical line where the bad record starts (the header is
    /// line 1).
    pub line: u64,
    pub reason: CsvErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvErrorKind {
    /// The record is not valid UTF-8.
    InvalidUtf8,
    /// The input ended inside a quoted field.
    UnterminatedQuote,
    /// A `"` inside a field that does not start with one.
    QuoteInUnquotedField,
    /// Something other than `,` or the end of the record after a closing
    /// quote.
    TextAfterClosingQuote,
    /// A data record whose field count differs from the header's.
    FieldCount { expected: usize, found: usize },
    /// The record exceeds [`Limits::max_record_bytes`].
    RecordTooLong,
    /// The record has more than [`Limits::max_fields`] fields.
    TooManyFields,
    /// No header: empty input, an empty first line, or only empty names.
    EmptyHeader,
    /// Two header columns with the same (trimmed) name.
    DuplicateColumn(String),
    /// A CR outside quotes that is not part of a CRLF line terminator.
    /// PostgreSQL rejects those ("unquoted carriage return found in data").
    BareCarriageReturn,
    /// A header column whose name is empty after trimming (1-based).
    EmptyColumnName { column: usize },
}

impl fmt::Display for CsvErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvErrorKind::InvalidUtf8 => f.write_str("invalid UTF-8"),
            CsvErrorKind::UnterminatedQuote => {
                f.write_str("quoted field not closed at the end of the input")
            }
            CsvErrorKind::QuoteInUnquotedField => f.write_str("'\"' inside an unquoted field"),
            CsvErrorKind::TextAfterClosingQuote => {
                f.write_str("text after the closing quote of a field")
            }
            CsvErrorKind::FieldCount { expected, found } => {
                write!(f, "expected {expected} fields, found {found}")
            }
            CsvErrorKind::RecordTooLong => f.write_str("record too long"),
            CsvErrorKind::TooManyFields => f.write_str("too many fields"),
            CsvErrorKind::EmptyHeader => f.write_str("missing or empty header"),
            CsvErrorKind::DuplicateColumn(name) => write!(f, "duplicate column {name:?}"),
            CsvErrorKind::BareCarriageReturn => {
                f.write_str("carriage return outside quotes not followed by a line feed")
            }
            CsvErrorKind::EmptyColumnName { column } => {
                write!(f, "header column {column} has an empty name")
            }
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for CsvError {}

/// What one call to [`CsvValidator::push`] or [`CsvValidator::finish`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The header record completed during this call.
    pub header_ready: bool,
    /// Data records appended to `out` by this call.
    pub records: u64,
    /// Bytes appended to `out` by this call.
    pub bytes: usize,
}

/// Where the scanner stands; survives between chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between records: nothing of the next record seen yet.
    RecordStart,
    /// At the start of a field after a `,` (or of the record's first field,
    /// with its first byte about to be looked at).
    FieldStart,
    Unquoted,
    Quoted,
    /// After a `"` inside a quoted field: closing quote or first of `""`.
    AfterQuote,
    /// After a CR outside quotes: only LF may follow.
    Cr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bom {
    /// At the start of the input; the first `seen` bytes matched the BOM.
    Checking {
        seen: u8,
    },
    Done,
}

/// Streaming validator; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct CsvValidator {
    limits: Limits,
    state: State,
    bom: Bom,
    failed: Option<CsvError>,
    finished: bool,
    /// Bytes of the current incomplete record from earlier chunks (with a
    /// trailing CR when the chunk ended between CR and LF). At most
    /// `max_record_bytes + 1` bytes; the buffer is reused.
    pending: Vec<u8>,
    /// Data bytes of the current record so far (no terminator).
    rec_len: usize,
    /// Fields of the current record so far.
    rec_fields: usize,
    /// Line where the current record started.
    rec_line: u64,
    /// Current physical line.
    line: u64,
    header: Option<Header>,
    /// `header.columns.len()`, or 0 before the header.
    expected: usize,
    /// Set when the header completes, reported by the current call.
    header_ready: bool,
    records: u64,
}

impl CsvValidator {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_fields: limits.max_fields.max(1),
            ..limits
        };
        CsvValidator {
            limits,
            state: State::RecordStart,
            bom: Bom::Checking { seen: 0 },
            failed: None,
            finished: false,
            pending: Vec::new(),
            rec_len: 0,
            rec_fields: 0,
            rec_line: 1,
            line: 1,
            header: None,
            expected: 0,
            header_ready: false,
            records: 0,
        }
    }

    /// Feeds the next chunk of input. Every data record completed by it is
    /// validated and appended to `out` (terminated by a single LF); the
    /// incomplete record at the end of the chunk is kept internally.
    ///
    /// On error `out` holds exactly the records before the bad one; the
    /// error sticks. Calling this after [`finish`](Self::finish) is a logic
    /// error: the chunk is ignored (debug builds panic on a non-empty one).
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<Progress, CsvError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            debug_assert!(chunk.is_empty(), "CsvValidator::push after finish");
            return Ok(Progress::default());
        }
        let before = (self.records, out.len());
        self.header_ready = false;
        let result = self.feed(chunk, out);
        self.conclude(result, before, out)
    }

    /// End of input: validates and flushes the last record, which may lack
    /// its line terminator (`out` gets one anyway). Fails with
    /// [`CsvErrorKind::UnterminatedQuote`] inside a quoted field and with
    /// [`CsvErrorKind::EmptyHeader`] when there was no header. Later calls
    /// return the same error, or an empty [`Progress`] after success.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<Progress, CsvError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            return Ok(Progress::default());
        }
        let before = (self.records, out.len());
        self.header_ready = false;
        let result = self.finish_input(out);
        self.finished = true;
        self.conclude(result, before, out)
    }

    /// The header, once its record is complete.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Data records validated (and appended to `out`) so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Current physical line: 1 + the LFs seen so far.
    pub fn line(&self) -> u64 {
        self.line
    }

    fn conclude(
        &mut self,
        result: Result<(), CsvError>,
        (records, len): (u64, usize),
        out: &BytesMut,
    ) -> Result<Progress, CsvError> {
        match result {
            Ok(()) => Ok(Progress {
                header_ready: self.header_ready,
                records: self.records - records,
                bytes: out.len() - len,
            }),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn feed(&mut self, mut chunk: &[u8], out: &mut BytesMut) -> Result<(), CsvError> {
        if let Bom::Checking { seen } = self.bom {
            let mut seen = usize::from(seen);
            let mut k = 0;
            while seen < BOM.len() && k < chunk.len() && chunk[k] == BOM[seen] {
                seen += 1;
                k += 1;
            }
            if seen == BOM.len() {
                self.bom = Bom::Done;
            } else if k == chunk.len() {
                // Still a prefix of the BOM (seen < 3 fits in a u8).
                self.bom = Bom::Checking { seen: seen as u8 };
                return Ok(());
            } else {
                // Not a BOM: the bytes held back so far are data.
                self.bom = Bom::Done;
                self.scan(&BOM[..seen], out)?;
            }
            chunk = &chunk[k..];
        }
        self.scan(chunk, out)
    }

    fn finish_input(&mut self, out: &mut BytesMut) -> Result<(), CsvError> {
        if let Bom::Checking { seen } = self.bom {
            self.bom = Bom::Done;
            self.scan(&BOM[..usize::from(seen)], out)?;
        }
        match self.state {
            State::RecordStart => {}
            State::Quoted => return Err(self.error(CsvErrorKind::UnterminatedQuote)),
            State::Cr => return Err(self.error(CsvErrorKind::BareCarriageReturn)),
            State::FieldStart | State::Unquoted | State::AfterQuote => {
                let rec = std::mem::take(&mut self.pending);
                let result = self.complete_record(&rec, out);
                self.pending = rec;
                self.pending.clear();
                result?;
                self.state = State::RecordStart;
            }
        }
        if self.header.is_none() {
            return Err(CsvError {
                line: self.line,
                reason: CsvErrorKind::EmptyHeader,
            });
        }
        Ok(())
    }

    /// An error about the current record.
    fn error(&self, reason: CsvErrorKind) -> CsvError {
        CsvError {
            line: self.rec_line,
            reason,
        }
    }

    /// Accounts for one data byte of the current record (anything but its
    /// line terminator).
    #[inline]
    fn data_byte(&mut self) -> Result<(), CsvError> {
        if self.rec_len == self.limits.max_record_bytes {
            return Err(self.error(CsvErrorKind::RecordTooLong));
        }
        self.rec_len += 1;
        Ok(())
    }

    #[inline]
    fn new_field(&mut self) -> Result<(), CsvError> {
        self.rec_fields += 1;
        if self.rec_fields > self.limits.max_fields {
            return Err(self.error(CsvErrorKind::TooManyFields));
        }
        Ok(())
    }

    /// Runs the state machine over `d`. Whatever of the record in progress
    /// is left at the end goes to `pending`.
    fn scan(&mut self, d: &[u8], out: &mut BytesMut) -> Result<(), CsvError> {
        let len = d.len();
        let max = self.limits.max_record_bytes;
        let mut i = 0;
        // Start in `d` of the current record's bytes not yet in `pending`.
        let mut seg = 0;
        // Position of the next CR at or after the last search (len if none).
        let mut next_cr: Option<usize> = None;
        while i < len {
            match self.state {
                State::RecordStart => {
                    if self.header.is_some() {
                        i = self.fast_lines(d, i, out)?;
                        if i == len {
                            break;
                        }
                    }
                    self.rec_line = self.line;
                    self.rec_len = 0;
                    self.rec_fields = 1;
                    seg = i;
                    self.state = State::FieldStart;
                }
                State::FieldStart => match d[i] {
                    b'"' => {
                        self.data_byte()?;
                        i += 1;
                        self.state = State::Quoted;
                    }
                    b',' => {
                        self.data_byte()?;
                        self.new_field()?;
                        i += 1;
                    }
                    b'\n' => {
                        self.end_record(d, seg, i, false, out)?;
                        i += 1;
                        seg = i;
                    }
                    b'\r' => {
                        i += 1;
                        self.state = State::Cr;
                    }
                    _ => self.state = State::Unquoted,
                },
                State::Unquoted => {
                    // Skip plain bytes, but never look further than the
                    // first byte beyond the record limit.
                    let room = max - self.rec_len;
                    let lim = len.min(i.saturating_add(room).saturating_add(1));
                    let hit = memchr3(b',', b'\n', b'"', &d[i..lim]).map_or(lim, |o| i + o);
                    let cr = match next_cr {
                        Some(p) if p >= i => p,
                        _ => {
                            let p = memchr(b'\r', &d[i..]).map_or(len, |o| i + o);
                            next_cr = Some(p);
                            p
                        }
                    };
                    let stop = hit.min(cr);
                    let n = stop - i;
                    if n > room {
                        return Err(self.error(CsvErrorKind::RecordTooLong));
                    }
                    self.rec_len += n;
                    i = stop;
                    if i == len {
                        break;
                    }
                    match d[i] {
                        b'\r' => {
                            i += 1;
                            self.state = State::Cr;
                        }
                        b'\n' => {
                            self.end_record(d, seg, i, false, out)?;
                            i += 1;
                            seg = i;
                        }
                        b',' => {
                            self.data_byte()?;
                            self.new_field()?;
                            i += 1;
                            self.state = State::FieldStart;
                        }
                        c => {
                            // `stop < lim` here, so it is a hit: the quote.
                            debug_assert_eq!(c, b'"');
                            self.data_byte()?;
                            return Err(self.error(CsvErrorKind::QuoteInUnquotedField));
                        }
                    }
                }
                State::Quoted => {
                    let room = max - self.rec_len;
                    let lim = len.min(i.saturating_add(room).saturating_add(1));
                    let hit = memchr2(b'"', b'\n', &d[i..lim]).map_or(lim, |o| i + o);
                    let n = hit - i;
                    if n > room {
                        return Err(self.error(CsvErrorKind::RecordTooLong));
                    }
                    self.rec_len += n;
                    i = hit;
                    if i == len {
                        break;
                    }
                    // A quote or a quoted LF.
                    self.data_byte()?;
                    if d[i] == b'\n' {
                        self.line += 1;
                    } else {
                        self.state = State::AfterQuote;
                    }
                    i += 1;
                }
                State::AfterQuote => match d[i] {
                    b'"' => {
                        self.data_byte()?;
                        i += 1;
                        self.state = State::Quoted;
                    }
                    b',' => {
                        self.data_byte()?;
                        self.new_field()?;
                        i += 1;
                        self.state = State::FieldStart;
                    }
                    b'\n' => {
                        self.end_record(d, seg, i, false, out)?;
                        i += 1;
                        seg = i;
                    }
                    b'\r' => {
                        i += 1;
                        self.state = State::Cr;
                    }
                    _ => {
                        self.data_byte()?;
                        return Err(self.error(CsvErrorKind::TextAfterClosingQuote));
                    }
                },
                State::Cr => {
                    if d[i] != b'\n' {
                        return Err(self.error(CsvErrorKind::BareCarriageReturn));
                    }
                    self.end_record(d, seg, i, true, out)?;
                    i += 1;
                    seg = i;
                }
            }
        }
        if self.state != State::RecordStart {
            self.pending.extend_from_slice(&d[seg..]);
        }
        Ok(())
    }

    /// The record in progress ends with the LF at `d[nl]` (after a CR when
    /// `crlf`); its bytes are `pending` + `d[seg..nl]`.
    fn end_record(
        &mut self,
        d: &[u8],
        seg: usize,
        nl: usize,
        crlf: bool,
        out: &mut BytesMut,
    ) -> Result<(), CsvError> {
        if self.pending.is_empty() {
            // Then the CR of a CRLF is in `d` too.
            self.complete_record(&d[seg..nl - usize::from(crlf)], out)?;
        } else {
            let mut rec = std::mem::take(&mut self.pending);
            rec.extend_from_slice(&d[seg..nl]);
            if crlf {
                rec.pop();
            }
            let result = self.complete_record(&rec, out);
            rec.clear();
            self.pending = rec;
            result?;
        }
        self.line += 1;
        self.state = State::RecordStart;
        Ok(())
    }

    /// End-of-record checks for a record whose structure passed: the header,
    /// or UTF-8 and field count of a data record, which goes to `out`.
    fn complete_record(&mut self, rec: &[u8], out: &mut BytesMut) -> Result<(), CsvError> {
        debug_assert_eq!(rec.len(), self.rec_len);
        if self.header.is_none() {
            if rec.is_empty() {
                return Err(self.error(CsvErrorKind::EmptyHeader));
            }
            let text =
                std::str::from_utf8(rec).map_err(|_| self.error(CsvErrorKind::InvalidUtf8))?;
            let header = parse_header(text).map_err(|kind| self.error(kind))?;
            self.expected = header.columns.len();
            self.header = Some(header);
            self.header_ready = true;
            return Ok(());
        }
        if rec.is_empty() {
            return Ok(()); // an empty line
        }
        if let Some(kind) = self.check_data(rec, self.rec_fields) {
            return Err(self.error(kind));
        }
        append(rec, out);
        self.records += 1;
        Ok(())
    }

    fn check_data(&self, rec: &[u8], fields: usize) -> Option<CsvErrorKind> {
        if std::str::from_utf8(rec).is_err() {
            Some(CsvErrorKind::InvalidUtf8)
        } else if fields != self.expected {
            Some(CsvErrorKind::FieldCount {
                expected: self.expected,
                found: fields,
            })
        } else {
            None
        }
    }

    /// Fast path for data records at `d[i..]`: validates whole lines that lie
    /// in `d` and are well-formed records by themselves (no CR but the
    /// terminator's, quotes in place and closed on the line, within the
    /// limits), copying runs of LF-terminated ones in one go. Returns where
    /// it stopped: at the end of `d` or at the start of a record for the
    /// state machine.
    fn fast_lines(
        &mut self,
        d: &[u8],
        mut i: usize,
        out: &mut BytesMut,
    ) -> Result<usize, CsvError> {
        let max = self.limits.max_record_bytes;
        // Start of the validated lines not yet copied to `out`.
        let mut run = i;
        loop {
            // Data (at most max), maybe a CR, the LF.
            let lim = d.len().min(i.saturating_add(max).saturating_add(2));
            let Some(off) = memchr(b'\n', &d[i..lim]) else {
                break;
            };
            let nl = i + off;
            let crlf = off > 0 && d[nl - 1] == b'\r';
            let rec = &d[i..nl - usize::from(crlf)];
            if rec.len() > max {
                break;
            }
            let fields = match memchr2(b'"', b'\r', rec) {
                None => 1 + count_commas(rec),
                Some(p) if rec[p] == b'"' && memchr(b'\r', &rec[p..]).is_none() => {
                    match quoted_line_fields(rec) {
                        Some(fields) => fields,
                        None => break,
                    }
                }
                Some(_) => break,
            };
            if fields > self.limits.max_fields {
                break;
            }
            if !rec.is_empty() {
                if let Some(kind) = self.check_data(rec, fields) {
                    out.extend_from_slice(&d[run..i]);
                    self.rec_line = self.line;
                    return Err(self.error(kind));
                }
                self.records += 1;
            }
            // Copied verbatim: a non-empty LF-terminated record other than `\.`.
            if crlf || rec.is_empty() || rec == b"\\." {
                out.extend_from_slice(&d[run..i]);
                if !rec.is_empty() {
                    append(rec, out);
                }
                run = nl + 1;
            }
            self.line += 1;
            i = nl + 1;
        }
        out.extend_from_slice(&d[run..i]);
        Ok(i)
    }
}

/// Appends a data record to the COPY data, LF-terminated.
#[inline]
fn append(rec: &[u8], out: &mut BytesMut) {
    if rec == b"\\." {
        // PostgreSQL < 18 reads an unquoted `\.` line as end of data.
        out.extend_from_slice(b"\"\\.\"\n");
    } else {
        out.reserve(rec.len() + 1);
        out.extend_from_slice(rec);
        out.put_u8(b'\n');
    }
}

#[inline]
fn count_commas(rec: &[u8]) -> usize {
    // Summing in u8 lanes over blocks of 255 lets this vectorise well.
    rec.chunks(255)
        .map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b == b','))))
        .sum()
}

/// Fields of a record with quotes that lies on one line and has no CR, or
/// None if a quote is out of place or a quoted field goes on past the line
/// (the state machine then takes over and decides).
fn quoted_line_fields(rec: &[u8]) -> Option<usize> {
    let n = rec.len();
    let mut fields = 1;
    let mut i = 0;
    loop {
        if i < n && rec[i] == b'"' {
            i += 1;
            loop {
                i += memchr(b'"', &rec[i..])? + 1;
                if i < n && rec[i] == b'"' {
                    i += 1;
                } else {
                    break;
                }
            }
            if i == n {
                return Some(fields);
            }
            if rec[i] != b',' {
                return None;
            }
        } else {
            match memchr2(b',', b'"', &rec[i..]) {
                None => return Some(fields),
                Some(o) if rec[i + o] == b',' => i += o,
                Some(_) => return None,
            }
        }
        // At a comma.
        i += 1;
        fields += 1;
    }
}

/// Splits a structurally valid header record into trimmed, unquoted names
/// and checks them.
fn parse_header(text: &str) -> Result<Header, CsvErrorKind> {
    let b = text.as_bytes();
    let n = b.len();
    let mut columns = Vec::new();
    let mut i = 0;
    loop {
        let mut name = String::new();
        if i < n && b[i] == b'"' {
            i += 1;
            loop {
                let j = memchr(b'"', &b[i..]).map_or(n, |o| i + o);
                name.push_str(&text[i..j]);
                i = (j + 1).min(n);
                if i < n && b[i] == b'"' {
                    name.push('"');
                    i += 1;
                } else {
                    break;
                }
            }
        } else {
            let j = memchr(b',', &b[i..]).map_or(n, |o| i + o);
            name.push_str(&text[i..j]);
            i = j;
        }
        let trimmed = name.trim();
        if trimmed.len() != name.len() {
            name = trimmed.to_owned();
        }
        columns.push(name);
        // Now at the `,` or the end.
        if i >= n {
            break;
        }
        i += 1;
    }
    if columns.iter().all(|c| c.is_empty()) {
        return Err(CsvErrorKind::EmptyHeader);
    }
    if let Some(k) = columns.iter().position(|c| c.is_empty()) {
        return Err(CsvErrorKind::EmptyColumnName { column: k + 1 });
    }
    let mut seen = HashSet::with_capacity(columns.len());
    for c in &columns {
        if !seen.insert(c.as_str()) {
            return Err(CsvErrorKind::DuplicateColumn(c.clone()));
        }
    }
    Ok(Header { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(max_record_bytes: usize, max_fields: usize) -> Limits {
        Limits {
            max_record_bytes,
            max_fields,
        }
    }

    /// Feeds `input` in chunks of `step` bytes (0: all at once), then
    /// finishes. Returns the result, `out` and the validator.
    fn run_with(
        limits: Limits,
        input: &[u8],
        step: usize,
    ) -> (Result<u64, CsvError>, Vec<u8>, CsvValidator) {
        let mut v = CsvValidator::new(limits);
        let mut out = BytesMut::new();
        let step = if step == 0 { input.len().max(1) } else { step };
        let mut total = 0;
        for chunk in input.chunks(step) {
            match v.push(chunk, &mut out) {
                Ok(p) => total += p.records,
                Err(e) => return (Err(e), out.to_vec(), v),
            }
        }
        let result = v.finish(&mut out).map(|p| total + p.records);
        (result, out.to_vec(), v)
    }

    /// Runs at once, in 1-byte chunks and in 7-byte chunks; all must agree.
    fn run(limits: Limits, input: &[u8]) -> (Result<u64, CsvError>, Vec<u8>) {
        let (r0, o0, v0) = run_with(limits, input, 0);
        for step in [1, 2, 7, 64] {
            let (r, o, v) = run_with(limits, input, step);
            assert_eq!(r, r0, "result differs with {step}-byte chunks");
            assert_eq!(o, o0, "out differs with {step}-byte chunks");
            assert_eq!(v.header(), v0.header());
        }
        if let Ok(n) = r0 {
            assert_eq!(n, v0.records());
        }
        (r0, o0)
    }

    fn ok(input: &str) -> (u64, String) {
        let (r, out) = run(Limits::default(), input.as_bytes());
        (r.unwrap(), String::from_utf8(out).unwrap())
    }

    fn err(limits: Limits, input: &[u8]) -> CsvError {
        run(limits, input).0.unwrap_err()
    }

    fn e(line: u64, reason: CsvErrorKind) -> CsvError {
        CsvError { line, reason }
    }

    fn header_of(input: &str) -> Vec<String> {
        let (_, _, v) = run_with(Limits::default(), input.as_bytes(), 0);
        v.header().unwrap().columns.clone()
    }

    /// `n` data records `i,name i,i*3` after a header, LF-terminated.
    fn generated(n: usize) -> String {
        let mut s = String::from("id,name,value\n");
        for i in 1..=n {
            s += &format!("{i},name {i},{}\n", i * 3);
        }
        s
    }

    #[test]
    fn lf_records() {
        let (n, out) = ok("a,b\n1,2\n3,4\n");
        assert_eq!(n, 2);
        assert_eq!(out, "1,2\n3,4\n");
    }

    #[test]
    fn crlf_and_mixed_terminators_become_lf() {
        assert_eq!(ok("a,b\r\n1,2\r\n3,4\r\n"), (2, "1,2\n3,4\n".into()));
        assert_eq!(
            ok("a,b\n1,2\r\n3,4\n5,6\r\n"),
            (3, "1,2\n3,4\n5,6\n".into())
        );
        assert_eq!(ok("a,b\r\n\"x\",\"y\"\r\n"), (1, "\"x\",\"y\"\n".into()));
    }

    #[test]
    fn last_record_without_newline_gets_one() {
        assert_eq!(ok("a,b\n1,2"), (1, "1,2\n".into()));
        assert_eq!(ok("a,b\n1,\"2\""), (1, "1,\"2\"\n".into()));
        assert_eq!(ok("a,b\n1,"), (1, "1,\n".into()));
        assert_eq!(ok("a,b\n,"), (1, ",\n".into()));
    }

    #[test]
    fn progress_reports_header_records_and_bytes() {
        let mut v = CsvValidator::new(Limits::default());
        let mut out = BytesMut::new();
        let p = v.push(b"a,b\n1,", &mut out).unwrap();
        assert_eq!(
            p,
            Progress {
                header_ready: true,
                records: 0,
                bytes: 0
            }
        );
        let p = v.push(b"2\n3,4\n5", &mut out).unwrap();
        assert_eq!(
            p,
            Progress {
                header_ready: false,
                records: 2,
                bytes: 8
            }
        );
        assert_eq!(v.line(), 4);
        let p = v.push(b",6", &mut out).unwrap();
        assert_eq!(p, Progress::default());
        let p = v.finish(&mut out).unwrap();
        assert_eq!(
            p,
            Progress {
                header_ready: false,
                records: 1,
                bytes: 4
            }
        );
        assert_eq!(&out[..], b"1,2\n3,4\n5,6\n");
    }

    #[test]
    fn finish_flushes_the_last_record() {
        let mut v = CsvValidator::new(Limits::default());
        let mut out = BytesMut::new();
        v.push(b"a\n1\n2", &mut out).unwrap();
        assert_eq!(&out[..], b"1\n");
        let p = v.finish(&mut out).unwrap();
        assert_eq!(p.records, 1);
        assert_eq!(p.bytes, 2);
        assert_eq!(&out[..], b"1\n2\n");
        assert_eq!(v.records(), 2);
        assert_eq!(v.finish(&mut out).unwrap(), Progress::default());
    }

    #[test]
    fn header_only() {
        assert_eq!(ok("a,b\n"), (0, String::new()));
        assert_eq!(ok("a,b"), (0, String::new()));
        let mut v = CsvValidator::new(Limits::default());
        let mut out = BytesMut::new();
        assert!(!v.push(b"a,b", &mut out).unwrap().header_ready);
        assert!(v.finish(&mut out).unwrap().header_ready);
    }

    #[test]
    fn header_columns_in_any_order_trimmed_and_unquoted() {
        assert_eq!(header_of("b,a,c\n"), ["b", "a", "c"]);
        assert_eq!(header_of("c , b,a\n"), ["c", "b", "a"]);
        assert_eq!(
            header_of("\" x \",\"say \"\"hi\"\"\",\"a,b\",\"l1\nl2\"\n"),
            ["x", "say \"hi\"", "a,b", "l1\nl2"]
        );
        assert_eq!(header_of("Id,ID,id"), ["Id", "ID", "id"]);
        assert_eq!(header_of("ünï,日本\n"), ["ünï", "日本"]);
        assert_eq!(header_of("\"\"\"\""), ["\""]);
    }

    #[test]
    fn header_errors() {
        let d = Limits::default();
        assert_eq!(err(d, b""), e(1, CsvErrorKind::EmptyHeader));
        assert_eq!(err(d, b"\n"), e(1, CsvErrorKind::EmptyHeader));
        assert_eq!(err(d, b"\r\na\n1\n"), e(1, CsvErrorKind::EmptyHeader));
        assert_eq!(err(d, b"\xEF\xBB\xBF"), e(1, CsvErrorKind::EmptyHeader));
        assert_eq!(err(d, b" \n1\n"), e(1, CsvErrorKind::EmptyHeader));
        assert_eq!(err(d, b"\"\",\n"), e(1, CsvErrorKind::EmptyHeader));
        assert_eq!(
            err(d, b"a,,b\n"),
            e(1, CsvErrorKind::EmptyColumnName { column: 2 })
        );
        assert_eq!(
            err(d, b"a,b,\n"),
            e(1, CsvErrorKind::EmptyColumnName { column: 3 })
        );
        assert_eq!(
            err(d, b"a,b, a\n1,2,3\n"),
            e(1, CsvErrorKind::DuplicateColumn("a".into()))
        );
        assert_eq!(
            err(d, b"\"a\nb\",x,\"a\nb\"\n"),
            e(1, CsvErrorKind::DuplicateColumn("a\nb".into()))
        );
        assert_eq!(err(d, b"a,\xFF\n"), e(1, CsvErrorKind::InvalidUtf8));
        assert_eq!(
            err(small(8, 3), b"a,b,c,d\n"),
            e(1, CsvErrorKind::TooManyFields)
        );
        assert_eq!(
            err(small(6, 8), b"a,b,c,d\n"),
            e(1, CsvErrorKind::RecordTooLong)
        );
        assert_eq!(err(d, b"a,\"b\n"), e(1, CsvErrorKind::UnterminatedQuote));
    }

    #[test]
    fn quotes_are_forwarded_unchanged() {
        let input = "a,b,c\n\"x,y\",\"say \"\"hi\"\"\",\"\"\n\"line1\nline2\",\"\",plain\n";
        let (n, out) = ok(input);
        assert_eq!(n, 2);
        assert_eq!(out, &input[6..]);
        // CR and CRLF inside quotes are data, kept as they are.
        let (n, out) = ok("a,b\r\n\"x\r\ny\",\"\r\"\r\n");
        assert_eq!(n, 1);
        assert_eq!(out, "\"x\r\ny\",\"\r\"\n");
    }

    #[test]
    fn bom_is_skipped() {
        let (n, out) = ok("\u{feff}a,b\n1,2\n");
        assert_eq!((n, out.as_str()), (1, "1,2\n"));
        assert_eq!(header_of("\u{feff}a,b\n"), ["a", "b"]);
        // Only at the very start: later it is data.
        assert_eq!(ok("a\n\u{feff}x\n"), (1, "\u{feff}x\n".into()));
        // A BOM prefix that is not a BOM is data (here, invalid UTF-8).
        let d = Limits::default();
        assert_eq!(err(d, b"\xEF\xBBa\n1\n"), e(1, CsvErrorKind::InvalidUtf8));
        assert_eq!(err(d, b"\xEF"), e(1, CsvErrorKind::InvalidUtf8));
        assert_eq!(err(d, b"\xEF\xBB\n"), e(1, CsvErrorKind::InvalidUtf8));
        // BOM in pieces.
        let mut v = CsvValidator::new(d);
        let mut out = BytesMut::new();
        for piece in [&b"\xEF"[..], b"", b"\xBB", b"\xBFa\n", b"1\n"] {
            v.push(piece, &mut out).unwrap();
        }
        v.finish(&mut out).unwrap();
        assert_eq!(v.header().unwrap().columns, ["a"]);
        assert_eq!(&out[..], b"1\n");
    }

    #[test]
    fn empty_lines_are_skipped_but_counted_as_lines() {
        let (n, out) = ok("a,b\n\n1,2\n\r\n\n3,4\n\n");
        assert_eq!((n, out.as_str()), (2, "1,2\n3,4\n"));
        // Line numbers still count them: the bad record is on line 6.
        let input = b"a,b\n\n1,2\n\r\n\n3\n";
        assert_eq!(
            err(Limits::default(), input),
            e(
                6,
                CsvErrorKind::FieldCount {
                    expected: 2,
                    found: 1
                }
            )
        );
        // A line of blanks is not empty.
        assert_eq!(ok("a\n \n"), (1, " \n".into()));
    }

    #[test]
    fn end_of_copy_marker_is_quoted() {
        assert_eq!(ok("a\n\\.\nx\n"), (2, "\"\\.\"\nx\n".into()));
        assert_eq!(ok("a\r\n\\.\r\n"), (1, "\"\\.\"\n".into()));
        assert_eq!(ok("a\n\\."), (1, "\"\\.\"\n".into()));
        assert_eq!(ok("a\n\\.x\n\"\\.\"\n"), (2, "\\.x\n\"\\.\"\n".into()));
    }

    #[test]
    fn bad_record_at_line_5000() {
        let d = Limits::default();
        let mut s = generated(6000);
        // Record i is on line i + 1: break record 4999.
        let bad = "4999,name 4999,14997\n";
        let at = s.find(bad).unwrap();
        let cases: [(&[u8], CsvErrorKind); 7] = [
            (
                b"4999,name 4999\n",
                CsvErrorKind::FieldCount {
                    expected: 3,
                    found: 2,
                },
            ),
            (
                b"4999,name 4999,1,2\n",
                CsvErrorKind::FieldCount {
                    expected: 3,
                    found: 4,
                },
            ),
            (b"4999,na\"me,1\n", CsvErrorKind::QuoteInUnquotedField),
            (b"4999,\"name\"x,1\n", CsvErrorKind::TextAfterClosingQuote),
            (b"4999,\"name\" ,1\n", CsvErrorKind::TextAfterClosingQuote),
            (
                "4999,n\u{e9}\u{1F600},1\r,\n".as_bytes(),
                CsvErrorKind::BareCarriageReturn,
            ),
            (b"4999,\xFF,1\n", CsvErrorKind::InvalidUtf8),
        ];
        for (replacement, kind) in cases {
            let mut input = s.clone().into_bytes();
            input.splice(at..at + bad.len(), replacement.iter().copied());
            let (r, out) = run(d, &input);
            assert_eq!(r, Err(e(5000, kind.clone())), "{kind:?}");
            // Everything before the bad record was forwarded.
            assert_eq!(out, s.as_bytes()[14..at], "{kind:?}");
        }
        s.truncate(at);
        s += "4999,\"unterminated,1\n5000,x,1\n";
        assert_eq!(
            err(d, s.as_bytes()),
            e(5000, CsvErrorKind::UnterminatedQuote)
        );
    }

    #[test]
    fn quoted_newlines_shift_later_line_numbers() {
        let d = Limits::default();
        let input = b"a,b\n\"x\ny\nz\",1\n2,\"\r\n\"\n3\n";
        // Records start on lines 2 and 5; the bad one on line 7.
        assert_eq!(
            err(d, input),
            e(
                7,
                CsvErrorKind::FieldCount {
                    expected: 2,
                    found: 1
                }
            )
        );
        // The bad record's own quoted newlines do not move its line.
        let input = b"a,b\n1,2\n\"p\nq\nr\"x,3\n";
        assert_eq!(err(d, input), e(3, CsvErrorKind::TextAfterClosingQuote));
        // A header with quoted newlines moves everything after it.
        let input = b"\"a\n\",b\n1\n";
        assert_eq!(
            err(d, input),
            e(
                3,
                CsvErrorKind::FieldCount {
                    expected: 2,
                    found: 1
                }
            )
        );
        let mut v = CsvValidator::new(d);
        let mut out = BytesMut::new();
        v.push(b"a\n\"1\n\n\n\"\n", &mut out).unwrap();
        assert_eq!(v.line(), 6);
    }

    #[test]
    fn unterminated_quote() {
        let d = Limits::default();
        assert_eq!(
            err(d, b"a,b\n1,2\n3,\"4\n5,6\n"),
            e(3, CsvErrorKind::UnterminatedQuote)
        );
        assert_eq!(err(d, b"a,b\n\""), e(2, CsvErrorKind::UnterminatedQuote));
        assert_eq!(
            err(d, b"a,b\n1,\"x\"\"\n"),
            e(2, CsvErrorKind::UnterminatedQuote)
        );
    }

    #[test]
    fn quote_errors() {
        let d = Limits::default();
        assert_eq!(
            err(d, b"a,b\n1,2\nx\"y,2\n"),
            e(3, CsvErrorKind::QuoteInUnquotedField)
        );
        assert_eq!(
            err(d, b"a,b\n1,y\"\n"),
            e(2, CsvErrorKind::QuoteInUnquotedField)
        );
        assert_eq!(
            err(d, b"a,b\n\"1\"\"\"2,3\n"),
            e(2, CsvErrorKind::TextAfterClosingQuote)
        );
        // The first error in the record wins, whatever else follows.
        assert_eq!(
            err(d, b"a,b\n1\"x,2,3,4\n"),
            e(2, CsvErrorKind::QuoteInUnquotedField)
        );
    }

    #[test]
    fn bare_carriage_returns() {
        let d = Limits::default();
        assert_eq!(
            err(d, b"a,b\n1,2\rx\n"),
            e(2, CsvErrorKind::BareCarriageReturn)
        );
        assert_eq!(
            err(d, b"a,b\n1,2\r\r\n"),
            e(2, CsvErrorKind::BareCarriageReturn)
        );
        assert_eq!(
            err(d, b"a,b\n1,2\r"),
            e(2, CsvErrorKind::BareCarriageReturn)
        );
        assert_eq!(
            err(d, b"a,b\n\"1\"\r,2\n"),
            e(2, CsvErrorKind::BareCarriageReturn)
        );
        assert_eq!(err(d, b"a\r\rb\n"), e(1, CsvErrorKind::BareCarriageReturn));
        // After a quoted field on the same line, too.
        assert_eq!(
            err(d, b"a,b\n\"x\",y\rz\n"),
            e(2, CsvErrorKind::BareCarriageReturn)
        );
        assert_eq!(ok("a,b\r\n\"x\r\",y\r\n"), (1, "\"x\r\",y\n".into()));
    }

    #[test]
    fn invalid_utf8_per_record() {
        let d = Limits::default();
        // A code point split across chunks is fine (checked per record).
        let (r, out) = run(d, "a\nné\n日本語\n".as_bytes());
        assert_eq!(r, Ok(2));
        assert_eq!(out, "né\n日本語\n".as_bytes());
        assert_eq!(err(d, b"a\nok\n\xC3\n"), e(3, CsvErrorKind::InvalidUtf8));
        assert_eq!(
            err(d, b"a\n\"\xED\xA0\x80\"\n"),
            e(2, CsvErrorKind::InvalidUtf8)
        );
        // UTF-8 is checked before the field count.
        assert_eq!(err(d, b"a\n\xFF,x\n"), e(2, CsvErrorKind::InvalidUtf8));
    }

    #[test]
    fn record_size_limit_is_exact() {
        let l = small(10, 64);
        // 10 data bytes pass, LF or CRLF not counted; 11 fail.
        for eol in ["\n", "\r\n", ""] {
            let input = format!("h\n0123456789{eol}");
            assert_eq!(run(l, input.as_bytes()).0, Ok(1), "{eol:?}");
            let input = format!("h\n01234567890{eol}");
            assert_eq!(err(l, input.as_bytes()), e(2, CsvErrorKind::RecordTooLong));
            let input = format!("a,b\n\"1234\",\"7\"{eol}");
            assert_eq!(run(l, input.as_bytes()).0, Ok(1), "{eol:?}");
            let input = format!("a,b\n\"1234\",\"78\"{eol}");
            assert_eq!(err(l, input.as_bytes()), e(2, CsvErrorKind::RecordTooLong));
        }
        // Quoted newlines count.
        assert_eq!(run(l, b"h\n\"1\n\n\n\n\n7\"\n").0, Ok(1));
        assert_eq!(
            err(l, b"h\n\"1\n\n\n\n\n\n\n9\"\n"),
            e(2, CsvErrorKind::RecordTooLong)
        );
        // An error beyond the limit is reported as the limit.
        assert_eq!(
            err(l, b"h\n0123456789\"\n"),
            e(2, CsvErrorKind::RecordTooLong)
        );
        assert_eq!(
            err(l, b"h\n012345678\"\n"),
            e(2, CsvErrorKind::QuoteInUnquotedField)
        );
        // A long record never gets buffered beyond the limit.
        let mut v = CsvValidator::new(l);
        let mut out = BytesMut::new();
        v.push(b"h\n", &mut out).unwrap();
        for _ in 0..9 {
            v.push(b"x", &mut out).unwrap();
        }
        v.push(b"x", &mut out).unwrap();
        assert!(v.pending.len() <= 10);
        assert_eq!(
            v.push(b"x", &mut out),
            Err(e(2, CsvErrorKind::RecordTooLong))
        );
        // Zero: only empty lines pass.
        let z = small(0, 64);
        assert_eq!(err(z, b"a\n"), e(1, CsvErrorKind::RecordTooLong));
    }

    #[test]
    fn field_limit_is_exact() {
        let l = small(1024, 4);
        assert_eq!(run(l, b"a,b,c,d\n1,2,3,4\n,,,\n").0, Ok(2));
        assert_eq!(err(l, b"a,b,c,d,e\n"), e(1, CsvErrorKind::TooManyFields));
        assert_eq!(
            err(l, b"a,b,c,d\n1,2,3,4\n1,2,3,4,5\n"),
            e(3, CsvErrorKind::TooManyFields)
        );
        assert_eq!(
            err(l, b"a,b,c,d\n\"\",\"\",\"\",\"\",\"\"\n"),
            e(2, CsvErrorKind::TooManyFields)
        );
        // Below max_fields, too many for the header is a FieldCount.
        assert_eq!(
            err(l, b"a,b\n1,2,3\n"),
            e(
                2,
                CsvErrorKind::FieldCount {
                    expected: 2,
                    found: 3
                }
            )
        );
        // max_fields 0 acts as 1.
        assert_eq!(run(small(8, 0), b"a\n1\n").0, Ok(1));
    }

    #[test]
    fn errors_stick() {
        let mut v = CsvValidator::new(Limits::default());
        let mut out = BytesMut::new();
        v.push(b"a,b\n1,2\n", &mut out).unwrap();
        let first = v.push(b"3\n4,5\n", &mut out).unwrap_err();
        assert_eq!(
            first,
            e(
                3,
                CsvErrorKind::FieldCount {
                    expected: 2,
                    found: 1
                }
            )
        );
        assert_eq!(v.push(b"6,7\n", &mut out), Err(first.clone()));
        assert_eq!(v.finish(&mut out), Err(first.clone()));
        assert_eq!(v.push(b"", &mut out), Err(first));
        assert_eq!(&out[..], b"1,2\n");
        assert_eq!(v.records(), 1);
    }

    #[test]
    fn display() {
        let err = e(
            5000,
            CsvErrorKind::FieldCount {
                expected: 6,
                found: 5,
            },
        );
        assert_eq!(err.to_string(), "line 5000: expected 6 fields, found 5");
        assert_eq!(
            e(2, CsvErrorKind::DuplicateColumn("a\"b".into())).to_string(),
            "line 2: duplicate column \"a\\\"b\""
        );
        assert_eq!(
            e(1, CsvErrorKind::UnterminatedQuote).to_string(),
            "line 1: quoted field not closed at the end of the input"
        );
    }

    #[test]
    fn hundred_thousand_records() {
        let mut s = String::from("id,name,note,amount\r\n");
        let mut expected = Vec::new();
        for i in 0..100_000u32 {
            let rec = match i % 5 {
                0 => format!("{i},plain {i},,{}.{:02}", i / 7, i % 100),
                1 => format!("{i},\"quoted, with comma\",\"x\"\"y\",{i}"),
                2 => format!("{i},\"multi\nline\",ünïcödé,-{i}"),
                3 => format!("{i},\"\",\"\",0"),
                _ => format!("{i},日本語,\"a\r\nb\",{i}"),
            };
            s += &rec;
            s += if i % 2 == 0 { "\n" } else { "\r\n" };
            expected.extend_from_slice(rec.as_bytes());
            expected.push(b'\n');
        }
        for step in [0, 1000, 65536] {
            let (r, out, v) = run_with(Limits::default(), s.as_bytes(), step);
            assert_eq!(r, Ok(100_000));
            assert_eq!(v.records(), 100_000);
            assert!(out == expected, "out differs with step {step}");
            // 100 000 records + header + one quoted LF in 2 records of 5.
            assert_eq!(v.line(), 1 + 100_000 + 1 + 40_000);
        }
    }
}
