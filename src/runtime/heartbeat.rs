//! Whether each core still turns its event loop: a core stuck in a loop
//! or a blocking call (a bug) serves nobody, yet neither panics nor ends.
//!
//! Each core's deadline ticker, which runs every turn that its interval
//! has passed (at most 100 ms apart), stamps the core's slot here; the
//! supervisor (`Server::join`) reads the stamps while it waits. This is
//! the one value a core writes for another thread to read, once a tick,
//! in a slot of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(super) struct Heartbeats {
    start: Instant,
    /// Per core: milliseconds from `start` to its last beat.
    last_ms: Box<[AtomicU64]>,
}

impl Heartbeats {
    pub(super) fn new(cores: usize) -> Heartbeats {
        Heartbeats {
            start: Instant::now(),
            last_ms: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(super) fn beat(&self, core: usize) {
        if let Some(slot) = self.last_ms.get(core) {
            slot.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// How long `core` has been silent since it last beat or since
    /// `watched_since_ms` (a [`Heartbeats::now_ms`] value), whichever is
    /// later: silence counts only while someone was watching. A machine
    /// paused (a VM frozen, every thread starved) stops the cores and their
    /// watcher alike, and must not read as every core stuck.
    pub(super) fn silent_for(&self, core: usize, watched_since_ms: u64) -> Duration {
        let last = self
            .last_ms
            .get(core)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        Duration::from_millis(self.now_ms().saturating_sub(last.max(watched_since_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_resets_the_silence_of_its_core_only() {
        let h = Heartbeats::new(2);
        std::thread::sleep(Duration::from_millis(30));
        h.beat(1);
        assert!(h.silent_for(0, 0) >= Duration::from_millis(30));
        assert!(h.silent_for(1, 0) < Duration::from_millis(30));
        h.beat(7); // no such core: ignored
                   // Watched only from now on: no silence counted before.
        assert!(h.silent_for(0, h.now_ms()) < Duration::from_millis(30));
    }
}
