//! Work spread over every core, by rayon.
//!
//! Rayon rather than threads of our own: a fleet evaluates its machines
//! in parallel, and each may evaluate a package set in parallel too.
//! Rayon's one pool and work stealing run such nested work on the cores
//! there are; a pool of threads per call would start one inside another.

use std::any::Any;

use rayon::prelude::*;

/// `f` of every item, in order, computed on every core. An item whose
/// `f` panicked gives the panic's message instead: one bad item neither
/// stops nor hides the others.
pub(crate) fn on_every_core<T, R, F>(items: &[T], f: F) -> Vec<Result<R, String>>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    items
        .par_iter()
        .map(|item| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)))
                .map_err(|p| panic_message(&*p))
        })
        .collect()
}

/// `f` of every item, in order, on this thread, with the same capture
/// of panics as [`on_every_core`].
pub(crate) fn one_by_one<T, R, F>(items: &[T], f: F) -> Vec<Result<R, String>>
where
    F: Fn(&T) -> R,
{
    items
        .iter()
        .map(|item| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)))
                .map_err(|p| panic_message(&*p))
        })
        .collect()
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet of machines each evaluating a package set: parallel work
    /// inside parallel work, with one item panicking, keeps every other
    /// result and the order.
    #[test]
    fn nested_work_keeps_order_and_catches_each_panic() {
        let outer: Vec<u64> = (0..8).collect();
        let results = on_every_core(&outer, |&m| {
            let inner: Vec<u64> = (0..50).collect();
            on_every_core(&inner, |&i| {
                assert!(!(m == 3 && i == 7), "machine 3, package 7");
                m * 100 + i
            })
        });
        for (m, r) in results.into_iter().enumerate() {
            let inner = r.expect("an inner panic stays inside");
            for (i, v) in inner.into_iter().enumerate() {
                match v {
                    Ok(v) => assert_eq!(v, m as u64 * 100 + i as u64),
                    Err(why) => {
                        assert_eq!((m, i), (3, 7));
                        assert_eq!(why, "machine 3, package 7");
                    }
                }
            }
        }
    }
}
