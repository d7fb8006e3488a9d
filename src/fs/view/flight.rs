//! Single flight for directory listings: at most one listing of a directory
//! runs at a time; a second caller waits for it (bounded) instead of sending
//! the same requests again. Owns only who is listing what; does no listing
//! and never waits on its own (`Flight::wait` is the caller's choice).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The directories being listed, by inode.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<u64, Arc<Flight>>>,
}

/// One listing in progress; done when its `Claimed` guard goes.
#[derive(Default)]
pub struct Flight {
    done: Mutex<bool>,
    landed: Condvar,
}

/// The right to list one directory, until dropped (which wakes the waiters).
pub struct Claimed<'a> {
    flights: &'a Flights,
    ino: u64,
    flight: Arc<Flight>,
}

/// What `Flights::claim` found.
pub enum Claim<'a> {
    /// Nobody was listing it: the caller lists it.
    Mine(Claimed<'a>),
    /// Another caller is listing it.
    Busy(Arc<Flight>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flights {
    /// Claims the listing of directory `ino`, or says who has it.
    pub fn claim(&self, ino: u64) -> Claim<'_> {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(&ino) {
            return Claim::Busy(Arc::clone(f));
        }
        let flight = Arc::new(Flight::default());
        map.insert(ino, Arc::clone(&flight));
        Claim::Mine(Claimed {
            flights: self,
            ino,
            flight,
        })
    }

    /// How many listings are in progress.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Flight {
    /// Waits until this listing ends, at most `limit`. Returns whether it
    /// ended (successfully or not: the caller checks what it left).
    pub fn wait(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut done = lock(&self.done);
        while !*done {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .landed
                .wait_timeout(done, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.flights.map);
            if map
                .get(&self.ino)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.ino);
            }
        }
        *lock(&self.flight.done) = true;
        self.flight.landed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_waits_for_the_first_to_land() {
        let flights = Flights::default();
        let Claim::Mine(mine) = flights.claim(7) else {
            panic!("nobody was listing 7");
        };
        let Claim::Busy(theirs) = flights.claim(7) else {
            panic!("7 is being listed");
        };
        assert!(matches!(flights.claim(8), Claim::Mine(_)), "8 is not");
        assert!(!theirs.wait(Duration::from_millis(20)), "still listing");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| theirs.wait(Duration::from_secs(10)));
            std::thread::sleep(Duration::from_millis(20));
            drop(mine);
            assert!(waiter.join().expect("waiter"), "woken when it landed");
        });
        assert!(flights.is_empty());
        assert!(matches!(flights.claim(7), Claim::Mine(_)), "free again");
    }
}
