//! Per-thread shards for counters that every connection touches, so the worker threads never
//! write to one shared cache line: each thread writes its own shard (chosen once per thread),
//! readers add the shards up.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards per sharded value (threads beyond this share, which stays correct).
pub const SHARDS: usize = 8;

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard.
#[inline]
pub fn index() -> usize {
    INDEX.with(|i| {
        let v = i.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        i.set(v);
        v
    })
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// A counter added to by many threads, read rarely.
#[derive(Debug, Default)]
pub struct Counter([Padded<AtomicU64>; SHARDS]);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0[index()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_add_up() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.add(2)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.get(), 2000 * (SHARDS as u64 + 3));
    }
}
