//! Micro-benchmarks of the selection table: pick latency across table sizes (target ≤ 20 ns,
//! flat in the number of backends) and rebuilding + swapping a 10,000-backend table
//! (target ≤ 2 ms). Run: `cargo bench -p wao-bench --bench pick`.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wao_lb::dataplane::proxy::table::Table;

fn weights(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0.0..100.0)).collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [2usize, 16, 256, 4096, 10_000] {
        let swap = ArcSwap::from_pointee(Table::new(&weights(n, 1)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            // As the data path does it: load the current table, pick with the thread's RNG.
            let mut rng = rand::rng();
            b.iter(|| black_box(swap.load().pick(&mut rng)));
        });
    }
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    let n = 10_000;
    let swap = ArcSwap::from_pointee(Table::new(&weights(n, 1)));
    let mut seed = 0;
    let inputs: Vec<Vec<f64>> = (0..8).map(|s| weights(n, s)).collect();
    c.bench_function("rebuild_and_swap/10000", |b| {
        b.iter(|| {
            seed = (seed + 1) % inputs.len();
            swap.store(Arc::new(Table::new(&inputs[seed])));
        })
    });
}

criterion_group!(benches, pick, rebuild);
criterion_main!(benches);
