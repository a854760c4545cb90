//! Rendering a response body straight into the connection's write buffer.
//!
//! A handler's renderer writes once, from the data where it lies (rows
//! still in the PostgreSQL read buffer, say), into the write buffer; the
//! head with its Content-Length is put in front afterwards. No scratch
//! buffer, nothing allocated per request. [`BodyOut::Measure`] only counts,
//! for a caller that needs a length first (sizing a buffer of its own).

use bytes::BytesMut;

/// Somewhere bytes are appended to. The text helpers in
/// [`crate::app::text`] write to any of them.
pub trait Out {
    fn put(&mut self, bytes: &[u8]);

    fn put_byte(&mut self, b: u8) {
        self.put(&[b]);
    }

    /// A hint that about `additional` more bytes will follow: a buffer
    /// grows once to fit them instead of doubling its way there, copying
    /// what it holds each time.
    fn reserve(&mut self, _additional: usize) {}
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, b: u8) {
        self.push(b);
    }
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }
}

impl Out for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, b: u8) {
        bytes::BufMut::put_u8(self, b);
    }
    fn reserve(&mut self, additional: usize) {
        BytesMut::reserve(self, additional);
    }
}

/// Where a rendered body goes: the write buffer, or a count.
pub enum BodyOut<'a> {
    /// Counts the bytes the body will have.
    Measure(usize),
    /// Appends to the connection's write buffer.
    Write(&'a mut BytesMut),
}

impl BodyOut<'_> {
    /// Whether this pass only measures (a renderer may skip work whose
    /// length it knows, though it need not).
    pub fn is_measure(&self) -> bool {
        matches!(self, BodyOut::Measure(_))
    }
}

impl Out for BodyOut<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        match self {
            BodyOut::Measure(n) => *n += bytes.len(),
            BodyOut::Write(buf) => buf.extend_from_slice(bytes),
        }
    }
    #[inline]
    fn put_byte(&mut self, b: u8) {
        match self {
            BodyOut::Measure(n) => *n += 1,
            BodyOut::Write(buf) => bytes::BufMut::put_u8(*buf, b),
        }
    }
    fn reserve(&mut self, additional: usize) {
        if let BodyOut::Write(buf) = self {
            buf.reserve(additional);
        }
    }
}

/// Runs `render` as a measure: returns the length of the body it writes,
/// or its error.
pub fn measure<E>(render: &impl Fn(&mut BodyOut<'_>) -> Result<(), E>) -> Result<usize, E> {
    let mut m = BodyOut::Measure(0);
    render(&mut m)?;
    Ok(if let BodyOut::Measure(n) = m { n } else { 0 })
}
