//! Run-time compilation with NVRTC to a cubin for the device's exact architecture (so an older
//! driver never JIT-compiles newer PTX), cached on disk by source hash, architecture and
//! NVRTC version.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

/// Whether libnvrtc can be loaded (checked before any NVRTC call, which would panic).
pub fn nvrtc_available() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: only tries to dlopen the library by its candidate names; no symbol is called.
    unsafe {
        sys::is_culib_present()
    }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    if !nvrtc_available() {
        return Err("libnvrtc is not installed".into());
    }
    let (mut major, mut minor) = (0, 0);
    #[allow(unsafe_code)]
    // SAFETY: the library is present (checked above); both pointers are valid for writes.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    status
        .result()
        .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok((major, minor))
}

/// The result of compiling the module.
pub struct Compiled {
    /// The cubin (or PTX when `ptx` was asked for).
    pub image: Vec<u8>,
    /// NVRTC's log (warnings, and ptxas resource usage with `verbose`).
    pub log: String,
}

/// The architecture the module is built for on a device of compute capability `major.minor`:
/// `sm_90a` on 9.0 devices (the wgmma verify kernels need it; every other kernel compiles to the
/// same code as for sm_90), else `sm_<major><minor>`.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// Compiles `source` for `arch` (`"sm_90"`): a cubin, or PTX if `ptx` is set.
pub fn compile(source: &str, arch: &str, ptx: bool, verbose: bool) -> Result<Compiled, String> {
    if !nvrtc_available() {
        return Err("libnvrtc is not installed (install the CUDA toolkit or the nvidia-cuda-nvrtc wheel and add its lib folder to LD_LIBRARY_PATH)".into());
    }
    let src = CString::new(source).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let name = CString::new("specula.cu").expect("static name has no NUL");
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let mut options = vec![
        format!(
            "--gpu-architecture={}",
            if ptx {
                arch.replace("sm_", "compute_")
            } else {
                arch.to_string()
            }
        ),
        "--std=c++17".to_string(),
    ];
    if verbose {
        options.push("--ptxas-options=-v".into());
    }
    #[allow(unsafe_code)]
    // SAFETY: `prog` was just created and is destroyed once below; the options are valid
    // C strings built by `compile_program`.
    let compiled = unsafe { result::compile_program(prog, &options) };
    #[allow(unsafe_code)]
    // SAFETY: `prog` is alive; the log is copied before the program is destroyed.
    let log = unsafe { result::get_program_log(prog) }
        .map(|raw| {
            let bytes: Vec<u8> = raw
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let image = compiled
        .map_err(|e| format!("NVRTC failed ({e:?}) for {arch}:\n{log}"))
        .and_then(|()| {
            let mut size = 0usize;
            #[allow(unsafe_code)]
            // SAFETY: `prog` compiled successfully; `size` is a valid out-pointer, and the buffer
            // handed to the second call holds exactly the size the first returned.
            unsafe {
                if ptx {
                    sys::nvrtcGetPTXSize(prog, &mut size)
                        .result()
                        .map_err(|e| format!("nvrtcGetPTXSize: {e:?}"))?;
                    let mut buf = vec![0u8; size];
                    sys::nvrtcGetPTX(prog, buf.as_mut_ptr() as *mut c_char)
                        .result()
                        .map_err(|e| format!("nvrtcGetPTX: {e:?}"))?;
                    Ok(buf)
                } else {
                    sys::nvrtcGetCUBINSize(prog, &mut size)
                        .result()
                        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
                    let mut buf = vec![0u8; size];
                    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
                        .result()
                        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
                    Ok(buf)
                }
            }
        });
    #[allow(unsafe_code)]
    // SAFETY: `prog` was created above and is not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(Compiled { image: image?, log })
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPECULA_KERNEL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("specula").join("kernels")
}

/// The module's cubin for `arch`, from the disk cache or freshly compiled (then cached).
/// `driver` (the driver version) is part of the key.
pub fn cubin_cached(source: &str, arch: &str, driver: i32) -> Result<Vec<u8>, String> {
    let (major, minor) = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update(format!("{arch}/{major}.{minor}/{driver}").as_bytes());
    let key = format!("{:x}", h.finalize());
    let path = cache_dir().join(format!("{}-{arch}.cubin", &key[..32]));
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    let compiled = compile(source, arch, false, false)?;
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &compiled.image).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(compiled.image)
}

#[cfg(test)]
mod tests {
    /// 9.0 devices build for sm_90a (wgmma); others for their own architecture.
    #[test]
    fn nine_zero_devices_build_for_sm_90a() {
        assert_eq!(super::arch_for(9, 0), "sm_90a");
        assert_eq!(super::arch_for(8, 9), "sm_89");
        assert_eq!(super::arch_for(8, 0), "sm_80");
        assert_eq!(super::arch_for(10, 0), "sm_100");
    }
}
