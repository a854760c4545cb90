//! Keeping members connected: a supervisor per member reconnects with
//! jittered backoff, and a watcher gives suspect members (a query passed
//! its deadline) their queries back once they answer again.

use std::cell::Cell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::{Member, Pool};
use crate::pg::conn::PgConn;
use crate::pg::QueryError;
use crate::runtime::catch_panic;
use crate::runtime::deadlines::DeadlineTable;

/// A small pseudo-random number (xorshift, seeded per core from the clock):
/// enough to spread reconnects, no dependency for it.
fn jitter_ms(max: u64) -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
                | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        if max == 0 {
            0
        } else {
            x % (max + 1)
        }
    })
}

/// Keeps one member connected: connects, waits until the connection
/// breaks, reconnects. Reconnects are spread: a broken connection waits a
/// random 0–100 ms first (a server restart breaks every member of every
/// core at once), and failed attempts back off exponentially, 100 ms
/// doubling to 5 s, each wait jittered by up to half of itself.
pub(super) async fn supervise(pool: Weak<Pool>, index: usize) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.closed.get() {
            return;
        }
        // A panic while connecting (a bug in the startup or authentication
        // exchange) fails this attempt only; the core serves on.
        let attempt =
            match catch_panic(PgConn::connect(&p.cfg, &p.addrs, p.settings.conn.clone())).await {
                Ok(attempt) => attempt,
                Err(why) => {
                    tracing::error!("connecting to the database panicked (a bug): {why}");
                    Err(QueryError::Unavailable(format!(
                        "internal error while connecting: {why}"
                    )))
                }
            };
        match attempt {
            Ok(conn) => {
                backoff = Duration::from_millis(100);
                if !first {
                    p.stats.borrow_mut().reconnects += 1;
                }
                first = false;
                let weak = Rc::downgrade(&p);
                conn.set_on_idle(Box::new(move || {
                    if let Some(pool) = weak.upgrade() {
                        pool.on_progress();
                    }
                }));
                {
                    let mut members = p.members.borrow_mut();
                    members[index] = Member {
                        conn: Some(conn.clone()),
                        exclusive: false,
                        suspect_since: None,
                    };
                }
                p.wake_all();
                drop(p);
                // Wait for the connection to break, checking now and then.
                while !conn.is_broken() {
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    if pool.upgrade().is_none_or(|p| p.closed.get()) {
                        conn.close("pool closed");
                        return;
                    }
                }
                if let Some(p) = pool.upgrade() {
                    let mut members = p.members.borrow_mut();
                    members[index].conn = None;
                    members[index].exclusive = false;
                    drop(members);
                    p.wake_all();
                }
                monoio::time::sleep(Duration::from_millis(jitter_ms(100))).await;
            }
            Err(e) => {
                *p.last_error.borrow_mut() = Some(e.to_string());
                p.wake_all();
                drop(p);
                let spread = Duration::from_millis(jitter_ms(backoff.as_millis() as u64 / 2));
                monoio::time::sleep(backoff + spread).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Ticks the pool's query deadlines; clears suspects that answered again,
/// and closes those that stay stuck (a backend stopped with SIGSTOP never
/// answers its cancel).
pub(super) async fn watch_suspects(pool: Weak<Pool>) {
    // Also the ticker of the pool's query deadlines: an eighth of the query
    // timeout, 20 to 100 ms.
    let tick = pool.upgrade().map_or(Duration::from_millis(100), |p| {
        DeadlineTable::tick_for(&[p.settings.query_timeout])
    });
    loop {
        monoio::time::sleep(tick).await;
        let Some(p) = pool.upgrade() else { return };
        p.deadlines.tick(monoio::time::Instant::now());
        let limit = p.settings.query_timeout * 2;
        let mut members = p.members.borrow_mut();
        let mut woke = false;
        for m in members.iter_mut() {
            let Some(since) = m.suspect_since else {
                continue;
            };
            match &m.conn {
                Some(c) if c.in_flight() == 0 && !c.is_broken() => {
                    m.suspect_since = None;
                    woke = true;
                }
                Some(c) if since.elapsed() > limit => {
                    c.close("no answer after a cancelled query");
                    m.suspect_since = None;
                }
                None => m.suspect_since = None,
                _ => {}
            }
        }
        drop(members);
        if woke {
            p.wake_all();
        }
    }
}
