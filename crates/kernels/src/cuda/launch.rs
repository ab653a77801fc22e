//! Kernel arguments and the one launch path (`cuLaunchKernelEx`, with programmatic dependent
//! launch where on).

use super::*;
use source::{PDL_LEAD, PDL_LEAD_LATE, PDL_PLAIN, PDL_SIBLING};

/// Kernel parameters, each in its own 8-byte-aligned heap cell so its address is stable.
#[derive(Default)]
pub(super) struct Args {
    pub(super) cells: Vec<Vec<u64>>,
}

impl Args {
    pub(super) fn ptr(&mut self, p: u64) -> &mut Self {
        self.cells.push(vec![p]);
        self
    }
    pub(super) fn i32(&mut self, v: i32) -> &mut Self {
        self.cells.push(vec![v as u32 as u64]);
        self
    }
    pub(super) fn f32(&mut self, v: f32) -> &mut Self {
        self.cells.push(vec![v.to_bits() as u64]);
        self
    }
    pub(super) fn i64(&mut self, v: i64) -> &mut Self {
        self.cells.push(vec![v as u64]);
        self
    }
    /// A `Layout4` by value: dims, strides, offset (nine i64).
    pub(super) fn layout(&mut self, l: &Layout) -> &mut Self {
        let d = l.shape.dims();
        let mut cell: Vec<u64> = d.iter().map(|&x| x as u64).collect();
        cell.extend(l.strides.iter().map(|&x| x as u64));
        cell.push(l.offset as u64);
        self.cells.push(cell);
        self
    }
}

/// Device byte ranges a product kernel reads and writes while it runs (its weights aside: no
/// kernel of a run writes weights), to tell whether two products may overlap.
#[derive(Debug)]
pub(super) struct Footprint {
    pub(super) reads: Vec<std::ops::Range<u64>>,
    pub(super) writes: Vec<std::ops::Range<u64>>,
}

impl Footprint {
    /// Whether running `self` and `other` at once could race: one writes what the other reads
    /// or writes.
    fn conflicts(&self, other: &Footprint) -> bool {
        let overlap =
            |a: &std::ops::Range<u64>, b: &std::ops::Range<u64>| a.start < b.end && b.start < a.end;
        let hits = |w: &[std::ops::Range<u64>], r: &[std::ops::Range<u64>]| {
            w.iter().any(|a| r.iter().any(|b| overlap(a, b)))
        };
        hits(&self.writes, &other.reads)
            || hits(&self.writes, &other.writes)
            || hits(&other.writes, &self.reads)
    }
}

impl CudaBackend {
    /// Launches a tensor-core product kernel whose last parameter is its programmatic-launch
    /// mode (`pdl_enter` in common.cuh), appended here. With product chains on, a product
    /// launched right after other products it does not race with (its `footprint`, asked only
    /// then, against each of theirs) starts at once as their sibling, not after them; any other
    /// product leads a new chain (waits for the kernel before it, then lets the next one
    /// launch; a persistent `_p` / `_p1` kernel and a wgmma verify kernel do so inside their
    /// body, after their setup and their first Q4_K weight loads, unless `SPECULA_PDL_LATE=0`,
    /// or for the wgmma kernels `SPECULA_WG_LATE=0`). Any other launch ends the chain.
    pub(super) fn launch_product(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        args: &mut Args,
        footprint: impl FnOnce() -> Result<Footprint>,
    ) -> Result<()> {
        // Only the persistent kernels' walk makes a late lead's wait (pdl_late); a one-shot
        // kernel given that mode would never wait, so the name decides.
        let late = name.ends_with("_p") || name.ends_with("_p1");
        self.launch_product_shaped(name, grid, 256, 0, late, args, footprint)
    }

    /// [`Self::launch_product`] with blocks of `block` threads and `smem` bytes of dynamic
    /// shared memory (the wgmma verify kernels' 512 and up to 216 KiB); `late`: the kernel makes
    /// a late lead's wait itself (`pdl_late`), so it may lead late (with `pdl_late` on).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_product_shaped(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        late: bool,
        args: &mut Args,
        footprint: impl FnOnce() -> Result<Footprint>,
    ) -> Result<()> {
        let launch = |args: &mut Args| {
            self.launching_product.set(true);
            let launched = self.launch_smem(name, grid, block, smem, args);
            self.launching_product.set(false);
            launched
        };
        if !(self.pdl && self.pdl_siblings) {
            args.i32(PDL_PLAIN);
            return launch(args);
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            // Nothing launches, so the chain stands (launch returns before ending it).
            args.i32(PDL_PLAIN);
            return launch(args);
        }
        let fp = footprint()?;
        let mut chain = self.pdl_chain.take();
        let sibling = !chain.is_empty() && chain.iter().all(|c| !c.conflicts(&fp));
        args.i32(if sibling {
            PDL_SIBLING
        } else if late && self.pdl_late {
            PDL_LEAD_LATE
        } else {
            PDL_LEAD
        });
        launch(args)?;
        if sibling {
            self.sibling_launches.set(self.sibling_launches.get() + 1);
        } else {
            chain.clear();
        }
        chain.push(fp);
        *self.pdl_chain.borrow_mut() = chain;
        Ok(())
    }

    /// Ends the chain of overlapping products: what runs next waits for all of them. Chains form
    /// only inside `launch_all`, which starts with this; every launch of ours ends them
    /// (`launch_ex`), and so does a cuBLAS call (`launch_gemm`).
    pub(super) fn end_product_chain(&self) {
        self.pdl_chain.borrow_mut().clear();
    }

    pub(super) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut Args,
    ) -> Result<()> {
        self.launch_smem(name, grid, block, 0, args)
    }

    /// [`Self::launch`] with `smem` bytes of dynamic shared memory (the function's maximum was
    /// raised at load where it exceeds 48 KB).
    pub(super) fn launch_smem(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut Args,
    ) -> Result<()> {
        self.launch_ex(name, grid, block, smem, 1, args)
    }

    /// [`Self::launch`] in clusters of `cluster` blocks along x (sm_90; `grid.0` a multiple).
    pub(super) fn launch_cluster(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        cluster: u32,
        args: &mut Args,
    ) -> Result<()> {
        if cluster == 0 || !grid.0.is_multiple_of(cluster) {
            return Err(backend_err(format!(
                "launching {name}: grid {} is not a multiple of clusters of {cluster}",
                grid.0
            )));
        }
        self.launch_ex(name, grid, block, 0, cluster, args)
    }

    fn launch_ex(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        cluster: u32,
        args: &mut Args,
    ) -> Result<()> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| backend_err(format!("kernel {name} is not loaded")))?;
        // The `_mma_` kernels end with a PDL mode argument that only `launch_product` appends.
        if name.contains("_mma_") != self.launching_product.get() {
            return Err(backend_err(format!(
                "{name}: tensor-core products launch through launch_product only"
            )));
        }
        let mut params: Vec<*mut c_void> = args
            .cells
            .iter_mut()
            .map(|c| c.as_mut_ptr() as *mut c_void)
            .collect();
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if let Some(log) = self.launch_log.borrow_mut().as_mut() {
            log.push(name.to_string());
        }
        self.end_product_chain();
        // Programmatic stream serialization lets the launch overlap the previous kernel's tail;
        // every kernel waits for that kernel's completion before any memory access (`pdl_entry`,
        // or a product's `pdl_enter` as a lead) or, as a product chain's sibling, touches only
        // what no chain member touches and waits at exit (`launch_product`).
        let pdl = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let mut attrs = [pdl; 3];
        let mut n_attrs = usize::from(self.pdl && !self.pdl_off_next.replace(false));
        // A step graph's launches prefer one shared-memory share (carveout.rs).
        if let Some(percent) = self.launch_carveout.get() {
            attrs[n_attrs] = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue {
                    sharedMemCarveout: percent as u32,
                },
            };
            n_attrs += 1;
        }
        if cluster > 1 {
            attrs[n_attrs] = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue {
                    clusterDim: sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
                        x: cluster,
                        y: 1,
                        z: 1,
                    },
                },
            };
            n_attrs += 1;
        }
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.launch_stream().cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n_attrs as u32,
        };
        #[allow(unsafe_code)]
        // SAFETY: the parameter cells match the kernel's signature (built by the launchers
        // below from validated nodes) and stay alive until the call returns; every pointer
        // argument addresses a live allocation large enough for the node's layout; `config`
        // and its attributes live on this frame for the whole call.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| driver_err(&format!("launching {name}"), e))
    }
}

/// The dtype code of the kernels (the ggml type id).
pub(super) fn code(dtype: DType) -> i32 {
    dtype.id() as i32
}

/// `dtype`'s entry in a (type, kernel suffix) table, or an error naming `what` is missing.
fn suffix_in(table: &[(DType, &'static str)], dtype: DType, what: &str) -> Result<&'static str> {
    table
        .iter()
        .find(|(t, _)| *t == dtype)
        .map(|(_, s)| *s)
        .ok_or_else(|| backend_err(format!("no {what} for {dtype} weights")))
}

pub(super) fn weight_suffix(dtype: DType) -> Result<&'static str> {
    suffix_in(source::WEIGHT_SUFFIXES, dtype, "CUDA kernels")
}

/// The kernel suffix for `dtype` weights read from their repacked copy (`source::MMA_REPACKED`:
/// `q6_kr`, `q8_0r`), for the `_mma_` and the q8 products alike.
pub(super) fn repacked_suffix(dtype: DType) -> Result<&'static str> {
    suffix_in(source::MMA_REPACKED, dtype, "repacked kernels")
}

pub(super) fn grid1(n: usize, block: usize) -> (u32, u32, u32) {
    (n.div_ceil(block) as u32, 1, 1)
}
