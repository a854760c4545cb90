//! Rendering a response body straight into the connection's write buffer.
//!
//! A handler's renderer runs twice over the same data (rows still in the
//! PostgreSQL read buffer, say): first into [`BodyOut::Measure`], which only
//! counts, so the head can carry the exact Content-Length; then into the
//! write buffer itself. One copy from the data to the socket's buffer, no
//! scratch buffer, nothing allocated per request.

use bytes::BytesMut;

/// Somewhere bytes are appended to. The text helpers in
/// [`crate::app::text`] write to any of them.
pub trait Out {
    fn put(&mut self, bytes: &[u8]);

    fn put_byte(&mut self, b: u8) {
        self.put(&[b]);
    }
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, b: u8) {
        self.push(b);
    }
}

impl Out for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, b: u8) {
        bytes::BufMut::put_u8(self, b);
    }
}

/// Where a rendered body goes: counted first, then written.
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
}

/// Runs `render` as a measure: returns the length of the body it writes,
/// or its error.
pub fn measure<E>(render: &impl Fn(&mut BodyOut<'_>) -> Result<(), E>) -> Result<usize, E> {
    let mut m = BodyOut::Measure(0);
    render(&mut m)?;
    Ok(if let BodyOut::Measure(n) = m { n } else { 0 })
}
