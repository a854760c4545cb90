//! The limit on requests at work that `--max-active-requests-per-core auto`
//! tunes, from how long the database takes to answer (sans-I/O: round trips
//! in, limits out; `request_limit.rs` feeds it).
//!
//! Why it moves: a database on the server's machine is kept busy by a few
//! requests per pool connection, and every request past those only waits in
//! its queue while its frames, rows and answer crowd the CPU's caches (64 at
//! work cost a third less CPU per `/orders` request than 1,000). A database
//! 20 ms away needs hundreds in flight to be kept busy (Little's law:
//! throughput × round trip), and a limit of 64 there would cap it.
//!
//! What it measures: each statement's round trip through the pool, from
//! the call to its answer (the wait for a pipeline slot, the queue at the
//! backend, the network, the execution). Not the requests' own times: the
//! many that never touch the database would pull them down.
//!
//! How (the gradient method of Netflix's concurrency-limits and Envoy's
//! adaptive concurrency filter): now and then the limit is pinned to one
//! request per pool connection, and the median round trip of statements
//! that started under that pin is the no-load time (the median: the first
//! ones after a start also wait for the pool's connections to open).
//! Between these probes, each window's mean round trip is compared with
//! it: while statements take under `TOLERANCE` × the no-load time, they
//! are not queueing and the limit may grow; past it, the limit shrinks in
//! proportion, down to its floor. The probes run at fixed times from the
//! server's start, so the cores of one server probe together and do not
//! load the database under each other's measurement.

use std::time::{Duration, Instant};

/// Mean round trip, as a multiple of the no-load time, above which the
/// limit shrinks.
const TOLERANCE: f64 = 2.0;
/// How often the no-load time is measured again.
const PROBE_EVERY: Duration = Duration::from_secs(30);
/// Requests measured under the pin per pool connection (at least and at
/// most so many, for a steady median).
const PROBE_SAMPLES_PER_PIN: usize = 4;
const PROBE_SAMPLES: std::ops::RangeInclusive<usize> = 32..=256;
/// A probe that has not finished by then (no load, a stalled database) ends
/// with what it has: the pin must not outlast a burst of slow statements.
const PROBE_AT_MOST: Duration = Duration::from_millis(500);
/// Shortest window between two changes, and how many no-load times it spans
/// at least (a change needs a round trip before it shows in the times).
const WINDOW_AT_LEAST: Duration = Duration::from_millis(100);
const WINDOW_IN_NO_LOAD_TIMES: u32 = 4;
const WINDOW_SAMPLES_MIN: u32 = 16;

/// The same instant for every core of the server (set by the first to
/// ask): their probes fall together.
fn server_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(crate) struct LimitTuner {
    floor: usize,
    ceiling: usize,
    /// The limit while the no-load time is measured.
    pin: usize,
    limit: usize,
    /// Median round trip under the pin, from the last probe.
    no_load: Option<Duration>,
    probe: Option<Probe>,
    epoch: Instant,
    next_probe: Instant,
    window: Window,
}

struct Probe {
    since: Instant,
    /// The limit to go back to.
    resume: usize,
    samples: Vec<Duration>,
    enough: usize,
}

#[derive(Default)]
struct Window {
    since: Option<Instant>,
    total: Duration,
    count: u32,
}

impl Window {
    fn add(&mut self, took: Duration) {
        self.total += took;
        self.count += 1;
    }

    fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| self.total / self.count)
    }
}

/// The fewest requests at work the tuner goes down to, per pool
/// connection: enough to keep each backend busy while its last answers
/// are read and the next queries written; and at least 64, the best of the
/// fixed limits measured with PostgreSQL on the server's CPU and a pool of
/// 8 (32 gained nothing, 16 lost throughput; bench/targets.md).
const FLOOR_PER_CONNECTION: usize = 8;
const FLOOR_AT_LEAST: usize = 64;

impl LimitTuner {
    /// The tuner of a core whose pool has `connections`, each
    /// `pipeline_depth` queries deep: between the floor and all the queries
    /// the pool can have in flight.
    pub(crate) fn for_pool(connections: usize, pipeline_depth: usize) -> Self {
        let ceiling = connections * pipeline_depth;
        let floor = (connections * FLOOR_PER_CONNECTION).max(FLOOR_AT_LEAST);
        LimitTuner::new(connections, floor, ceiling, server_epoch())
    }

    /// `pin`: the pool's connections (one query each in flight, none
    /// queued); `floor`..=`ceiling` bound the limit, which starts at the
    /// floor and grows from there when round trips allow (a far database
    /// gets to the ceiling within about a second): started at the ceiling,
    /// a server with its database near had hundreds of requests at work in
    /// its first half second, and spent 3–7 % more CPU per request for the
    /// rest of its run than one held to the floor from the start
    /// (bench/targets.md). `epoch`: the server's start, the probes' time
    /// base.
    pub(crate) fn new(pin: usize, floor: usize, ceiling: usize, epoch: Instant) -> Self {
        let ceiling = ceiling.max(1);
        LimitTuner {
            floor: floor.clamp(1, ceiling),
            ceiling,
            pin: pin.clamp(1, ceiling),
            limit: floor.clamp(1, ceiling),
            no_load: None,
            probe: None,
            epoch,
            // The first probe comes with the first round trip.
            next_probe: epoch,
            window: Window::default(),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the limit is pinned for a no-load probe (one statement per
    /// pool connection wanted, none sharing a write).
    pub(crate) fn is_probing(&self) -> bool {
        self.probe.is_some()
    }

    /// The no-load time from the last probe.
    #[cfg(test)]
    pub(crate) fn no_load(&self) -> Option<Duration> {
        self.no_load
    }

    /// A statement's round trip from `started` to `now`; `unqueued`: it
    /// was sent to a backend with nothing else in flight. Returns the limit
    /// when it changed.
    pub(crate) fn done(&mut self, started: Instant, now: Instant, unqueued: bool) -> Option<usize> {
        let took = now.saturating_duration_since(started);
        if let Some(probe) = &mut self.probe {
            // Only statements that started under the pin and found their
            // backend idle: a request let in before the pin may start its
            // next statement now, behind the queue the pin is draining.
            if started >= probe.since && unqueued {
                probe.samples.push(took);
            }
            if probe.samples.len() < probe.enough {
                return self.tick(now);
            }
            return self.end_probe();
        }
        if now >= self.next_probe {
            // The next probe on the fixed grid from the epoch, at least half
            // a period on (a core idle for a while skips the ones it missed,
            // and one late on the grid is not followed by another at once).
            let half_on = (now + PROBE_EVERY / 2).duration_since(self.epoch);
            let periods = half_on.as_nanos() / PROBE_EVERY.as_nanos() + 1;
            self.next_probe = self.epoch + PROBE_EVERY * periods as u32;
            let enough = (self.pin * PROBE_SAMPLES_PER_PIN)
                .clamp(*PROBE_SAMPLES.start(), *PROBE_SAMPLES.end());
            self.probe = Some(Probe {
                since: now,
                resume: self.limit,
                samples: Vec::with_capacity(enough),
                enough,
            });
            return self.set(self.pin);
        }
        let no_load = self.no_load?;
        let span = WINDOW_AT_LEAST.max(no_load * WINDOW_IN_NO_LOAD_TIMES);
        // A window left open through a lull starts again: its few round
        // trips are from another time.
        if self
            .window
            .since
            .is_some_and(|since| now > since + span * 10)
        {
            self.window = Window::default();
        }
        let since = *self.window.since.get_or_insert(now);
        self.window.add(took);
        if now < since + span || self.window.count < WINDOW_SAMPLES_MIN {
            return None;
        }
        let mean = self.window.mean()?;
        self.window = Window::default();
        // At most half or double the limit; the square root is headroom, so
        // a limit reached with no queueing still grows.
        let gradient =
            (TOLERANCE * no_load.as_secs_f64() / mean.as_secs_f64().max(1e-9)).clamp(0.5, 2.0);
        let limit = self.limit as f64;
        let target = limit * gradient + limit.sqrt();
        // Down at once, up by a quarter of the way: one window of short
        // times (a lull) must not let a crowd in at once.
        let next = if target > limit {
            limit + ((target - limit) / 4.0).max(1.0)
        } else {
            target
        };
        self.set(next as usize)
    }

    /// Ends a probe that is past its bound (with no statement answered, a
    /// pin must not last as long as an outage). Called with every round
    /// trip, every failed statement and once a second.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<usize> {
        match &self.probe {
            Some(probe) if now >= probe.since + PROBE_AT_MOST => self.end_probe(),
            _ => None,
        }
    }

    fn end_probe(&mut self) -> Option<usize> {
        let mut probe = self.probe.take()?;
        if !probe.samples.is_empty() {
            let middle = probe.samples.len() / 2;
            self.no_load = Some(*probe.samples.select_nth_unstable(middle).1);
        }
        self.window = Window::default();
        self.set(probe.resume)
    }

    fn set(&mut self, limit: usize) -> Option<usize> {
        let limit = if self.probe.is_some() {
            limit
        } else {
            limit.clamp(self.floor, self.ceiling)
        };
        (limit != self.limit).then(|| {
            self.limit = limit;
            limit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Statements that each take `took`, one answered every `every`, from
    /// `from`, until `until`; returns the time after the last.
    fn run(
        t: &mut LimitTuner,
        from: Instant,
        until: Instant,
        every: Duration,
        took: impl Fn(usize) -> Duration,
    ) -> Instant {
        let mut now = from;
        while now < until {
            let took = took(t.limit());
            t.done(now.checked_sub(took).unwrap_or(now), now, true);
            now += every;
        }
        now
    }

    /// A database that answers one statement per 50 µs, whatever the
    /// limit, in 0.3 ms when idle: the round trip grows with the requests
    /// at work (Little's law), so the limit goes to its floor.
    #[test]
    fn queueing_brings_the_limit_to_its_floor() {
        let epoch = Instant::now();
        let mut t = LimitTuner::new(8, 64, 512, epoch);
        let service = Duration::from_micros(50);
        let queued = |limit: usize| MS * 3 / 10 + service * limit as u32;
        let end = run(&mut t, epoch + MS, epoch + MS * 2000, service, queued);
        let no_load = t.no_load().unwrap();
        assert!(no_load < MS, "{no_load:?}");
        assert_eq!(t.limit(), 64);
        // And it stays there.
        run(&mut t, end, end + MS * 1000, service, queued);
        assert_eq!(t.limit(), 64);
    }

    /// A database 20 ms away that answers one statement per 70 µs: the
    /// round trip dominates until the limit nears 20 ms / 70 µs ≈ 285, so
    /// the limit grows from its floor past that within a second and
    /// settles there, never back down at its floor.
    #[test]
    fn a_far_database_gets_a_high_limit_soon_and_keeps_it() {
        let epoch = Instant::now();
        let mut t = LimitTuner::new(8, 64, 512, epoch);
        assert_eq!(t.limit(), 64);
        let service = Duration::from_micros(70);
        let far = |limit: usize| (MS * 20 + service).max(service * limit as u32);
        let end = run(&mut t, epoch + MS, epoch + MS * 1000, service, far);
        assert!(t.limit() >= 290, "after a second: {}", t.limit());
        run(&mut t, end, epoch + MS * 10_000, service, far);
        let no_load = t.no_load().unwrap();
        assert!(no_load >= MS * 20 && no_load < MS * 21, "{no_load:?}");
        assert!(t.limit() >= 290, "{}", t.limit());
    }

    /// The limit is pinned while the no-load time is measured, counting
    /// only statements that started under the pin, then goes back; the next
    /// probe comes on the grid from the epoch.
    #[test]
    fn a_probe_pins_the_limit_then_resumes() {
        let epoch = Instant::now();
        let mut t = LimitTuner::new(8, 64, 512, epoch);
        let now = epoch + MS;
        assert_eq!(t.done(now - MS, now, true), Some(8));
        // Started before the pin, or queued behind others: not no-load
        // times.
        for _ in 0..100 {
            t.done(epoch, now + MS, true);
            t.done(now + MS, now + MS * 50, false);
        }
        assert_eq!(t.limit(), 8);
        for _ in 0..31 {
            assert_eq!(t.done(now + MS, now + MS * 2, true), None);
        }
        // Back to where it was: the floor, where it starts.
        assert_eq!(t.done(now + MS, now + MS * 2, true), Some(64));
        assert_eq!(t.no_load(), Some(MS));
        assert_eq!(t.next_probe, epoch + PROBE_EVERY);
        // A probe late on the grid is not followed by another at once.
        let late = epoch + PROBE_EVERY * 2 - MS;
        assert_eq!(t.done(late - MS, late, true), Some(8));
        assert_eq!(t.next_probe, epoch + PROBE_EVERY * 3);
    }

    /// A probe that gets no statement answered under the pin ends at its
    /// bound, on the once-a-second tick if nothing else comes.
    #[test]
    fn a_probe_ends_by_its_bound() {
        let epoch = Instant::now();
        let mut t = LimitTuner::new(8, 64, 512, epoch);
        t.done(epoch, epoch + MS, true);
        assert_eq!(t.limit(), 8);
        assert_eq!(t.tick(epoch + PROBE_AT_MOST), None);
        // No statement answered (the database down): the tick ends it.
        assert_eq!(t.tick(epoch + MS + PROBE_AT_MOST), Some(64));
        assert_eq!(t.no_load(), None);
    }
}
