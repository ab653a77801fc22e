//! What a machine has for the CUDA backend, and what to install where something is missing.

use cudarc::driver::{result as cu, sys};

use crate::{nvrtc, source};

/// One check: its name and either what was found or what is missing and how to get it.
pub type Check = (String, Result<String, String>);

/// Checks the driver, the devices, NVRTC and that the kernels compile for each device.
pub fn checks() -> Vec<Check> {
    let mut out = Vec::new();
    #[allow(unsafe_code)]
    // SAFETY: only tries to dlopen libcuda by its candidate names; no symbol is called.
    let driver = unsafe { sys::is_culib_present() };
    if !driver {
        out.push((
            "CUDA driver (libcuda.so.1)".into(),
            Err("not found: install the NVIDIA driver for your GPU; without it specula runs on the CPU".into()),
        ));
        return out;
    }
    let mut version = 0;
    #[allow(unsafe_code)]
    // SAFETY: the driver library is present; valid out-pointer.
    let v = unsafe { sys::cuDriverGetVersion(&mut version) }.result();
    out.push((
        "CUDA driver".into(),
        v.map(|()| format!("supports CUDA {}.{}", version / 1000, (version % 1000) / 10))
            .map_err(|e| format!("{e:?}")),
    ));
    let devices: Vec<(String, i32, i32, usize)> =
        match cu::init().and_then(|()| cu::device::get_count()) {
            Ok(n) => (0..n)
                .filter_map(|i| {
                    let dev = cu::device::get(i).ok()?;
                    let name = cu::device::get_name(dev).unwrap_or_default();
                    #[allow(unsafe_code)]
                    // SAFETY: `dev` is a valid device handle from get(); attribute queries only read.
                    let (major, minor, mem) = unsafe {
                        (
                        cu::device::get_attribute(
                            dev,
                            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                        )
                        .unwrap_or(0),
                        cu::device::get_attribute(
                            dev,
                            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                        )
                        .unwrap_or(0),
                        cu::device::total_mem(dev).unwrap_or(0),
                    )
                    };
                    Some((name, major, minor, mem))
                })
                .collect(),
            Err(e) => {
                out.push((
                    "GPUs".into(),
                    Err(format!("the driver reports an error: {e:?}")),
                ));
                return out;
            }
        };
    if devices.is_empty() {
        out.push((
            "GPUs".into(),
            Err("none visible (check CUDA_VISIBLE_DEVICES and the driver)".into()),
        ));
    }
    for (i, (name, major, minor, mem)) in devices.iter().enumerate() {
        let ok = *major >= 8;
        let detail = format!(
            "{name}, sm_{major}{minor}, {:.1} GiB",
            *mem as f64 / (1u64 << 30) as f64
        );
        out.push((
            format!("GPU {i}"),
            if ok {
                Ok(detail)
            } else {
                Err(format!(
                    "{detail}: compute capability 8.0 or newer is needed"
                ))
            },
        ));
    }
    match nvrtc::nvrtc_version() {
        Ok((major, minor)) => out.push(("NVRTC (libnvrtc)".into(), Ok(format!("{major}.{minor}")))),
        Err(_) => {
            out.push((
                "NVRTC (libnvrtc)".into(),
                Err("not found: `pip install nvidia-cuda-nvrtc` (or the CUDA toolkit) and add its lib folder to LD_LIBRARY_PATH".into()),
            ));
            return out;
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: only tries to dlopen libcublas by its candidate names; no symbol is called.
    let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
    out.push((
        "cuBLAS (libcublas, optional)".into(),
        Ok(if cublas {
            "found: prefill chunks take the GEMM route".into()
        } else {
            "not found: prefill runs on the tensor-core kernels (slower); the CUDA toolkit's lib folder on LD_LIBRARY_PATH enables it".into()
        }),
    ));
    let src = source::full_source();
    let mut archs: Vec<String> = devices
        .iter()
        .filter(|d| d.1 >= 8)
        .map(|d| nvrtc::arch_for(d.1, d.2))
        .collect();
    archs.dedup();
    for arch in archs {
        let r =
            nvrtc::cubin_cached(&src, Box::leak(arch.clone().into_boxed_str()), version).map(|c| {
                format!(
                    "{} kernels, cubin {} KiB (cached)",
                    source::all_kernel_names().len(),
                    c.len() / 1024
                )
            });
        out.push((format!("kernels for {arch}"), r));
    }
    out
}
