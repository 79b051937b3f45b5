//! Calendar arithmetic for the wall clock read from the CMOS RTC at boot.

/// Seconds since the Unix epoch for a UTC calendar time, or `None` if a
/// field is out of range (a broken RTC must not produce a wild clock).
pub fn unix_seconds(year: u32, month: u32, day: u32, hour: u32, min: u32, sec: u32) -> Option<u64> {
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for the proleptic Gregorian calendar.
    let y = if month <= 2 { year - 1 } else { year } as u64;
    let era = y / 400;
    let yoe = y - era * 400;
    let m = month as u64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour as u64 * 3600 + min as u64 * 60 + sec as u64)
}

/// Days in `month` (1..=12) of `year`, Gregorian leap years included.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Decodes a CMOS register value that may be BCD.
pub fn from_bcd(v: u8, binary: bool) -> u32 {
    if binary { v as u32 } else { (v >> 4) as u32 * 10 + (v & 0x0f) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), Some(951_868_800));
        assert_eq!(unix_seconds(2026, 11, 25, 19, 50, 10), Some(1_795_636_210));
        assert_eq!(unix_seconds(2024, 2, 29, 12, 0, 0), Some(1_709_208_000));
        assert_eq!(unix_seconds(2026, 13, 1, 0, 0, 0), None);
        assert_eq!(unix_seconds(1969, 12, 31, 0, 0, 0), None);
        // 31 February once became 3 March.
        assert_eq!(unix_seconds(2026, 2, 31, 0, 0, 0), None);
        assert_eq!(unix_seconds(2026, 4, 31, 0, 0, 0), None);
        assert_eq!(unix_seconds(2026, 2, 29, 0, 0, 0), None);
        assert_eq!(unix_seconds(2000, 2, 29, 0, 0, 0), Some(951_782_400));
        assert_eq!(unix_seconds(1900 + 200, 2, 29, 0, 0, 0), None);
        assert_eq!(unix_seconds(2026, 12, 31, 23, 59, 59), Some(1_798_761_599));
        assert_eq!(unix_seconds(2026, 1, 0, 0, 0, 0), None);
    }

    #[test]
    fn bcd() {
        assert_eq!(from_bcd(0x59, false), 59);
        assert_eq!(from_bcd(59, true), 59);
    }
}
