//! `Pool`: N named threads draining one channel of jobs, for the upload workers
//! and the read-ahead workers. Owns the threads and the queue; knows nothing of
//! what a job does, and never retries or reports one (a job does its own).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads sharing a queue of jobs.
pub struct Pool {
    name: &'static str,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The pool was closed: the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Pool {
    /// Starts `threads` workers (at least one) named `name-0`, `name-1`, ….
    /// A thread that cannot start is logged; the others still serve the queue.
    pub fn new(name: &'static str, threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads.max(1))
            .filter_map(|i| {
                let rx = Arc::clone(&rx);
                let spawned = std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while waiting for a job, never
                        // while running one.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    });
                match spawned {
                    Ok(h) => Some(h),
                    Err(e) => {
                        log::error!("cannot start worker thread {name}-{i}: {e}");
                        None
                    }
                }
            })
            .collect();
        Pool {
            name,
            jobs: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        }
    }

    /// Queues a job for the next free worker.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Closed> {
        match self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(tx) => tx.send(Box::new(job)).map_err(|_| Closed),
            None => Err(Closed),
        }
    }

    /// Takes no more jobs. The workers run what is queued, then end on their
    /// own; nobody waits for them.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Closes the pool and waits until every queued job has run. From a worker
    /// of this pool it waits for the others only (a thread cannot join itself).
    pub fn shutdown(&self) {
        self.close();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for w in workers {
            if w.thread().id() == me {
                continue;
            }
            if w.join().is_err() {
                log::error!("a worker thread of {} panicked", self.name);
            }
        }
    }
}

impl Drop for Pool {
    /// Dropped, a pool only closes: joining here could wait on the very worker
    /// that drops the last owner of the pool.
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn shutdown_runs_every_queued_job_first() {
        let pool = Pool::new("test-pool", 3);
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let done = Arc::clone(&done);
            pool.submit(move || {
                std::thread::sleep(Duration::from_millis(1));
                done.fetch_add(1, Ordering::SeqCst);
            })
            .expect("submit");
        }
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 50);
    }

    #[test]
    fn a_closed_pool_refuses_new_jobs() {
        let pool = Pool::new("test-pool", 1);
        pool.close();
        assert_eq!(pool.submit(|| {}), Err(Closed));
    }

    #[test]
    fn jobs_run_on_threads_named_after_the_pool() {
        let pool = Pool::new("named", 2);
        let (tx, rx) = mpsc::channel();
        pool.submit(move || {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        })
        .expect("submit");
        let name = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("job ran")
            .expect("named thread");
        assert!(name.starts_with("named-"), "{name}");
    }

    #[test]
    fn a_worker_may_shut_its_own_pool_down() {
        let pool = Arc::new(Pool::new("self-join", 2));
        let (tx, rx) = mpsc::channel();
        let inner = Arc::clone(&pool);
        pool.submit(move || {
            inner.shutdown();
            let _ = tx.send(());
        })
        .expect("submit");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("shutdown from a worker returned");
    }
}
