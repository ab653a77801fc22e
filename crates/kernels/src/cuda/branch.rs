//! The side stream that the branches of a decode step or verify batch run on (`branch_plan`),
//! and the fork and join between it and the main stream. Both are captured into the graph's
//! CUDA graph, where the events become edges.

use std::cell::Cell;

use cudarc::driver::CudaEvent;

use super::*;
use crate::branch_plan::Branch;

/// The second stream and the two events that order it against the main one.
pub(super) struct Side {
    pub(super) stream: Arc<CudaStream>,
    fork: CudaEvent,
    join: CudaEvent,
    /// Set while a branch's launches are issued: `launch_stream` is the side stream.
    pub(super) active: Cell<bool>,
    /// Branches launched so far (eager runs and captures; tests read it).
    pub(super) launched: Cell<usize>,
}

impl Side {
    pub(super) fn new(ctx: &Arc<CudaContext>) -> Result<Side> {
        let event = || {
            ctx.new_event(None)
                .map_err(|e| driver_err("creating an event", e))
        };
        Ok(Side {
            stream: ctx
                .new_stream()
                .map_err(|e| driver_err("creating the side stream", e))?,
            fork: event()?,
            join: event()?,
            active: Cell::new(false),
            launched: Cell::new(0),
        })
    }
}

impl CudaBackend {
    /// The stream launches go on: the side stream while a branch is issued, else the main one.
    pub(super) fn launch_stream(&self) -> &CudaStream {
        if self.side.active.get() {
            &self.side.stream
        } else {
            &self.stream
        }
    }

    /// Issues branch `b`'s side nodes on the side stream, after all the main stream has so far.
    pub(super) fn launch_side(&self, exec: &Exec, b: &Branch) -> Result<()> {
        self.side
            .fork
            .record(&self.stream)
            .map_err(|e| driver_err("recording the fork", e))?;
        self.side
            .stream
            .wait(&self.side.fork)
            .map_err(|e| driver_err("forking the side stream", e))?;
        self.end_product_chain();
        self.side.active.set(true);
        self.after_stream_wait();
        let launched = b.side.iter().try_for_each(|&i| {
            let id = NodeId::from_index(i);
            self.run_node(exec, id, exec.graph.node(id))
        });
        self.side.active.set(false);
        self.end_product_chain();
        self.side.launched.set(self.side.launched.get() + 1);
        launched
    }

    /// Makes the main stream wait for all the side stream has so far.
    pub(super) fn join_side(&self) -> Result<()> {
        self.side
            .join
            .record(&self.side.stream)
            .map_err(|e| driver_err("recording the join", e))?;
        self.stream
            .wait(&self.side.join)
            .map_err(|e| driver_err("joining the side stream", e))?;
        // The next product waits for the side too: it must lead a chain, not join one.
        self.end_product_chain();
        self.after_stream_wait();
        Ok(())
    }

    /// The next launch follows an event wait: it launches without programmatic serialization
    /// (unless `SPECULA_BRANCH_PDL=1`), so it is ordered after the waited-for work by a plain
    /// edge. Every kernel's `pdl_entry` wait is then a no-op.
    fn after_stream_wait(&self) {
        if !self.branch_pdl {
            self.pdl_off_next.set(true);
        }
    }

    /// Branches launched on the side stream so far (eager runs and graph captures).
    pub fn side_branches_launched(&self) -> usize {
        self.side.launched.get()
    }

    /// Whether graphs of up to 16 tokens loaded from now on run their MoE experts on the side
    /// stream (on by default; `SPECULA_BRANCHES=0` turns it off, an A/B knob). Graphs already
    /// loaded keep their plan.
    pub fn set_branches(&mut self, on: bool) {
        self.branches = on;
    }
}
