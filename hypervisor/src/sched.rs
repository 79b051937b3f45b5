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
//! Wake-up preemption (as CFS's `wakeup_gran` or Xen credit2's
//! `ratelimit`): a guest woken by an event or its deadline is placed at
//! most [`WAKE_CREDIT_NS`] behind the queue's minimum, and it takes the CPU
//! from the running guest at once only if its virtual runtime is more than
//! [`WAKEUP_GRANULARITY_NS`] (scaled by its weight) behind the running
//! guest's, and it has cap budget left ([`Scheduler::wake`] says so; the
//! machine then interrupts that CPU). A guest interrupted before its slice
//! ended (a wake-up IPI, a sleeper's deadline) gets the rest of its slice
//! back unless a runnable guest beats it by the same rule
//! ([`Scheduler::pick`]). Both rules only choose *when* a guest runs, never
//! how much: every nanosecond still advances the virtual runtime, so a guest
//! that blocks and wakes in a storm gets its share and no more.
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
pub const WAKE_CREDIT_NS: u64 = SLICE_NS / 2;
/// How far (in virtual ns of a default-weight guest) a woken guest must be
/// behind the running one to take the CPU from it before its slice ends:
/// less than [`WAKE_CREDIT_NS`], so that a sleeper beside CPU-bound guests
/// always does; more than nothing, so that two guests waking each other do
/// not trade the CPU on every event.
pub const WAKEUP_GRANULARITY_NS: u64 = 1_000_000;
/// An interrupted guest gets the rest of its slice back only if at least
/// this much is left (less is not worth an entry).
const MIN_RESUME_NS: u64 = 100_000;

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

/// What waking a guest did ([`Scheduler::wake`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// It was not blocked: nothing changed.
    NotBlocked,
    /// It is runnable, and the guest running on this CPU keeps the CPU
    /// until its slice ends or it leaves: no need to interrupt it.
    Queued,
    /// It is runnable and should take the CPU from the running guest now.
    Preempt,
    /// It is runnable and this CPU runs no guest (it may be halted).
    Idle,
}

/// The guest on the CPU now.
#[derive(Clone, Copy, Debug)]
struct Current {
    id: Id,
    since: u64,
    slice_end: u64,
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
    current: Option<Current>,
    /// The guest last put back before its slice ended, and when that slice
    /// was to end: it may get the rest.
    interrupted: Option<(Id, u64)>,
}

impl Scheduler {
    /// What one guest costs a scheduler: its entry, and its key in the run
    /// queue or the timer set (B-tree entries, node overhead not counted).
    pub const BYTES_PER_GUEST: usize = core::mem::size_of::<Option<Entity>>() + core::mem::size_of::<(u64, Id)>();

    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a runnable guest. `cap` is a percentage of one CPU.
    /// Guest `id`'s weight and budget per cap period (for tests).
    #[cfg(test)]
    pub fn weight_budget(&self, id: Id) -> Option<(u64, Option<u64>)> {
        self.ents.get(id)?.as_ref().map(|e| (e.weight, e.budget))
    }

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
        if self.current.is_some_and(|c| c.id == id) {
            self.current = None;
        }
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

    /// Wakes a blocked guest (an event arrived at `now`), and says whether
    /// it should take the CPU from the guest running here (module doc).
    pub fn wake(&mut self, id: Id, now: u64) -> Wake {
        let Some(e) = self.ents.get(id).and_then(Option::as_ref) else { return Wake::NotBlocked };
        let State::Blocked { deadline } = e.state else { return Wake::NotBlocked };
        self.timers.remove(&(deadline, id));
        self.make_runnable(id, true);
        let Some(cur) = self.current else { return Wake::Idle };
        let Some(c) = self.ents.get(cur.id).and_then(Option::as_ref) else { return Wake::Idle };
        let ran = now.saturating_sub(cur.since);
        let cur_vruntime = c.vruntime.saturating_add(ran.saturating_mul(DEFAULT_WEIGHT as u64) / c.weight);
        if self.beats(id, cur_vruntime, now) { Wake::Preempt } else { Wake::Queued }
    }

    /// Whether runnable guest `id` should run before a guest whose virtual
    /// runtime is `vruntime`: it is more than the wake-up granularity (in
    /// its own weight) behind, and has cap budget left at `now`.
    fn beats(&self, id: Id, vruntime: u64, now: u64) -> bool {
        let Some(e) = self.ents.get(id).and_then(Option::as_ref) else { return false };
        let granularity = WAKEUP_GRANULARITY_NS * DEFAULT_WEIGHT as u64 / e.weight;
        e.vruntime.saturating_add(granularity) < vruntime && budget_left(e, now) > 0
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

    /// Takes the next guest to run and how long it may run (ns): the guest
    /// with the least virtual runtime, or the guest interrupted last for
    /// the rest of its slice if none beats it (module doc).
    pub fn pick(&mut self, now: u64) -> Option<(Id, u64)> {
        self.expire(now, |_| {});
        let &(first_v, first) = self.runnable.first()?;
        let resume = self.interrupted.take().and_then(|(id, end)| {
            let e = self.ents.get(id)?.as_ref()?;
            let keep = e.state == State::Runnable && now < end && (first == id || !self.beats(first, e.vruntime, now));
            keep.then_some((e.vruntime, id, end.saturating_sub(now)))
        });
        let (v, id, most) = resume.unwrap_or((first_v, first, SLICE_NS));
        self.runnable.remove(&(v, id));
        self.min_vruntime = self.min_vruntime.max(v.min(first_v));
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
            Some(b) => most.min(b.saturating_sub(e.used_in_period)).max(1),
            None => most,
        };
        self.current = Some(Current { id, since: now, slice_end: now.saturating_add(slice) });
        Some((id, slice))
    }

    /// Returns a running guest after it ran `ran_ns`, for the reason `why`.
    pub fn put(&mut self, id: Id, now: u64, ran_ns: u64, why: Leave) {
        let next_vruntime = self.runnable.first().map(|&(v, _)| v);
        let slice_end = match self.current.take() {
            Some(c) if c.id == id => c.slice_end,
            other => {
                self.current = other;
                0
            }
        };
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
            Leave::Preempted => {
                if now.saturating_add(MIN_RESUME_NS) < slice_end {
                    self.interrupted = Some((id, slice_end));
                }
                self.make_runnable(id, false)
            }
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

/// What is left of `e`'s cap budget at `now` (a new period starts with
/// all of it, less what the last one overran); `u64::MAX` without a cap.
fn budget_left(e: &Entity, now: u64) -> u64 {
    let Some(budget) = e.budget else { return u64::MAX };
    let mut used = e.used_in_period;
    if now >= e.period_start.saturating_add(CAP_PERIOD_NS) {
        let periods = (now - e.period_start) / CAP_PERIOD_NS;
        used = used.saturating_sub(budget.saturating_mul(periods));
    }
    budget.saturating_sub(used)
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
        assert_eq!(s.wake(3, 250), Wake::Idle, "nothing runs: the CPU may be halted");
        assert_eq!(s.wake(3, 250), Wake::NotBlocked, "waking a runnable guest is a no-op");
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
        s.wake(a, now);
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

    #[test]
    fn a_woken_guest_preempts_only_when_far_enough_behind_and_within_its_cap() {
        const MS: u64 = 1_000_000;
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, None, 0); // sleeps
        s.add(1, DEFAULT_WEIGHT, None, 0); // computes
        let (a, _) = s.pick(0).unwrap();
        s.put(a, 0, 0, Leave::Blocked { deadline: u64::MAX });
        assert_eq!(s.pick(0), Some((1, SLICE_NS)));
        // Half a millisecond ahead is within the granularity: no preemption ...
        assert_eq!(s.wake(0, MS / 2), Wake::Queued);
        // ... and an interrupt that came anyway gives the runner the rest of its slice.
        s.put(1, MS / 2, MS / 2, Leave::Preempted);
        assert_eq!(s.pick(MS / 2), Some((1, SLICE_NS - MS / 2)), "the woken guest does not beat it");
        s.put(1, SLICE_NS, SLICE_NS - MS / 2, Leave::Preempted);
        assert_eq!(s.pick(SLICE_NS).map(|p| p.0), Some(0), "at the end of the slice, the one owed most");
        s.put(0, SLICE_NS, 0, Leave::Blocked { deadline: u64::MAX });
        let (b, _) = s.pick(SLICE_NS).unwrap();
        // Two milliseconds into the next slice the sleeper is far enough behind.
        assert_eq!(s.wake(0, SLICE_NS + 2 * MS), Wake::Preempt);
        s.put(b, SLICE_NS + 2 * MS, 2 * MS, Leave::Preempted);
        assert_eq!(s.pick(SLICE_NS + 2 * MS).map(|p| p.0), Some(0), "the interrupted guest is beaten");

        // A light guest needs to be further behind (its granularity is in its weight) ...
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT / 10, None, 0);
        s.add(1, DEFAULT_WEIGHT, None, 0);
        let (a, _) = s.pick(0).unwrap();
        s.put(a, 0, 0, Leave::Blocked { deadline: u64::MAX });
        s.pick(0).unwrap();
        assert_eq!(s.wake(0, 3 * MS), Wake::Queued);
        // ... and a capped guest with its budget spent waits for its turn.
        let mut s = Scheduler::new();
        s.add(0, DEFAULT_WEIGHT, Some(5), 0); // 1 ms per 20 ms
        s.add(1, DEFAULT_WEIGHT, None, 0);
        let (a, slice) = s.pick(0).unwrap();
        assert_eq!((a, slice), (0, MS));
        s.put(a, MS, MS, Leave::Blocked { deadline: u64::MAX });
        let (b, _) = s.pick(MS).unwrap();
        assert_eq!(s.wake(0, 4 * MS), Wake::Queued, "no budget left in this period");
        s.put(b, 4 * MS, 3 * MS, Leave::Preempted);
        assert_eq!(s.pick(4 * MS).map(|p| p.0), Some(b), "resumed: the capped guest cannot beat it");
    }

    /// Runs the storm guest 0 (each time it runs: computes `burst` ns, then
    /// blocks until `nap` ns later) beside busy guests, with the machine's
    /// rules: a sleeper's deadline interrupts the running guest, which
    /// goes back to the scheduler; returns the CPU time each got, and how
    /// often the storm guest ran within 100 us of a deadline of its own.
    fn storm(weights: &[u32], burst: u64, nap: u64, total: u64) -> (Vec<u64>, u64, u64) {
        let mut s = Scheduler::new();
        for (id, &w) in weights.iter().enumerate() {
            s.add(id, w, None, 0);
        }
        let (mut got, mut now, mut woke, mut prompt) = (vec![0; weights.len()], 0, None, 0);
        while now < total {
            let Some((id, slice)) = s.pick(now) else {
                now = s.next_timer().unwrap();
                continue;
            };
            if id == 0
                && let Some(deadline) = woke.take()
            {
                prompt += u64::from(now <= deadline + 100_000);
            }
            let stop = (now + slice).min(s.next_timer().unwrap_or(u64::MAX));
            let ran = if id == 0 { burst.min(stop - now) } else { stop - now };
            now += ran;
            got[id] += ran;
            if id == 0 && ran == burst {
                woke = Some(now + nap);
                s.put(0, now, ran, Leave::Blocked { deadline: now + nap });
            } else {
                s.put(id, now, ran, Leave::Preempted);
            }
        }
        (got, now, prompt)
    }

    #[test]
    fn a_guest_that_blocks_and_wakes_in_a_storm_gets_its_share_and_no_more() {
        const MS: u64 = 1_000_000;
        // (burst, nap): deadlines in the past, short naps between long
        // bursts, and the other way round.
        for (burst, nap) in [(20_000, 0), (3 * MS, 100_000), (2 * MS, 500_000), (200_000, MS), (SLICE_NS, 1)] {
            for weights in [&[100, 100, 100][..], &[100, 200, 100], &[300, 100]] {
                let (got, now, _) = storm(weights, burst, nap, 2_000_000_000);
                let share = weights[0] as f64 / weights.iter().sum::<u32>() as f64;
                let storm = got[0] as f64 / now as f64;
                assert!(storm <= share + 0.01, "burst {burst} nap {nap} weights {weights:?}: {storm:.3} of the CPU, share {share:.3}");
            }
        }
        // A storm guest that uses less than its share runs as soon as it wakes.
        let (got, now, prompt) = storm(&[100, 100, 100], 300_000, MS, 1_000_000_000);
        let wakes = got[0] / 300_000;
        assert!(got[0] as f64 / now as f64 <= 1.0 / 3.0, "{got:?}");
        assert!(prompt + 2 >= wakes, "{prompt} of {wakes} wake-ups ran within 100 us");
    }
}
