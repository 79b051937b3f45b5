//! How long a load run lasts: a duration or a count of round trips (or
//! requests) per connection, and when each connection stops. Generic over
//! the clock's instant (`libos::time::Instant` in the guests), which must
//! add a [`Duration`] without overflowing (the libos's saturates).

use core::ops::Add;
use core::time::Duration;

/// How long a run lasts, as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Millis(u64),
    /// Round trips (or requests) per connection.
    Count(u64),
}

/// When each connection stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until<T> {
    /// Start no round trip after this.
    Time(T),
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
    pub fn until<T: Add<Duration, Output = T>>(self, start: T) -> Until<T> {
        match self {
            Length::Millis(ms) => Until::Time(start + Duration::from_millis(ms)),
            Length::Count(n) => Until::Count(n),
        }
    }
}

impl<T: Add<Duration, Output = T>> Until<T> {
    /// When to stop waiting for stuck connections: 10 s after the end (a
    /// count run may take up to 10 minutes).
    pub fn give_up(self, start: T) -> T {
        match self {
            Until::Time(deadline) => deadline + Duration::from_secs(10),
            Until::Count(_) => start + Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse_and_say_when_to_stop() {
        assert_eq!(Length::parse("10000"), Some(Length::Millis(10_000)));
        assert_eq!(Length::parse("500x"), Some(Length::Count(500)));
        for bad in ["", "x", "10s", "-1", "1.5"] {
            assert_eq!(Length::parse(bad), None, "{bad:?}");
        }
        // Instants as durations since some start.
        let start = Duration::from_secs(7);
        let until = Length::Millis(2500).until(start);
        assert_eq!(until, Until::Time(Duration::from_millis(9500)));
        assert_eq!(until.give_up(start), Duration::from_millis(19_500));
        let until = Length::Count(100).until(start);
        assert_eq!(until, Until::Count(100));
        assert_eq!(until.give_up(start), Duration::from_secs(607));
    }
}
