//! A loaded graph: its buffers, plans and captured CUDA graph, and how a run is launched.

use super::*;

/// A loaded graph on the device: its buffers, scratch, plans and captured launch sequence.
pub(super) struct Exec {
    pub(super) graph: Graph,
    pub(super) node_buffer: Vec<BufferId>,
    pub(super) owned: Vec<BufferId>,
    /// Completed runs (the first runs eagerly and validates every launch).
    pub(super) runs: usize,
    /// The captured launch sequence, replayed on later runs.
    pub(super) captured: Option<CudaGraph>,
    /// Per-node scratch by node index: attention nodes' split-K partials (buffer, number of
    /// splits; one buffer shared by every split attention node, sized for the largest) and wide
    /// argmax nodes' chunk results (buffer, chunks per row).
    pub(super) node_scratch: HashMap<usize, (BufferId, usize)>,
    /// Prepared activations of the `_mma_` products (`mmv_prepare_x`), sized for the largest.
    pub(super) mma_scratch: Option<BufferId>,
    /// The B image of the wgmma verify products' current input and its bytes, sized for the
    /// largest (`wgmma.rs`); none where no product can take that route.
    pub(super) wg_image: Option<(BufferId, usize)>,
    /// Partial sums of `_mma_` products split over blocks along k, sized for the largest.
    pub(super) mma_partials: Option<BufferId>,
    /// f16 activations of the GEMM route's current product and their row scales, sized for the
    /// largest.
    pub(super) gemm_acts: Option<BufferId>,
    /// The q8 and `_mma_` products that read a repacked copy of their weights
    /// (`q8_0_repack`, `q6_k_repack`), with it.
    pub(super) q8_weights: HashMap<usize, BufferId>,
    /// The products the `_mma_` kernels take, which read prepared activations, which find them
    /// ready, which RMSNorm nodes write them (`mma_plan::plan`, with the settings at load time).
    pub(super) mma: MmaPlan,
    /// Post-norm tails launched as one kernel, and the nodes folded into them
    /// (`fuse_plan::plan`).
    pub(super) fuse: FusePlan,
    /// The branches that run on the side stream (`branch_plan::plan`; none past 16 tokens).
    pub(super) branch: crate::branch_plan::BranchPlan,
    /// The shared-memory share its launches prefer: the backend's for a step graph
    /// (`carveout::is_step`), else none.
    pub(super) carveout: Option<i32>,
}

impl CudaBackend {
    /// Replays the captured CUDA graph when there is one (and replay is on), else launches every
    /// op; does not synchronise.
    pub(super) fn replay_or_launch(&self, exec: &Exec) -> Result<()> {
        match &exec.captured {
            Some(g) if self.use_graphs => {
                g.launch().map_err(|e| driver_err("replaying the graph", e))
            }
            _ => self.launch_all(exec),
        }
    }

    /// Launches every node in graph order on the main stream, but a branch's side nodes: those
    /// go on the side stream at the branch's fork, and the main stream waits for them at its
    /// join (and at the end, whatever happened).
    pub(super) fn launch_all(&self, exec: &Exec) -> Result<()> {
        self.end_product_chain();
        // Every run computes its inputs anew, so their images too.
        self.wg_image_of.set(None);
        self.launch_carveout.set(exec.carveout);
        let mut branches = exec.branch.branches.iter().peekable();
        let mut join_at = None;
        let mut launch = || -> Result<()> {
            for (i, node) in exec.graph.nodes().iter().enumerate() {
                if join_at == Some(i) {
                    // Cleared once joined, so a failed join is tried again at the end.
                    self.join_side()?;
                    join_at = None;
                }
                if let Some(b) = branches.next_if(|b| b.fork_at == i) {
                    join_at = Some(b.join_at);
                    self.launch_side(exec, b)?;
                }
                if !exec.branch.side.contains(&i) {
                    self.run_node(exec, NodeId::from_index(i), node)?;
                }
            }
            Ok(())
        };
        let mut launched = launch();
        if join_at.is_some() {
            launched = launched.and(self.join_side());
        }
        self.launch_carveout.set(None);
        launched
    }

    /// Captures what `launch` puts on the stream as a CUDA graph (`what` names it in errors);
    /// the capture ends, and its graph is dropped, when a launch fails.
    pub(super) fn capture(
        &self,
        what: &str,
        launch: impl FnOnce() -> Result<()>,
    ) -> Result<Option<CudaGraph>> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| driver_err(&format!("beginning the capture of {what}"), e))?;
        let launched = launch();
        let captured = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        captured.map_err(|e| driver_err(&format!("instantiating {what}"), e))
    }

    pub(super) fn run_exec(&self, exec: &mut Exec, exe: ExecId) -> Result<()> {
        self.bind()?;
        // Queued, as the step's inputs are: one wait per run, after it (the error word's copy).
        if self.queue_writes {
            self.zero_queued(self.err_word, 4)?;
        } else {
            self.zero(self.err_word, 4)?;
        }
        if self.use_graphs && exec.runs > 0 && exec.captured.is_none() {
            // Record the launch sequence once; every address it uses stays fixed while loaded.
            exec.captured = self.capture("the graph", || self.launch_all(exec))?;
        }
        self.replay_or_launch(exec)?;
        if !self.queue_writes {
            self.sync("running the graph")?;
        }
        let mut word = [0u8; 4];
        self.dtoh_after(&mut word, self.err_word, "running the graph")?;
        exec.runs += 1;
        let reason = match i32::from_le_bytes(word) {
            0 => return Ok(()),
            1 => "a row id is outside the table",
            2 => "a slot is outside the state",
            3 => "an expert id is outside the experts",
            4 => "n_kv does not fit the K/V rows",
            5 => "a clustered norm's rows do not fit its register path",
            _ => "unknown kernel error",
        };
        Err(graph::Error::Runtime {
            op: "cuda",
            node: format!("executable #{}", exe.0),
            reason: reason.into(),
        })
    }
}
