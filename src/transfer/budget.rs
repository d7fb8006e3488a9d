//! `MemoryBudget`: the bytes of part buffers held at once across all uploads,
//! and `Reservation`, one buffer's share of it. Counts bytes and makes takers
//! wait; knows nothing of parts, keys, the store or the disk.

use std::sync::{Arc, Condvar, Mutex};

/// A byte budget for part buffers. A taker never waits for bytes that only an
/// idle writer could give back (with its next write, which may never come): it
/// waits only while parts are in flight, which free themselves; otherwise it is
/// told to spill to disk, or, when it cannot, it overdraws by one part at a time.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    state: Mutex<BudgetState>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct BudgetState {
    /// Bytes held by all reservations (buffers filling and parts in flight).
    used: u64,
    /// Of those, bytes of parts handed to the workers.
    in_flight: u64,
    /// Whether the one overdraft (a reservation beyond the limit) is taken.
    overdraft: bool,
}

/// How a reservation was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Within,
    Overdraft,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: limit.max(1),
            state: Mutex::new(BudgetState::default()),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes currently held.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The budget's limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `n` bytes. Waits only while parts are in flight. Then, when nothing
    /// is in flight and the budget is still spent (by buffers of writers that
    /// may never write again), returns `None` if the caller may spill to disk,
    /// else takes the single overdraft (waiting for its holder, an upload that
    /// progresses on its own, to give it back). A request larger than the
    /// whole budget is granted when nothing else is held.
    fn take(&self, n: u64, may_spill: bool) -> Option<Grant> {
        let mut s = self.lock();
        loop {
            if s.used == 0 || s.used + n <= self.limit {
                s.used += n;
                return Some(Grant::Within);
            }
            if s.in_flight == 0 {
                if may_spill {
                    return None;
                }
                if !s.overdraft {
                    s.overdraft = true;
                    s.used += n;
                    return Some(Grant::Overdraft);
                }
            }
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn launch(&self, n: u64) {
        self.lock().in_flight += n;
    }

    fn give_back(&self, n: u64, launched: bool, overdraft: bool) {
        let mut s = self.lock();
        s.used = s.used.saturating_sub(n);
        if launched {
            s.in_flight = s.in_flight.saturating_sub(n);
        }
        if overdraft {
            s.overdraft = false;
        }
        self.freed.notify_all();
    }
}

/// Budget held by one part buffer; given back when dropped.
#[derive(Debug)]
pub(super) struct Reservation {
    budget: Arc<MemoryBudget>,
    /// Bytes held.
    pub bytes: u64,
    /// Handed to a worker: counts as in flight.
    launched: bool,
    /// This reservation holds the overdraft; it grows without asking.
    overdraft: bool,
}

impl Reservation {
    pub fn new(budget: &Arc<MemoryBudget>) -> Reservation {
        Reservation {
            budget: Arc::clone(budget),
            bytes: 0,
            launched: false,
            overdraft: false,
        }
    }

    /// Grows by `n` bytes; `false` when the caller should spill instead.
    pub fn grow(&mut self, n: u64, may_spill: bool) -> bool {
        if self.overdraft {
            self.budget.lock().used += n;
        } else {
            match self.budget.take(n, may_spill) {
                Some(g) => self.overdraft = g == Grant::Overdraft,
                None => return false,
            }
        }
        self.bytes += n;
        true
    }

    /// The part leaves for a worker: its bytes will come back on their own.
    pub fn launch(&mut self) {
        if !self.launched {
            self.launched = true;
            self.budget.launch(self.bytes);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .give_back(self.bytes, self.launched, self.overdraft);
    }
}
