//! The IMF-fixdate used in the `Date` header ("Sun, 06 Nov 1994 08:49:37 GMT").

use std::time::SystemTime;

/// An IMF-fixdate, always 29 ASCII bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpDate([u8; 29]);

impl HttpDate {
    /// Formats `t` (seconds resolution, UTC). Pure arithmetic: no locale, no tz
    /// database, no allocation.
    pub fn from_system_time(t: SystemTime) -> Self {
        let _ = t;
        todo!()
    }
    pub fn as_bytes(&self) -> &[u8; 29] {
        &self.0
    }
}
