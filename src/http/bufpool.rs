//! A core's pool of I/O buffers.
//!
//! A connection borrows a buffer only while it has bytes to read or write,
//! and gives it back when its request is done: an idle keep-alive connection
//! holds none. The pool keeps at most `max_free` buffers; the rest go back
//! to the allocator, so a burst does not pin memory forever.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;

pub struct BufPool {
    free: RefCell<Vec<BytesMut>>,
    buf_size: usize,
    max_free: usize,
    /// Largest buffer taken back: one that grew for a page of rows is
    /// kept, so the next such page does not allocate again.
    max_kept: usize,
    lent: Cell<usize>,
    /// Most buffers lent at once since the last `trim`.
    peak_lent: Cell<usize>,
}

impl BufPool {
    pub fn new(buf_size: usize, max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::new()),
            buf_size,
            max_free,
            max_kept: 2 * buf_size,
            lent: Cell::new(0),
            peak_lent: Cell::new(0),
        }
    }

    /// Keeps buffers that grew up to `bytes` (at least twice the buffer
    /// size); larger ones go back to the allocator.
    pub fn keep_up_to(mut self, bytes: usize) -> Self {
        self.max_kept = bytes.max(2 * self.buf_size);
        self
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Takes an empty buffer with at least `buf_size` bytes of capacity.
    pub fn take(&self) -> BytesMut {
        self.lent.set(self.lent.get() + 1);
        self.peak_lent
            .set(self.peak_lent.get().max(self.lent.get()));
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.buf_size))
    }

    /// Gives a buffer back. Buffers that grew past `max_kept`, or that
    /// cannot be reclaimed whole, are dropped rather than kept.
    pub fn put(&self, mut buf: BytesMut) {
        self.lent.set(self.lent.get().saturating_sub(1));
        buf.clear();
        let mut free = self.free.borrow_mut();
        if free.len() >= self.max_free || buf.capacity() > self.max_kept {
            return;
        }
        // After split_to/freeze the buffer is a view at an offset; reserve
        // reclaims the whole allocation once the split parts are gone (no
        // copy, since it is empty), or allocates a fresh one if not.
        buf.reserve(self.buf_size);
        free.push(buf);
    }

    /// Shrinks the free list to what was needed since the last call, so a
    /// burst's buffers do not stay pinned. Returns the bytes released.
    pub fn trim(&self) -> usize {
        let keep = self.peak_lent.get().min(self.max_free);
        self.peak_lent.set(self.lent.get());
        let mut free = self.free.borrow_mut();
        let mut released = 0;
        while free.len() > keep {
            released += free.pop().map_or(0, |b| b.capacity());
        }
        released
    }

    /// Buffers currently lent out (for metrics and tests).
    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    /// Buffers waiting in the pool.
    pub fn free(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufPool::new(1024, 2);
        let a = pool.take();
        let b = pool.take();
        let c = pool.take();
        assert_eq!(pool.lent(), 3);
        pool.put(a);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.free(), 2, "keeps at most max_free");
        assert_eq!(pool.lent(), 0);
        let d = pool.take();
        assert!(d.capacity() >= 1024 && d.is_empty());
    }

    #[test]
    fn reclaims_split_buffers() {
        let pool = BufPool::new(1024, 4);
        let mut a = pool.take();
        a.extend_from_slice(&[7u8; 600]);
        let head = a.split_to(500).freeze();
        drop(head);
        pool.put(a);
        let b = pool.take();
        assert!(b.capacity() >= 1024);
    }

    #[test]
    fn trim_keeps_what_was_recently_needed() {
        let pool = BufPool::new(1024, 64);
        let bufs: Vec<_> = (0..10).map(|_| pool.take()).collect();
        bufs.into_iter().for_each(|b| pool.put(b));
        assert_eq!(pool.free(), 10);
        assert_eq!(pool.trim(), 0, "ten were needed in this period");
        let b = pool.take();
        pool.put(b);
        assert!(pool.trim() >= 9 * 1024, "only one was needed since");
        assert_eq!(pool.free(), 1);
    }

    #[test]
    fn drops_grown_buffers() {
        let pool = BufPool::new(1024, 4);
        let mut a = pool.take();
        a.reserve(10_000);
        pool.put(a);
        assert_eq!(pool.free(), 0);
    }
}
