//! Scheduling policy: weighted fair share with optional caps.
//!
//! Each guest has a virtual runtime that advances by the CPU time it used,
//! scaled by `DEFAULT_WEIGHT / weight`; the runnable guest with the smallest
//! virtual runtime runs next, for at most one slice (as in CFS or stride
//! scheduling). A guest with a cap may use `cap`% of one CPU per
//! [`CAP_PERIOD_NS`]; past that it is throttled until the period ends.
//! Blocked guests cost nothing: they sit in the timer set (if they have a
//! deadline) or nowhere at all until an event wakes them.
//!
//! Pure policy over nanosecond timestamps: the hypervisor supplies the clock
//! and the timer; the tests here supply numbers.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

pub type Id = usize;

/// Weight a guest gets when the manifest names none.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The longest a guest runs before the scheduler looks again.
pub const SLICE_NS: u64 = 4_000_000;
/// The window over which caps are enforced.
pub const CAP_PERIOD_NS: u64 = 20_000_000;
/// How far behind the fairest guest a waking guest is placed: a little
/// credit for having slept, but never enough to monopolise the CPU.
const WAKE_CREDIT_NS: u64 = SLICE_NS / 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Runnable,
    Running,
    /// Waiting for an event, or until `deadline` (`u64::MAX`: none).
    Blocked {
        deadline: u64,
    },
    /// Used up its cap; runnable again at `until`.
    Throttled {
        until: u64,
    },
}

/// Why a guest left the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// Its slice ended or an interrupt came.
    Preempted,
    /// It gave up the CPU.
    Yielded,
    /// It blocked until an event or `deadline`.
    Blocked { deadline: u64 },
}

#[derive(Debug)]
struct Entity {
    weight: u64,
    /// CPU budget per period in ns, if capped.
    budget: Option<u64>,
    vruntime: u64,
    state: State,
    period_start: u64,
    used_in_period: u64,
}

/// A runnable guest moving from one CPU's scheduler to another's: its
/// standing relative to its old queue carries over to the new one.
#[derive(Debug)]
pub struct Migrant {
    entity: Entity,
    /// How far its virtual runtime was ahead of the old queue's minimum.
    lag: u64,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    ents: Vec<Option<Entity>>,
    runnable: BTreeSet<(u64, Id)>,
    /// Deadlines of blocked guests and ends of throttling.
    timers: BTreeSet<(u64, Id)>,
    min_vruntime: u64,
}

impl Scheduler {
    /// What one guest costs a scheduler: its entry, and its key in the run
    /// queue or the timer set (B-tree entries, node overhead not counted).
    pub const BYTES_PER_GUEST: usize = core::mem::size_of::<Option<Entity>>() + core::mem::size_of::<(u64, Id)>();

    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a runnable guest. `cap` is a percentage of one CPU.
    pub fn add(&mut self, id: Id, weight: u32, cap: Option<u32>, now: u64) {
        if self.ents.len() <= id {
            self.ents.resize_with(id + 1, || None);
        }
        let e = Entity {
            weight: weight.max(1) as u64,
            budget: cap.map(|c| CAP_PERIOD_NS * c.clamp(1, 100) as u64 / 100),
            vruntime: self.min_vruntime,
            state: State::Runnable,
            period_start: now,
            used_in_period: 0,
        };
        self.runnable.insert((e.vruntime, id));
        self.ents[id] = Some(e);
    }

    /// Forgets a guest (it exited or was stopped).
    pub fn remove(&mut self, id: Id) {
        if let Some(e) = self.ents.get_mut(id).and_then(Option::take) {
            self.unlink(id, &e);
        }
    }

    fn unlink(&mut self, id: Id, e: &Entity) {
        match e.state {
            State::Runnable => {
                self.runnable.remove(&(e.vruntime, id));
            }
            State::Blocked { deadline } => {
                self.timers.remove(&(deadline, id));
            }
            State::Throttled { until } => {
                self.timers.remove(&(until, id));
            }
            State::Running => {}
        }
    }

    pub fn state(&self, id: Id) -> Option<State> {
        self.ents.get(id)?.as_ref().map(|e| e.state)
    }

    /// Wakes a blocked guest (an event arrived). Returns whether it was
    /// blocked.
    pub fn wake(&mut self, id: Id) -> bool {
        let Some(e) = self.ents.get(id).and_then(Option::as_ref) else { return false };
        let State::Blocked { deadline } = e.state else { return false };
        self.timers.remove(&(deadline, id));
        self.make_runnable(id, true);
        true
    }

    fn make_runnable(&mut self, id: Id, waking: bool) {
        let floor = self.min_vruntime.saturating_sub(WAKE_CREDIT_NS);
        let Some(e) = self.ents[id].as_mut() else { return };
        if waking {
            e.vruntime = e.vruntime.max(floor);
        }
        e.state = State::Runnable;
        self.runnable.insert((e.vruntime, id));
    }

    /// Moves every guest whose deadline or throttle has passed back to the
    /// run queue; calls `timed_out` for each guest whose `block` deadline
    /// passed (the caller sets its timer event).
    pub fn expire(&mut self, now: u64, mut timed_out: impl FnMut(Id)) {
        while let Some(&(when, id)) = self.timers.first() {
            if when > now {
                break;
            }
            self.timers.pop_first();
            let blocked = matches!(self.state(id), Some(State::Blocked { .. }));
            if blocked {
                timed_out(id);
            }
            self.make_runnable(id, blocked);
        }
    }

    /// Takes the next guest to run and how long it may run (ns).
    pub fn pick(&mut self, now: u64) -> Option<(Id, u64)> {
        self.expire(now, |_| {});
        let (v, id) = self.runnable.pop_first()?;
        self.min_vruntime = self.min_vruntime.max(v);
        let e = self.ents[id].as_mut()?;
        e.state = State::Running;
        if now >= e.period_start.saturating_add(CAP_PERIOD_NS) {
            // A new period; time run past the last period's budget (a late
            // timer) is carried over, so the cap holds on average.
            let periods = (now - e.period_start) / CAP_PERIOD_NS;
            e.period_start += periods * CAP_PERIOD_NS;
            let budget = e.budget.unwrap_or(u64::MAX);
            e.used_in_period = e.used_in_period.saturating_sub(budget.saturating_mul(periods));
        }
        let slice = match e.budget {
            Some(b) => SLICE_NS.min(b.saturating_sub(e.used_in_period)).max(1),
            None => SLICE_NS,
        };
        Some((id, slice))
    }

    /// Returns a running guest after it ran `ran_ns`, for the reason `why`.
    pub fn put(&mut self, id: Id, now: u64, ran_ns: u64, why: Leave) {
        let next_vruntime = self.runnable.first().map(|&(v, _)| v);
        let Some(e) = self.ents.get_mut(id).and_then(Option::as_mut) else { return };
        debug_assert_eq!(e.state, State::Running);
        e.vruntime = e.vruntime.saturating_add(ran_ns.saturating_mul(DEFAULT_WEIGHT as u64) / e.weight);
        e.used_in_period = e.used_in_period.saturating_add(ran_ns);
        if let Some(budget) = e.budget
            && e.used_in_period >= budget
            && !matches!(why, Leave::Blocked { .. })
        {
            let until = e.period_start.saturating_add(CAP_PERIOD_NS).max(now);
            e.state = State::Throttled { until };
            self.timers.insert((until, id));
            return;
        }
        match why {
            Leave::Preempted => self.make_runnable(id, false),
            Leave::Yielded => {
                // Behind every other runnable guest, so yielding in a loop
                // hands the CPU to them instead of spinning on it.
                if let Some(v) = next_vruntime {
                    e.vruntime = e.vruntime.max(v.saturating_add(1));
                }
                self.make_runnable(id, false);
            }
            Leave::Blocked { deadline } => {
                e.state = State::Blocked { deadline };
                if deadline != u64::MAX {
                    self.timers.insert((deadline, id));
                }
            }
        }
    }

    /// Guests waiting to run (not counting the one running).
    pub fn runnable_len(&self) -> usize {
        self.runnable.len()
    }

    /// Removes the runnable guest that is least owed CPU (the largest
    /// virtual runtime), for another CPU to run.
    pub fn take_migrant(&mut self) -> Option<(Id, Migrant)> {
        let (v, id) = self.runnable.pop_last()?;
        let entity = self.ents.get_mut(id)?.take()?;
        Some((id, Migrant { lag: v.saturating_sub(self.min_vruntime), entity }))
    }

    /// Adds a guest taken from another CPU's scheduler.
    pub fn add_migrant(&mut self, id: Id, m: Migrant) {
        if self.ents.len() <= id {
            self.ents.resize_with(id + 1, || None);
        }
        let mut e = m.entity;
        e.vruntime = self.min_vruntime.saturating_add(m.lag);
        e.state = State::Runnable;
        self.runnable.insert((e.vruntime, id));
        self.ents[id] = Some(e);
    }

    /// The earliest time a blocked or throttled guest becomes runnable.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }

    pub fn has_runnable(&self) -> bool {
        !self.runnable.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the scheduler for `total` ns with every guest always busy;
    /// returns the CPU time each got.
    fn simulate(s: &mut Scheduler, n: usize, total: u64) -> Vec<u64> {
        let mut got = vec![0; n];
        let mut now = 0;
        while now < total {
            match s.pick(now) {
                Some((id, slice)) => {
                    now += slice;
                    got[id] += slice;
                    s.put(id, now, slice, Leave::Preempted);
                }
                None => now = s.next_timer().unwrap(),
            }
        }
        got
    }

    #[test]
    fn equal_weights_share_equally() {
        let mut s = Scheduler::new();
        for id in 0..3 {
            s.add(id, DEFAULT_WEIGHT, None, 0);
        }
        let got = simulate(&mut s, 3, 1_200_000_000);
        for g in &got {
            assert!(g.abs_diff(400_000_000) <= SLICE_NS, "{got:?}");
        }
    }

    #[test]
    fn weights_two_to_one() {
        let mut s = Scheduler::new();
        s.add(0, 200, None, 0);
        s.add(1, 100, None, 0);
        let got = simulate(&mut s, 2, 3_000_000_000);
        let ratio = got[0] as f64 / got[1] as f64;
        assert!((ratio - 2.0).abs() < 0.02, "{got:?} ratio {ratio}");
    }

    #[test]
    fn a_cap_holds_even_when_the_cpu_is_otherwise_idle() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, Some(25), 0);
        let mut now = 0;
        let mut used = 0;
        while now < 1_000_000_000 {
            match s.pick(now) {
                Some((id, slice)) => {
                    now += slice;
                    used += slice;
                    s.put(id, now, slice, Leave::Preempted);
                }
                None => now = s.next_timer().unwrap(),
            }
        }
        let share = used as f64 / now as f64;
        assert!(share <= 0.25 + 1e-9 && share > 0.24, "share {share}");
    }

    #[test]
    fn overruns_of_a_capped_slice_are_paid_back() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, Some(25), 0);
        let (mut now, mut used) = (0, 0);
        while now < 1_000_000_000 {
            match s.pick(now) {
                Some((id, slice)) => {
                    // The timer always fires 1 ms late.
                    let ran = slice + 1_000_000;
                    now += ran;
                    used += ran;
                    s.put(id, now, ran, Leave::Preempted);
                }
                None => now = s.next_timer().unwrap(),
            }
        }
        let share = used as f64 / now as f64;
        assert!(share <= 0.26, "share {share}");
    }

    #[test]
    fn a_capped_guest_beside_a_busy_one() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, Some(25), 0);
        s.add(1, DEFAULT_WEIGHT, None, 0);
        let got = simulate(&mut s, 2, 1_000_000_000);
        assert!(got[0] <= 250_000_000 + SLICE_NS, "{got:?}");
        assert!(got[1] >= 700_000_000, "{got:?}");
    }

    #[test]
    fn yielding_in_a_loop_does_not_starve_others() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, None, 0); // yields at once, always
        s.add(1, DEFAULT_WEIGHT, None, 0); // busy
        let (mut now, mut busy) = (0, 0);
        for _ in 0..10_000 {
            let (id, slice) = s.pick(now).unwrap();
            if id == 0 {
                now += 1_000;
                s.put(0, now, 1_000, Leave::Yielded);
            } else {
                now += slice;
                busy += slice;
                s.put(1, now, slice, Leave::Preempted);
            }
        }
        assert!(busy as f64 / now as f64 > 0.99, "busy got {busy} of {now}");
    }

    #[test]
    fn blocked_guests_wake_at_their_deadline_in_order_and_cost_nothing() {
        let mut s = Scheduler::new();
        for id in 0..3 {
            s.add(id, DEFAULT_WEIGHT, None, 0);
            let (got, _) = s.pick(0).unwrap();
            s.put(got, 0, 0, Leave::Blocked { deadline: [300, 100, 200][got] });
        }
        s.add(3, DEFAULT_WEIGHT, None, 0);
        let (id, _) = s.pick(0).unwrap();
        s.put(id, 10, 10, Leave::Blocked { deadline: u64::MAX });
        assert_eq!(s.pick(50), None, "nothing runnable before the first deadline");
        assert_eq!(s.next_timer(), Some(100));
        let mut woken = Vec::new();
        s.expire(250, |id| woken.push(id));
        assert_eq!(woken, [1, 2]);
        assert_eq!(s.state(3), Some(State::Blocked { deadline: u64::MAX }), "no deadline: waits for an event");
        assert!(s.wake(3));
        assert!(!s.wake(3), "waking a runnable guest is a no-op");
    }

    #[test]
    fn a_deadline_in_the_past_returns_at_once() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, None, 0);
        let (id, _) = s.pick(1_000).unwrap();
        s.put(id, 1_000, 0, Leave::Blocked { deadline: 5 });
        let mut woken = Vec::new();
        s.expire(1_000, |id| woken.push(id));
        assert_eq!(woken, [0]);
        assert_eq!(s.pick(1_000).map(|p| p.0), Some(0));
    }

    #[test]
    fn a_long_sleeper_gets_no_more_than_a_little_credit() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, None, 0);
        s.add(1, DEFAULT_WEIGHT, None, 0);
        let (a, _) = s.pick(0).unwrap();
        s.put(a, 0, 0, Leave::Blocked { deadline: u64::MAX });
        // The other runs alone for a long time.
        let mut now = 0;
        for _ in 0..1000 {
            let (b, slice) = s.pick(now).unwrap();
            now += slice;
            s.put(b, now, slice, Leave::Preempted);
        }
        s.wake(a);
        // The sleeper runs next, but then they alternate: it cannot bank its sleep.
        let order: Vec<_> = (0..6)
            .map(|_| {
                let (id, slice) = s.pick(now).unwrap();
                now += slice;
                s.put(id, now, slice, Leave::Preempted);
                id
            })
            .collect();
        assert_eq!(order[0], a);
        assert!(order.iter().filter(|&&i| i == a).count() <= 4, "{order:?}");
    }

    #[test]
    fn migrants_keep_their_place_relative_to_the_queue() {
        let mut a = Scheduler::new();
        let mut b = Scheduler::new();
        a.add(0, DEFAULT_WEIGHT, None, 0);
        a.add(1, 200, None, 0);
        // Let `a` advance so its min_vruntime differs from `b`'s.
        let mut now = 0;
        for _ in 0..10 {
            let (id, slice) = a.pick(now).unwrap();
            now += slice;
            a.put(id, now, slice, Leave::Preempted);
        }
        assert_eq!(a.runnable_len(), 2);
        let (id, m) = a.take_migrant().unwrap();
        assert_eq!(a.runnable_len(), 1);
        assert_eq!(a.state(id), None, "gone from the old queue");
        b.add_migrant(id, m);
        assert_eq!(b.state(id), Some(State::Runnable));
        assert_eq!(b.pick(now).map(|p| p.0), Some(id));
        assert!(a.pick(now).is_some());
    }

    #[test]
    fn removed_guests_leave_no_trace() {
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, None, 0);
        s.add(1, DEFAULT_WEIGHT, None, 0);
        let (id, _) = s.pick(0).unwrap();
        s.put(id, 0, 0, Leave::Blocked { deadline: 100 });
        s.remove(0);
        s.remove(1);
        assert_eq!(s.pick(1_000), None);
        assert_eq!(s.next_timer(), None);
    }
}
