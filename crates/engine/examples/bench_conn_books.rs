//! What the metrics add to a connection's books, without the network: two threads open and close
//! connection records (each with some bytes) as fast as they can, with metrics off and on (the
//! sampler ticking once a second), alternating; prints nanoseconds per connection. Complements
//! `bench/metrics.mts`, whose whole-proxy ratios are noisier than the difference measured here.
//!
//!   cargo run --release --example bench_conn_books [rounds]

use engine::conn::{IpLimits, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: usize = 2;
const PER_THREAD: u32 = 400_000;

/// Nanoseconds of wall time per connection, `THREADS` threads opening and closing at once.
fn run(enabled: bool) -> f64 {
    let reg = Arc::new(Registry::default());
    reg.metrics.configure(enabled, 3600);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (reg, done) = (reg.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                reg.metrics.tick(&reg);
            }
        })
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS as u32)
        .map(|t| {
            let reg = reg.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    // 256 client addresses per thread, as a busy proxy sees a few hundred.
                    let ip = std::net::Ipv4Addr::from(0x0a00_0000 + (t << 16) + (i & 0xff));
                    let Ok(g) = reg.open(ip.into(), 40_000, 80, IpLimits::default()) else { continue };
                    g.rec.bytes_in.fetch_add(100, Ordering::Relaxed);
                    g.rec.bytes_out.fetch_add(200, Ordering::Relaxed);
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().expect("worker"));
    let ns = started.elapsed().as_nanos() as f64 / f64::from(PER_THREAD);
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    ns
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        off.push(run(false));
        on.push(run(true));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!(
        "ns per connection (open + close, {THREADS} threads, wall time per connection per thread; median of {rounds})"
    );
    println!("metrics off {off:.0}  on {on:.0}  added {:.0}", on - off);
}
