//! A small single-threaded async executor: [`block_on`], [`spawn`],
//! [`sleep`] and [`JoinHandle`]s to join tasks.
//!
//! When no task is ready, the executor blocks in the hypervisor until the
//! earliest timer is due or an event arrives; it never busy-polls.

use crate::sys::{InSharedPage, OneThread};
use crate::time::{Instant, block_until};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use spin::Mutex;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Tasks ready to be polled, by id. A `Mutex` only because `Waker`s must be
/// `Send + Sync`; a guest is single-threaded, so it is never contended.
/// (This state and the rest the executor writes whenever it runs is in the
/// guest's part of its shared page: `InSharedPage`.)
static READY: InSharedPage<Mutex<VecDeque<usize>>> = InSharedPage::new(|| Mutex::new(VecDeque::new()));
/// Pending timers: (deadline, sequence) -> the waker to call.
static TIMERS: InSharedPage<Mutex<BTreeMap<(Instant, u64), Waker>>> = InSharedPage::new(|| Mutex::new(BTreeMap::new()));
static TIMER_SEQ: InSharedPage<Mutex<u64>> = InSharedPage::new(|| Mutex::new(0));

struct Executor {
    tasks: Vec<Option<Task>>,
    /// Task slot `i`'s waker, made once per slot (a reused slot keeps it:
    /// a stale wake-up only polls the new task once more).
    wakers: Vec<Waker>,
    free: Vec<usize>,
}

/// Tasks spawned but not yet handed to the running executor.
static SPAWNED: InSharedPage<Mutex<Vec<OneThread<Task>>>> = InSharedPage::new(|| Mutex::new(Vec::new()));

/// Places the executor's state (each `InSharedPage` above) at start-up,
/// before anything can clone this guest.
pub(crate) fn place_state() {
    let _ = (&*SPAWNED, &*READY, &*TIMER_SEQ, &*TIMERS);
}

/// Wakes task `.0`: puts its id on the ready queue.
struct TaskWaker(usize);

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        READY.lock().push_back(self.0);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        READY.lock().push_back(self.0);
    }
}

/// Runs `main` (and every task it spawns) to completion of `main`.
pub fn block_on<T: 'static>(main: impl Future<Output = T> + 'static) -> T {
    let out: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
    let slot = out.clone();
    let mut ex = Executor { tasks: Vec::new(), wakers: Vec::new(), free: Vec::new() };
    ex.add(Box::pin(async move {
        *slot.borrow_mut() = Some(main.await);
    }));
    loop {
        ex.adopt_spawned();
        // Move frames in and out; this wakes the tasks whose sockets changed.
        crate::net::poll();
        let next = READY.lock().pop_front();
        if let Some(id) = next {
            ex.poll(id);
            if let Some(v) = out.borrow_mut().take() {
                crate::net::poll();
                crate::net::kick();
                return v;
            }
            continue;
        }
        if fire_timers() {
            continue;
        }
        // Nothing to do: sleep in the hypervisor until the next timer, the
        // network stack's next deadline, or an event (frames arriving). The
        // hypervisor forwards our queued frames when we block.
        let mut deadline = TIMERS.lock().first_key_value().map_or(Instant::MAX, |(k, _)| k.0);
        if let Some(at) = crate::net::poll_at() {
            // With the TX ring full, "poll now" means "once there is room":
            // the hypervisor drains the ring as we block and raises
            // `events::NET_TX` when it made room, so block rather than spin.
            if at > Instant::now() || !crate::net::tx_stalled() {
                deadline = deadline.min(at);
            }
        }
        if deadline > Instant::now() {
            block_until(deadline);
        }
    }
}

impl Executor {
    fn add(&mut self, task: Task) {
        let id = match self.free.pop() {
            Some(id) => {
                self.tasks[id] = Some(task);
                id
            }
            None => {
                self.tasks.push(Some(task));
                self.wakers.push(Waker::from(Arc::new(TaskWaker(self.tasks.len() - 1))));
                self.tasks.len() - 1
            }
        };
        READY.lock().push_back(id);
    }

    fn adopt_spawned(&mut self) {
        let spawned: Vec<OneThread<Task>> = core::mem::take(&mut *SPAWNED.lock());
        for t in spawned {
            self.add(t.0);
        }
    }

    fn poll(&mut self, id: usize) {
        let Some(Some(task)) = self.tasks.get_mut(id) else { return };
        if task.as_mut().poll(&mut Context::from_waker(&self.wakers[id])).is_ready() {
            self.tasks[id] = None;
            self.free.push(id);
        }
    }
}

/// Wakes every timer that is due; returns whether any was.
fn fire_timers() -> bool {
    let now = Instant::now();
    let mut fired = false;
    loop {
        let due = {
            let mut t = TIMERS.lock();
            match t.first_key_value() {
                Some((k, _)) if k.0 <= now => t.pop_first().map(|(_, w)| w),
                _ => None,
            }
        };
        match due {
            Some(w) => {
                w.wake();
                fired = true;
            }
            None => return fired,
        }
    }
}

/// The result of a spawned task, awaitable.
pub struct JoinHandle<T> {
    state: Rc<RefCell<(Option<T>, Option<Waker>)>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Starts `fut` as a task of the running executor.
pub fn spawn<T: 'static>(fut: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let state: Rc<RefCell<(Option<T>, Option<Waker>)>> = Rc::new(RefCell::new((None, None)));
    let s = state.clone();
    let task: Task = Box::pin(async move {
        let v = fut.await;
        let mut st = s.borrow_mut();
        st.0 = Some(v);
        if let Some(w) = st.1.take() {
            w.wake();
        }
    });
    SPAWNED.lock().push(OneThread(task));
    JoinHandle { state }
}

impl<T> JoinHandle<T> {
    /// The task's result if it has finished (without waiting).
    pub fn try_take(&self) -> Option<T> {
        self.state.borrow_mut().0.take()
    }
}

/// Waits for every handle, returning the results in order.
pub async fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

/// Completes at `deadline`. Dropping it early (a timeout that lost a race)
/// removes its timer.
pub struct Sleep {
    deadline: Instant,
    /// Its key in `TIMERS` once registered.
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let mut s = TIMER_SEQ.lock();
                *s += 1;
                (self.deadline, *s)
            }
        };
        // (Re-)register with the waker of the task polling now.
        TIMERS.lock().insert(key, cx.waker().clone());
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            TIMERS.lock().remove(&k);
        }
    }
}

/// Completes after `d`.
pub fn sleep(d: Duration) -> Sleep {
    Sleep { deadline: Instant::now().saturating_add(d), key: None }
}

/// Completes at `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, key: None }
}

/// Runs `fut` for at most `d`: its output, or `None` if `d` passed first
/// (`fut` is then dropped).
pub async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = core::pin::pin!(fut);
    let mut limit = core::pin::pin!(sleep(d));
    core::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        limit.as_mut().poll(cx).map(|()| None)
    })
    .await
}
