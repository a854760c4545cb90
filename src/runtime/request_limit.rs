//! A core's limit on requests at work (`--max-active-requests-per-core`),
//! shared by the HTTP layer, which keeps to it, and the database pools,
//! which report their round trips to it when it is tuned (`auto`).

use std::cell::{Cell, RefCell};
use std::time::Instant;

use super::limit_tuner::LimitTuner;

#[derive(Default)]
pub struct RequestLimit {
    /// Requests at work at once (0: no limit).
    limit: Cell<usize>,
    tuner: RefCell<Option<LimitTuner>>,
}

impl RequestLimit {
    pub fn get(&self) -> usize {
        self.limit.get()
    }

    pub fn set_fixed(&self, limit: usize) {
        self.limit.set(limit);
        *self.tuner.borrow_mut() = None;
    }

    /// Tunes the limit to the database's round trips (see `limit_tuner`),
    /// for a pool of `connections`, each `pipeline_depth` queries deep.
    pub fn tune_for_pool(&self, connections: usize, pipeline_depth: usize) {
        let tuner = LimitTuner::for_pool(connections, pipeline_depth);
        self.limit.set(tuner.limit());
        *self.tuner.borrow_mut() = Some(tuner);
    }

    /// Whether round trips are wanted (the clock is read only then).
    pub fn is_tuned(&self) -> bool {
        self.tuner.borrow().is_some()
    }

    /// Whether a no-load probe runs: the pools then send each statement on
    /// a connection of its own, as the probe's measure assumes.
    pub fn is_probing(&self) -> bool {
        self.tuner
            .borrow()
            .as_ref()
            .is_some_and(LimitTuner::is_probing)
    }

    /// A statement's round trip through a pool, from `started` to now;
    /// `unqueued`: its backend had nothing else in flight.
    pub fn note_round_trip(&self, started: Instant, unqueued: bool) {
        self.with_tuner(|t| t.done(started, Instant::now(), unqueued));
    }

    /// A statement that got no answer, or a second gone by: a probe past
    /// its bound ends.
    pub fn tick(&self) {
        self.with_tuner(|t| t.tick(Instant::now()));
    }

    fn with_tuner(&self, f: impl FnOnce(&mut LimitTuner) -> Option<usize>) {
        let mut tuner = self.tuner.borrow_mut();
        if let Some(limit) = tuner.as_mut().and_then(f) {
            self.limit.set(limit);
        }
    }
}
