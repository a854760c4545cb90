//! Whether each core still turns its event loop: a core stuck in a loop
//! or a blocking call (a bug) serves nobody, yet neither panics nor ends.
//!
//! Each core shows two signs of life here: its deadline ticker stamps the
//! time (at most 100 ms apart while the loop parks between turns), and
//! every poll of a connection's task counts one (monoio fires timers only
//! when its loop parks, which a core that always has tasks ready may not
//! do for a while). The supervisor (`Server::join`, through [`Watch`])
//! reads both while it waits. These are the only values a core writes for
//! another thread to read, each in slots of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(super) struct Heartbeats {
    start: Instant,
    /// Per core: milliseconds from `start` to its last beat.
    last_ms: Box<[AtomicU64]>,
    /// Per core: task polls counted (it only ever changes).
    progress: Box<[AtomicU64]>,
}

impl Heartbeats {
    pub(super) fn new(cores: usize) -> Heartbeats {
        Heartbeats {
            start: Instant::now(),
            last_ms: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            progress: (0..cores).map(|_| AtomicU64::new(0)).collect(),
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

    /// Counts one poll of a task on `core`: one relaxed load and store by
    /// the one thread that writes the slot.
    #[inline]
    pub(super) fn progress(&self, core: usize) {
        if let Some(slot) = self.progress.get(core) {
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }
}

/// The supervisor's side: what it last saw of each core, and since when it
/// has watched without a gap.
pub(super) struct Watch {
    beats: std::sync::Arc<Heartbeats>,
    check_every: Duration,
    /// Since when every check came on time: silence counts only from then.
    /// A machine paused as a whole (a frozen VM, every thread starved)
    /// stops the cores and their watcher alike, and must not read as every
    /// core stuck.
    watched_since_ms: u64,
    last_check_ms: u64,
    /// Per core: the progress count last seen, and when it last changed.
    seen: Vec<(u64, u64)>,
}

impl Watch {
    pub(super) fn new(beats: std::sync::Arc<Heartbeats>, check_every: Duration) -> Watch {
        let now = beats.now_ms();
        let cores = beats.last_ms.len();
        Watch {
            beats,
            check_every,
            watched_since_ms: now,
            last_check_ms: now,
            seen: vec![(0, now); cores],
        }
    }

    /// Starts a round of checks.
    pub(super) fn start_round(&mut self) {
        let now = self.beats.now_ms();
        if now.saturating_sub(self.last_check_ms) > 2 * self.check_every.as_millis() as u64 + 100 {
            self.watched_since_ms = now;
        }
        self.last_check_ms = now;
    }

    /// How long `core` has shown no sign of life (no beat, no progress)
    /// while watched.
    pub(super) fn silent_for(&mut self, core: usize) -> Duration {
        let now = self.beats.now_ms();
        let progress = self
            .beats
            .progress
            .get(core)
            .map_or(0, |p| p.load(Ordering::Relaxed));
        let Some(seen) = self.seen.get_mut(core) else {
            return Duration::ZERO;
        };
        if seen.0 != progress {
            *seen = (progress, now);
        }
        let beat = self
            .beats
            .last_ms
            .get(core)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        let alive_at = beat.max(seen.1).max(self.watched_since_ms);
        Duration::from_millis(now.saturating_sub(alive_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_beat_or_progress_resets_the_silence_of_its_core_only() {
        let h = Arc::new(Heartbeats::new(3));
        let mut w = Watch::new(h.clone(), Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(40));
        h.beat(1);
        h.progress(2);
        h.beat(7); // no such core: ignored
        w.start_round();
        assert!(w.silent_for(0) >= Duration::from_millis(40));
        assert!(w.silent_for(1) < Duration::from_millis(40));
        assert!(
            w.silent_for(2) < Duration::from_millis(40),
            "progress seen now"
        );
        std::thread::sleep(Duration::from_millis(40));
        w.start_round();
        assert!(
            w.silent_for(2) >= Duration::from_millis(40),
            "no progress since"
        );
    }

    #[test]
    fn silence_counts_only_while_watched_without_a_gap() {
        let h = Arc::new(Heartbeats::new(1));
        let mut w = Watch::new(h, Duration::from_millis(10));
        // The watcher itself was away far longer than it checks.
        std::thread::sleep(Duration::from_millis(200));
        w.start_round();
        assert!(w.silent_for(0) < Duration::from_millis(100));
    }
}
