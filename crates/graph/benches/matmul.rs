//! Quantized matmul on the CPU backend (Q4_K, Q6_K, Q8_0, one and four activation rows),
//! reported as weight bytes streamed per second, next to a plain memory copy measured in the
//! same run (the bandwidth ceiling of this machine).

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use graph::{Backend, Bindings, CpuBackend, DType, GraphBuilder, HostBytes, HostData, Shape};

const K: usize = 4096;
const N: usize = 4096;

fn weight_bytes(ty: DType) -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def0u64;
    let values: Vec<f32> = (0..K * N)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    gguf::quant::quantize(ty, &values).expect("quantize bench weights")
}

fn bench_matmul(c: &mut Criterion) {
    let copy_len = 256 << 20;
    let src = vec![1u8; copy_len];
    let mut dst = vec![0u8; copy_len];
    let mut group = c.benchmark_group("bandwidth");
    group.throughput(Throughput::Bytes(copy_len as u64));
    group.sample_size(20);
    group.bench_function("memcpy 256 MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("cpu matmul 4096x4096");
    group.sample_size(20);
    for ty in [DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        let bytes = weight_bytes(ty);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        for m in [1usize, 4] {
            let mut g = GraphBuilder::new();
            let w = g.weight("w", ty, Shape::new(&[K, N]).unwrap()).unwrap();
            let x = g
                .input("x", DType::F32, Shape::new(&[K, m]).unwrap())
                .unwrap();
            let y = g.matmul(w, x).unwrap();
            let graph = g.finish(&[y]).unwrap();
            let mut cpu = CpuBackend::new();
            let wb = cpu
                .upload(
                    ty,
                    Shape::new(&[K, N]).unwrap(),
                    HostBytes::from_vec(bytes.clone()),
                )
                .unwrap();
            let mut bindings = Bindings::new();
            bindings.bind(w, wb);
            let exe = cpu.load(&graph, &bindings).unwrap();
            let xs: Vec<f32> = (0..K * m).map(|i| (i % 7) as f32 * 0.1).collect();
            cpu.write(cpu.buffer_of(exe, x).unwrap(), 0, HostData::F32(&xs))
                .unwrap();
            group.bench_function(format!("{ty} rows={m}"), |b| {
                b.iter(|| cpu.run(exe).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
