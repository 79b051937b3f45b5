//! What every report has: rounding, the build and QEMU it measured, the
//! date, and where it goes.

use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::Which;
use crate::qemu::QEMU;
use crate::workspace_root;

/// The median (mean of the middle two for an even count); `None` if empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        len if len % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// Rounds every non-integer number in `v` to 3 decimals (the figures are
/// not nearly that precise; this keeps the JSON readable).
pub(super) fn round_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(r) = n.as_f64().and_then(|x| serde_json::Number::from_f64((x * 1e3).round() / 1e3)) {
                *n = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(round_floats),
        Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

/// The commit our side was built from, and whether the hypervisor, libos,
/// abi or apps had uncommitted changes (read-only git queries).
pub(super) fn build_info() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let changed = git(&["status", "--porcelain", "--untracked-files=no", "--", "hypervisor", "libos", "apps"]);
    json!({ "commit": commit, "uncommitted_changes": changed.map(|c| !c.is_empty()) })
}

/// `qemu-system-x86_64 --version`'s first line.
pub(super) fn qemu_version() -> Option<String> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string())
}

/// `t` as `2026-11-25T20:22:15Z` (UTC).
pub fn iso_date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where the JSON of `which` goes.
pub fn report_path(which: Which) -> PathBuf {
    workspace_root().join("target/bench").join(format!("{}.json", which.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_floats_are_rounded() {
        let mut v = json!({"a": 1.23456, "b": [2.0004, 7], "c": {"d": 1e-9}, "e": "x"});
        round_floats(&mut v);
        assert_eq!(v, json!({"a": 1.235, "b": [2.0, 7], "c": {"d": 0.0}, "e": "x"}));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn dates_are_utc_iso() {
        let at = |s| iso_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_638_393), "2026-11-25T20:26:33Z");
    }
}
