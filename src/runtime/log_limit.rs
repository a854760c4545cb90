//! Rate-limited logging: a flood of the same failure must not become a
//! flood of log lines (the writer is non-blocking, but its queue is finite).

/// Errors are logged at most a few times a second per core;
/// the rest are counted and the count is logged with the next line.
#[derive(Default)]
pub struct LogLimit {
    window: std::cell::Cell<u64>,
    in_window: std::cell::Cell<u32>,
    suppressed: std::cell::Cell<u64>,
}

impl LogLimit {
    const PER_SECOND: u32 = 5;

    /// `Some(lines suppressed since the last one)` when a line may be logged.
    pub fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.window.get() != now {
            self.window.set(now);
            self.in_window.set(0);
        }
        if self.in_window.get() >= Self::PER_SECOND {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.in_window.set(self.in_window.get() + 1);
        Some(self.suppressed.replace(0))
    }
}
