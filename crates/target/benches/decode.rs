//! CPU decode speed on the fixture models: one token per step at a 36-token context, reported
//! as tokens per second (criterion's element throughput).

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use target::{LogitRows, Target, TargetOptions};

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu decode");
    group.throughput(Throughput::Elements(1));
    for name in ["dense.gguf", "dense.q8_0.gguf", "e.gguf", "moe.gguf"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name);
        let file = Arc::new(gguf::GgufFile::open(&path).expect("fixture"));
        let options = TargetOptions {
            n_ctx: 256,
            max_batch: 64,
            ..Default::default()
        };
        let mut t = Target::load(
            file,
            Box::new(graph::CpuBackend::new()),
            &options,
            &mut |_, _| {},
        )
        .unwrap();
        let prompt: Vec<u32> = (0..36).map(|i| 20 + i * 7).collect();
        t.forward(&prompt, LogitRows::Last, &[], false).unwrap();
        let n = t.n_past();
        group.bench_function(name, |b| {
            b.iter(|| {
                t.forward(&[42], LogitRows::Last, &[], false).unwrap();
                t.truncate(n).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
