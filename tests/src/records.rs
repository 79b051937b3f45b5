//! The hypervisor's records on a console, read with the types it writes
//! them with (`abi::report`): no test picks fields out of JSON by name.

use abi::report::{GUEST_STATS_PREFIX, GuestStats, MACHINE_PREFIX, MachineStats};

/// Every `guest_stats` record on `console`, in order (a guest's own lines
/// begin with its `NAME| `, so none of them is taken for one).
pub fn guest_stats(console: &str) -> Vec<GuestStats> {
    records(console, GUEST_STATS_PREFIX)
}

/// The first `guest_stats` record of `guest`.
pub fn first_guest_stats(console: &str, guest: &str) -> Option<GuestStats> {
    guest_stats(console).into_iter().find(|s| s.guest == guest)
}

/// The last `guest_stats` record of `guest`.
pub fn last_guest_stats(console: &str, guest: &str) -> Option<GuestStats> {
    guest_stats(console).into_iter().rev().find(|s| s.guest == guest)
}

/// Every `machine` record on `console`, in order.
pub fn machine_stats(console: &str) -> Vec<MachineStats> {
    records(console, MACHINE_PREFIX)
}

fn records<T: serde::de::DeserializeOwned>(console: &str, prefix: &str) -> Vec<T> {
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(prefix))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a record that does not read as its type ({e}): {l}")))
        .collect()
}
