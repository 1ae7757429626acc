//! A team of spinning helper threads for the many short parallel regions
//! of a decode step.
//!
//! Why not rayon alone: one decode step of a small model is ~150 parallel
//! regions (each op's matmul, attention) of 20–100 µs, with a little serial
//! work between them. Rayon's idle workers go to sleep within microseconds
//! of running out of work, and waking a sleeping thread (a futex wake-up;
//! on a virtual machine an idle vCPU) costs tens of microseconds, so every
//! region paid a wake-up. The helpers here keep spinning for [`SPIN`] after
//! each job, so the next region starts within a microsecond, then yield
//! their core to whatever else wants it (the loader's I/O must not starve:
//! Cake computes and loads at once) and park after [`YIELD`] (no CPU is
//! burnt while the engine is idle).
//!
//! One job runs at a time; a caller that finds the team busy (two models
//! running at once), or that is itself inside a job, runs its tasks through
//! rayon instead. The caller always works on its own job, so a job finishes
//! even when no helper joins. Which thread runs a task never changes what
//! it computes: every kernel's tasks write disjoint outputs.
//!
//! The thread count is rayon's (`RAYON_NUM_THREADS`, or the pool the caller
//! runs in): a job lets at most that many threads, the caller included,
//! take part.

use std::cell::{Cell, UnsafeCell};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rayon::prelude::*;

/// How long an idle helper spins; then it yields its core to any other
/// runnable thread (the loader's I/O, the server) between checks until
/// [`YIELD`], then parks. The gaps between a decode step's regions are
/// mostly shorter than [`SPIN`].
const SPIN: Duration = Duration::from_micros(30);
const YIELD: Duration = Duration::from_micros(500);

/// `state`: the job's generation in the upper 32 bits, whether it is open
/// to helpers in bit 31, helpers inside it in the low bits.
const OPEN: u64 = 1 << 31;
const INSIDE: u64 = OPEN - 1;

thread_local! {
    /// This thread is a helper, or a caller inside its own job.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// The open job's body, borrowed from the caller's stack for the job's
/// duration (see `for_each`'s safety argument).
#[derive(Clone, Copy)]
struct JobRef {
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
}

struct Team {
    /// Held by the caller of the running job.
    busy: Mutex<()>,
    state: AtomicU64,
    /// Written only by the holder of `busy` while no helper is inside a job
    /// and the job is closed; read only by helpers that entered it.
    job: UnsafeCell<JobRef>,
    /// The next task index to hand out.
    next: AtomicUsize,
    /// Helpers the open job admits.
    limit: AtomicUsize,
    /// A task of the job panicked on a helper.
    panicked: AtomicBool,
    spawned: Mutex<usize>,
    sleeping: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is the only field that is not Sync; the protocol in
// `for_each` and `helper` orders its writes (caller, no helper inside)
// before its reads (helpers inside), through `state`.
unsafe impl Sync for Team {}
// SAFETY: as above; the raw pointer in `job` is only a borrowed body.
unsafe impl Send for Team {}

fn noop(_: usize) {}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team {
        busy: Mutex::new(()),
        state: AtomicU64::new(0),
        job: UnsafeCell::new(JobRef {
            f: &noop as &(dyn Fn(usize) + Sync),
            n: 0,
        }),
        next: AtomicUsize::new(0),
        limit: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        spawned: Mutex::new(0),
        sleeping: AtomicUsize::new(0),
        park: Mutex::new(()),
        wake: Condvar::new(),
    })
}

impl Team {
    /// Runs tasks of `job` until none is left.
    fn work(&self, job: JobRef) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= job.n {
                return;
            }
            // SAFETY: `f` outlives the job (see `for_each`), and this
            // thread is inside it.
            unsafe { (*job.f)(i) };
        }
    }

    /// Starts helpers until there are `want` (they live for the process).
    fn ensure_helpers(&'static self, want: usize) {
        let mut n = self.spawned.lock();
        while *n < want {
            let spawned = std::thread::Builder::new()
                .name(format!("cake-team-{n}"))
                .spawn(move || self.helper());
            if spawned.is_err() {
                // No thread: the jobs run on fewer (the caller always works).
                return;
            }
            *n += 1;
        }
    }

    fn helper(&self) {
        IN_JOB.set(true);
        let mut seen = 0u64;
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let s = self.state.load(Ordering::Acquire);
            let generation = s >> 32;
            if generation != seen {
                let admits = (s & INSIDE) < self.limit.load(Ordering::Relaxed) as u64;
                if s & OPEN != 0 && admits {
                    if self
                        .state
                        .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        continue;
                    }
                    seen = generation;
                    // SAFETY: this helper is inside the open job, so `job`
                    // was written before the state it entered by.
                    let job = unsafe { *self.job.get() };
                    if catch_unwind(AssertUnwindSafe(|| self.work(job))).is_err() {
                        self.panicked.store(true, Ordering::Relaxed);
                    }
                    self.state.fetch_sub(1, Ordering::Release);
                    idle_since = Instant::now();
                    continue;
                }
                // Closed before this helper came, or full.
                seen = generation;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = idle_since.elapsed();
            if idle < SPIN {
                continue;
            }
            if idle < YIELD {
                std::thread::yield_now();
                continue;
            }
            let mut guard = self.park.lock();
            self.sleeping.fetch_add(1, Ordering::SeqCst);
            while self.state.load(Ordering::SeqCst) >> 32 == seen {
                self.wake.wait(&mut guard);
            }
            self.sleeping.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            idle_since = Instant::now();
        }
    }
}

/// Runs `f(i)` for every `i < n` on up to rayon's thread count of threads
/// (the caller among them) and returns when all have run. A panic in a
/// task is raised again here once every thread has left the job.
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 {
        (0..n).for_each(f);
        return;
    }
    if IN_JOB.get() {
        (0..n).into_par_iter().for_each(&f);
        return;
    }
    let team = team();
    let Some(busy) = team.busy.try_lock() else {
        (0..n).into_par_iter().for_each(&f);
        return;
    };
    team.ensure_helpers(threads - 1);
    let body: &(dyn Fn(usize) + Sync + '_) = &f;
    // SAFETY: only the lifetime is changed. Helpers call `f` only while
    // inside this job, and this function does not return (nor unwind)
    // before the job is closed and no helper is inside it.
    let body: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(body) };
    // SAFETY: we hold `busy`, and the previous job ended closed with no
    // helper inside (its caller waited for that), so no helper reads `job`.
    unsafe { *team.job.get() = JobRef { f: body, n } };
    team.next.store(0, Ordering::Relaxed);
    team.limit.store(threads - 1, Ordering::Relaxed);
    team.panicked.store(false, Ordering::Relaxed);
    let generation = (team.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
    team.state.store(generation << 32 | OPEN, Ordering::SeqCst);
    if team.sleeping.load(Ordering::SeqCst) > 0 {
        let _guard = team.park.lock();
        team.wake.notify_all();
    }
    IN_JOB.set(true);
    let mine = catch_unwind(AssertUnwindSafe(|| team.work(JobRef { f: body, n })));
    IN_JOB.set(false);
    team.state.fetch_and(!OPEN, Ordering::AcqRel);
    while team.state.load(Ordering::Acquire) & INSIDE != 0 {
        std::hint::spin_loop();
    }
    let helper_panicked = team.panicked.load(Ordering::Relaxed);
    drop(busy);
    if let Err(p) = mine {
        resume_unwind(p);
    }
    assert!(
        !helper_panicked,
        "a parallel task panicked on a helper thread"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for n in [0usize, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                "n = {n}"
            );
        }
    }

    #[test]
    fn callers_at_once_and_nested_jobs_all_finish() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        for_each(8, |_| {
                            for_each(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 100 * 8 * 3);
    }

    #[test]
    fn a_panicking_task_is_raised_in_the_caller() {
        let r = catch_unwind(|| {
            for_each(64, |i| {
                if i == 40 {
                    panic!("task 40");
                }
            })
        });
        assert!(r.is_err());
        // The team still works afterwards.
        let count = AtomicUsize::new(0);
        for_each(64, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 64);
    }
}
