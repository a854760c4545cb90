//! A core's pool of future frames: heap memory for futures that are boxed
//! so that what waits between requests stays small (a connection's work on
//! arrived bytes, a handler's state), reused instead of allocated anew for
//! every request.
//!
//! A frame is taken for one future and given back, cleared, when that future
//! is dropped; the next future of the same layout takes it again. Free frames
//! are kept per layout, at most `max_free` of each, and [`FramePool::trim`]
//! returns what a burst left beyond the recent need, like the buffer pool.

#![allow(
    unsafe_code,
    reason = "raw frames: allocate, place a future, drop it in place, reuse"
)]

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

pub struct FramePool {
    lists: RefCell<Vec<FreeList>>,
    max_free: Cell<usize>,
    /// Frames allocated (not reused) since the pool was made, for tests.
    allocated: Cell<u64>,
}

struct FreeList {
    layout: Layout,
    free: Vec<NonNull<u8>>,
    lent: usize,
    /// Most frames of this layout lent at once since the last trim.
    peak_lent: usize,
}

impl FramePool {
    pub fn new(max_free: usize) -> Self {
        FramePool {
            lists: RefCell::new(Vec::new()),
            max_free: Cell::new(max_free),
            allocated: Cell::new(0),
        }
    }

    /// Moves `future` into a frame of the pool: like `Box::pin`, without an
    /// allocation once a frame of its layout was given back.
    pub fn boxed<F: Future>(&self, future: F) -> PooledFuture<'_, F> {
        self.boxed_with(|| future)
    }

    /// [`Self::boxed`] for a future made by `make`, which is called with
    /// the frame ready: the future can be built where it will live rather
    /// than built aside and copied in whole (a connection's work future is
    /// over a kilobyte, and it is made for each request).
    #[inline(always)]
    pub fn boxed_with<F: Future>(&self, make: impl FnOnce() -> F) -> PooledFuture<'_, F> {
        let layout = Layout::new::<F>();
        let frame: NonNull<F> = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            self.take(layout).cast()
        };
        // SAFETY: `frame` is valid for writes of an `F` (a fresh or reused
        // allocation of F's layout, or dangling for a zero-sized F) and
        // holds no value yet.
        unsafe { frame.as_ptr().write(make()) };
        PooledFuture {
            frame,
            pool: self,
            _owns: PhantomData,
        }
    }

    /// How many free frames of each layout are kept.
    pub fn set_max_free(&self, max_free: usize) {
        self.max_free.set(max_free);
    }

    /// Frames allocated so far (reuses not counted).
    pub fn allocated(&self) -> u64 {
        self.allocated.get()
    }

    fn take(&self, layout: Layout) -> NonNull<u8> {
        let mut lists = self.lists.borrow_mut();
        let list = match lists.iter().position(|l| l.layout == layout) {
            Some(i) => &mut lists[i],
            None => {
                lists.push(FreeList {
                    layout,
                    free: Vec::new(),
                    lent: 0,
                    peak_lent: 0,
                });
                lists.last_mut().expect("just pushed")
            }
        };
        list.lent += 1;
        list.peak_lent = list.peak_lent.max(list.lent);
        if let Some(frame) = list.free.pop() {
            return frame;
        }
        self.allocated.set(self.allocated.get() + 1);
        // SAFETY: `layout` has a non-zero size (zero-sized futures take no
        // frame).
        let raw = unsafe { alloc::alloc(layout) };
        NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout))
    }

    fn give_back(&self, layout: Layout, frame: NonNull<u8>) {
        let mut lists = self.lists.borrow_mut();
        let Some(list) = lists.iter_mut().find(|l| l.layout == layout) else {
            // SAFETY: every frame comes from `take`, which made its list.
            unsafe { alloc::dealloc(frame.as_ptr(), layout) };
            return;
        };
        list.lent = list.lent.saturating_sub(1);
        if list.free.len() < self.max_free.get() {
            list.free.push(frame);
        } else {
            // SAFETY: allocated by `take` with this very layout, and no
            // longer holding a value.
            unsafe { alloc::dealloc(frame.as_ptr(), layout) };
        }
    }

    /// Frees the frames beyond what was lent at once since the last call.
    /// Returns the bytes released.
    pub fn trim(&self) -> usize {
        let mut released = 0;
        for list in self.lists.borrow_mut().iter_mut() {
            let keep = list.peak_lent.min(self.max_free.get());
            list.peak_lent = list.lent;
            while list.free.len() > keep {
                let frame = list.free.pop().expect("longer than keep");
                // SAFETY: a free frame, allocated by `take` with this layout.
                unsafe { alloc::dealloc(frame.as_ptr(), list.layout) };
                released += list.layout.size();
            }
        }
        released
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        for list in self.lists.get_mut().drain(..) {
            for frame in list.free {
                // SAFETY: a free frame, allocated by `take` with this layout.
                unsafe { alloc::dealloc(frame.as_ptr(), list.layout) };
            }
        }
    }
}

/// A future in a frame of a [`FramePool`]; dropping it drops the future and
/// gives the frame back.
pub struct PooledFuture<'p, F: Future> {
    frame: NonNull<F>,
    pool: &'p FramePool,
    /// Owns an `F` (for drop check and auto traits).
    _owns: PhantomData<F>,
}

// The future never moves: it stays in its frame until dropped there, like
// in a `Box`, so the handle itself can move freely.
impl<F: Future> Unpin for PooledFuture<'_, F> {}

impl<F: Future> Future for PooledFuture<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the frame holds a live `F` until this handle is dropped,
        // this handle is its only access, and the `F` is never moved out of
        // the frame (it is dropped in place), so pinning it is sound.
        let future = unsafe { Pin::new_unchecked(&mut *self.frame.as_ptr()) };
        future.poll(cx)
    }
}

impl<F: Future> Drop for PooledFuture<'_, F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the frame holds a live `F` (written in `boxed`), dropped
        // exactly once, here, in place as pinning requires.
        unsafe { std::ptr::drop_in_place(self.frame.as_ptr()) };
        if layout.size() != 0 {
            self.pool.give_back(layout, self.frame.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn frames_are_reused_and_values_dropped() {
        let pool = FramePool::new(4);
        let dropped = Rc::new(Cell::new(0));
        struct Guard(Rc<Cell<u32>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        block_on(async {
            for i in 0..10u64 {
                let guard = Guard(dropped.clone());
                let big = [i; 64];
                let out = pool
                    .boxed(async move {
                        let _g = guard;
                        big.iter().sum::<u64>()
                    })
                    .await;
                assert_eq!(out, 64 * i);
            }
        });
        assert_eq!(dropped.get(), 10);
        assert_eq!(pool.allocated(), 1, "one frame, reused nine times");
    }

    #[test]
    fn a_future_dropped_before_it_finished_is_dropped_in_place() {
        let pool = FramePool::new(4);
        let dropped = Rc::new(Cell::new(false));
        struct Guard(Rc<Cell<bool>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let g = Guard(dropped.clone());
        let fut = pool.boxed(async move {
            let _g = g;
            std::future::pending::<()>().await;
        });
        drop(fut);
        assert!(dropped.get());
        // The frame went back: the next future of that layout reuses it.
        let g = Guard(dropped.clone());
        drop(pool.boxed(async move {
            let _g = g;
            std::future::pending::<()>().await;
        }));
        assert_eq!(pool.allocated(), 1);
    }

    #[test]
    fn frames_past_the_bound_are_freed_and_trim_returns_the_rest() {
        let pool = FramePool::new(2);
        let futs: Vec<_> = (0..5u64)
            .map(|i| pool.boxed(async move { [i; 16].len() }))
            .collect();
        drop(futs);
        assert_eq!(pool.lists.borrow()[0].free.len(), 2);
        assert_eq!(pool.trim(), 0, "five were lent at once");
        assert!(pool.trim() > 0, "none since");
        assert!(pool.lists.borrow()[0].free.is_empty());
        // Zero-sized futures take no frame.
        struct Nothing;
        impl Future for Nothing {
            type Output = u8;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
                Poll::Ready(7)
            }
        }
        assert_eq!(block_on(pool.boxed(Nothing)), 7);
        assert_eq!(pool.allocated(), 5);
    }
}
