//! The read ceiling: how fast the device streams byte runs laid out and launched the way a
//! decode step launches its weight products — one kernel after another, programmatic dependent
//! launch where the backend uses it, the whole pass replayed as one CUDA graph — with no
//! arithmetic at all, so the bench can report decode against it as well as against the copy
//! bandwidth. It bounds the step from above in two ways: a launch group (a layer's q, k and v;
//! gate and up) is one grid split by bytes, where the step runs its members as separate grids
//! that overlap only at their tails, and the grid is the widest measured, not the products'.
//! The same kernel stands in for every product in the measurement mode
//! `CudaBackend::set_products_as_reads`.

use super::*;

/// Blocks per multiprocessor of `read_runs_u128` in the read pass: with [`READ_THREADS`], the
/// grid that read fastest in a pass of a step's launches (bench/NOTES.md, twenty-sixth session:
/// 0.976 of copy for sibling groups, against 0.936 at the products' two 256-thread blocks an SM).
const READ_BLOCKS_PER_SM: usize = 4;
/// Threads per block of `read_runs_u128`.
const READ_THREADS: u32 = 512;

/// Byte runs one launch of the read pass takes at most (`read_runs_u128`'s three pointers).
pub const READ_MAX_RUNS: usize = 3;

impl CudaBackend {
    /// Seconds per pass of plain streaming reads, the median of `reps` timed replays after one
    /// untimed: launch `i` reads `launches[i]`'s runs (their byte sizes, 1 to [`READ_MAX_RUNS`]
    /// each) together, the launches follow one another as a decode step's products do, and
    /// every run has its own place in one device allocation (so a pass larger than L2 reads
    /// from memory) filled with pseudo-random bytes, as weights are. Divide the bytes by it for
    /// the ceiling's bandwidth.
    pub fn read_pass_seconds(&mut self, launches: &[Vec<usize>], reps: usize) -> Result<f64> {
        if launches.is_empty() || reps == 0 {
            return Err(backend_err(format!(
                "read pass: {} launches, {reps} repetitions; both must be at least one",
                launches.len()
            )));
        }
        let mut offsets = Vec::with_capacity(launches.len());
        let mut total = 0usize;
        for (i, runs) in launches.iter().enumerate() {
            if runs.is_empty() || runs.len() > READ_MAX_RUNS || runs.contains(&0) {
                return Err(backend_err(format!(
                    "read pass: launch {i} has runs {runs:?}; 1 to {READ_MAX_RUNS} non-empty runs a launch"
                )));
            }
            let mut at = Vec::with_capacity(runs.len());
            for &bytes in runs {
                at.push(total);
                total = total
                    .checked_add(bytes.div_ceil(256) * 256)
                    .ok_or_else(|| backend_err("read pass: the runs' total overflows"))?;
            }
            offsets.push(at);
        }
        let arena = self.malloc(total)?;
        let out = match self.malloc(4 * self.read_blocks(READ_MAX_RUNS)) {
            Ok(out) => out,
            Err(e) => {
                self.free_raw(arena);
                return Err(e);
            }
        };
        let timed = self
            .fill_random(arena, total)
            .and_then(|()| self.time_read_pass(launches, &offsets, arena, out, reps));
        self.free_raw(arena);
        self.free_raw(out);
        timed
    }

    /// The wrapping sum of every 32-bit word (little-endian) of `runs`, computed on the device by
    /// one launch of the read pass's kernel over copies of them: a check that the pass reads
    /// every word exactly once. Each run must be a non-empty multiple of 16 bytes, 1 to
    /// [`READ_MAX_RUNS`] runs.
    pub fn read_runs_sum(&self, runs: &[&[u8]]) -> Result<u32> {
        if runs.is_empty()
            || runs.len() > READ_MAX_RUNS
            || runs.iter().any(|r| r.is_empty() || r.len() % 16 != 0)
        {
            return Err(backend_err(format!(
                "read_runs_sum: 1 to {READ_MAX_RUNS} runs of a non-zero multiple of 16 bytes, not {:?} bytes",
                runs.iter().map(|r| r.len()).collect::<Vec<_>>()
            )));
        }
        let mut ptrs = Vec::new();
        let result = (|| -> Result<u32> {
            for run in runs {
                let p = self.malloc(run.len())?;
                ptrs.push(p);
                self.htod(p, run)?;
            }
            let blocks = self.read_blocks(runs.len());
            let out = self.malloc(4 * blocks)?;
            ptrs.push(out);
            let runs: Vec<(u64, usize)> = ptrs[..runs.len()]
                .iter()
                .zip(runs)
                .map(|(&p, r)| (p, r.len()))
                .collect();
            self.bind()?;
            self.launch_read(&runs, out)?;
            self.stream
                .synchronize()
                .map_err(|e| driver_err("running the read kernel", e))?;
            let mut words = vec![0u8; 4 * blocks];
            self.dtoh(&mut words, out)?;
            Ok(words.chunks_exact(4).fold(0u32, |x, w| {
                x.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            }))
        })();
        for p in ptrs {
            self.free_raw(p);
        }
        result
    }

    /// Fills `bytes` bytes at `ptr` with pseudo-random bytes: one 16 MiB pattern uploaded, then
    /// copied along on the device.
    fn fill_random(&self, ptr: u64, bytes: usize) -> Result<()> {
        let chunk = bytes.min(16 << 20);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let pattern: Vec<u8> = (0..chunk.div_ceil(8))
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .take(chunk)
            .collect();
        self.htod(ptr, &pattern)?;
        let mut at = chunk;
        while at < bytes {
            let n = chunk.min(bytes - at);
            #[allow(unsafe_code)]
            // SAFETY: [ptr, ptr + bytes) is one allocation; the source [ptr, ptr + n) and the
            // destination [ptr + at, ptr + at + n) lie inside it and do not overlap (n ≤ at).
            unsafe { cu::memcpy_dtod_async(ptr + at as u64, ptr, n, self.stream.cu_stream()) }
                .map_err(|e| driver_err("filling the read pass", e))?;
            at += n;
        }
        self.stream
            .synchronize()
            .map_err(|e| driver_err("filling the read pass", e))
    }

    /// Blocks of one read launch of `runs` runs: the products' grid, at least a block a run.
    fn read_blocks(&self, runs: usize) -> usize {
        (READ_BLOCKS_PER_SM * self.sm_count).max(runs)
    }

    /// Captures the pass as a graph, replays it once untimed and `reps` times timed.
    fn time_read_pass(
        &mut self,
        launches: &[Vec<usize>],
        offsets: &[Vec<usize>],
        arena: u64,
        out: u64,
        reps: usize,
    ) -> Result<f64> {
        self.bind()?;
        let graph = self
            .capture("the read pass", || {
                launches.iter().zip(offsets).try_for_each(|(runs, at)| {
                    let runs: Vec<(u64, usize)> = at
                        .iter()
                        .zip(runs)
                        .map(|(&o, &bytes)| (arena + o as u64, bytes))
                        .collect();
                    self.launch_read(&runs, out)
                })
            })?
            .ok_or_else(|| backend_err("the read pass captured no graph"))?;
        let mut secs = Vec::with_capacity(reps);
        for rep in 0..=reps {
            let start = std::time::Instant::now();
            graph
                .launch()
                .map_err(|e| driver_err("replaying the read pass", e))?;
            self.stream
                .synchronize()
                .map_err(|e| driver_err("running the read pass", e))?;
            if rep > 0 {
                secs.push(start.elapsed().as_secs_f64());
            }
        }
        secs.sort_by(f64::total_cmp);
        Ok(secs[secs.len() / 2])
    }

    /// One launch of `read_runs_u128` over `runs` (device address, bytes; read as
    /// ⌈bytes / 16⌉ words, so each run's allocation must hold whole words): the blocks are
    /// shared out by bytes, at least one a run; their sums go to `out` (a word a block) unless
    /// it is 0.
    fn launch_read(&self, runs: &[(u64, usize)], out: u64) -> Result<()> {
        let blocks = self.read_blocks(runs.len());
        let total: usize = runs.iter().map(|r| r.1).sum();
        let mut first = [blocks; READ_MAX_RUNS];
        let mut at = 0;
        for (s, &(_, bytes)) in runs.iter().enumerate() {
            first[s] = at;
            let left = runs.len() - s - 1;
            let share = (blocks as f64 * bytes as f64 / total as f64).round() as usize;
            at += share.clamp(1, blocks - at - left);
        }
        let mut args = Args::default();
        for s in 0..READ_MAX_RUNS {
            let (ptr, bytes) = runs.get(s).copied().unwrap_or((0, 0));
            args.ptr(ptr).i64(bytes.div_ceil(16) as i64);
        }
        args.i32(first[1] as i32).i32(first[2] as i32).ptr(out);
        self.launch(
            "read_runs_u128",
            (blocks as u32, 1, 1),
            READ_THREADS,
            &mut args,
        )
    }

    /// In place of weight product `node` (`set_products_as_reads`): one `read_runs_u128`
    /// launch over the weights it would read at `weights` (its repacked copy's bytes where it
    /// has one; whole 16-byte words only, so never past their end), writing nothing.
    pub(super) fn read_in_place_of_product(
        &self,
        exec: &Exec,
        id: NodeId,
        node: &Node,
        weights: u64,
    ) -> Result<()> {
        let bytes = match exec.q8_weights.get(&id.index()) {
            Some(&copy) => {
                let b = self.buf(copy)?;
                byte_size(b.dtype, b.shape)?
            }
            None => {
                let w = exec.graph.node(node.inputs[0]);
                byte_size(w.dtype, w.shape())?
            }
        };
        self.launch_read(&[(weights, bytes & !15)], 0)
    }

    /// Frees a raw allocation of ours once the stream is done with it (errors ignored: used on
    /// the way out of a measurement, failed or not).
    fn free_raw(&self, ptr: u64) {
        let _ = self.stream.synchronize();
        #[allow(unsafe_code)]
        // SAFETY: `ptr` came from `malloc` and no other owner frees it; the stream was just
        // synchronised, so no queued copy or launch still uses it.
        unsafe {
            let _ = cu::free_sync(ptr);
        }
    }
}
