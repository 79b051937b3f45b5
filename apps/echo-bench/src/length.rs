//! How long a load run lasts; shared by echo-bench and http-load (which
//! includes this file with `#[path]`, as it does `hist.rs`).

use core::time::Duration;
use libos::time::Instant;

/// How long a run lasts, as given.
#[derive(Clone, Copy)]
pub enum Length {
    Millis(u64),
    /// Round trips (or requests) per connection.
    Count(u64),
}

/// When each connection stops.
#[derive(Clone, Copy)]
pub enum Until {
    /// Start no round trip after this.
    Time(Instant),
    /// This many round trips.
    Count(u64),
}

impl Length {
    /// `"10000"` (milliseconds) or `"100x"` (a count per connection).
    pub fn parse(s: &str) -> Option<Length> {
        match s.strip_suffix('x') {
            Some(n) => n.parse().ok().map(Length::Count),
            None => s.parse().ok().map(Length::Millis),
        }
    }

    /// When connections that start at `start` stop.
    pub fn until(self, start: Instant) -> Until {
        match self {
            Length::Millis(ms) => Until::Time(start.saturating_add(Duration::from_millis(ms))),
            Length::Count(n) => Until::Count(n),
        }
    }
}

impl Until {
    /// When to stop waiting for stuck connections: 10 s after the end (a
    /// count run may take up to 10 minutes).
    pub fn give_up(self, start: Instant) -> Instant {
        match self {
            Until::Time(deadline) => deadline.saturating_add(Duration::from_secs(10)),
            Until::Count(_) => start.saturating_add(Duration::from_secs(600)),
        }
    }
}
