//! Bounded concurrent spawning: one task per item, at most a given number running their work at
//! once, answers in input order. The device clients open many connections this way (DPS
//! registrations, hub handshakes); a bound keeps a large batch from starting every TLS
//! handshake at the same instant.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinError;

/// Spawns `work(item)` for every item on the current runtime, at most `concurrency` (at least
/// one) of them running at once, and waits for all. The answers keep the input order; a task
/// that panicked or was cancelled is its `JoinError`, the others are unaffected.
///
/// `work` only builds the future: the task takes its slot before polling it, so anything the
/// future measures (a start time) starts when the slot is taken.
pub(crate) async fn spawn_bounded<I, F, Fut>(
    items: I,
    concurrency: usize,
    work: F,
) -> Vec<Result<Fut::Output, JoinError>>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let handles: Vec<_> = items
        .into_iter()
        .map(|item| {
            let slots = slots.clone();
            let future = work(item);
            tokio::spawn(async move {
                // The semaphore is never closed, so the slot is always granted.
                let _slot = slots.acquire_owned().await;
                future.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn at_most_the_bound_runs_at_once_and_answers_keep_the_order() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let answers = spawn_bounded(0..20u32, 3, |i| {
            let running = running.clone();
            let most = most.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Yield so that the other slots' tasks get to run while this one holds its slot.
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                running.fetch_sub(1, Ordering::SeqCst);
                i * 2
            }
        })
        .await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 3, "{most:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bound_of_one_serialises_and_zero_still_runs() {
        for bound in [0, 1] {
            let running = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let answers = spawn_bounded(0..8u32, bound, |i| {
                let running = running.clone();
                let most = most.clone();
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                }
            })
            .await;
            assert_eq!(answers.len(), 8);
            assert_eq!(most.load(Ordering::SeqCst), 1, "bound {bound}");
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_its_own_error() {
        let answers = spawn_bounded([1u32, 0, 2], 2, |i| async move {
            assert!(i != 0, "zero");
            i
        })
        .await;
        assert_eq!(answers[0].as_ref().ok(), Some(&1));
        assert!(answers[1].as_ref().unwrap_err().is_panic());
        assert_eq!(answers[2].as_ref().ok(), Some(&2));
    }
}
