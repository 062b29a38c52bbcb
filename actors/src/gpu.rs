//! Finding GPUs at start-up.
//!
//! torch-sys links `libtorch_cuda.so` only when it exists at build time, and
//! the linker drops a library nothing references by name, so even a binary
//! built against a CUDA-enabled libtorch may start without its CUDA half.
//! libtorch registers its CUDA backend when that library is loaded, so mlq
//! loads it with `dlopen` before asking for devices: the same binary then
//! runs on GPUs where a CUDA-enabled libtorch is installed, and on CPUs
//! everywhere else.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The CUDA library's file name.
const CUDA_LIBRARY: &str = "libtorch_cuda.so";

/// Loads libtorch's CUDA library, if it sits beside the loaded
/// `libtorch_cpu.so` (or at `MLQ_LIBTORCH_CUDA`), and says which file it
/// loaded. `Err` says why not; that is normal on a CPU-only install.
pub fn load_cuda() -> Result<PathBuf, String> {
    let path = match std::env::var_os("MLQ_LIBTORCH_CUDA") {
        Some(p) => PathBuf::from(p),
        None => loaded_library_dir("libtorch_cpu.so")
            .ok_or("libtorch_cpu.so is not loaded from a file mlq can see")?
            .join(CUDA_LIBRARY),
    };
    if !path.exists() {
        return Err(format!(
            "{} does not exist (a CPU-only libtorch)",
            path.display()
        ));
    }
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| "the library path holds a NUL byte".to_owned())?;
    // SAFETY: dlopen with a valid NUL-terminated path; the handle is kept
    // for the life of the process (never closed), as libtorch's backends
    // register themselves globally when loaded.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or NULL.
        let reason = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_owned()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!("loading {}: {reason}", path.display()));
    }
    Ok(path)
}

/// The GPUs libtorch can use now (0 without CUDA).
pub fn cuda_devices() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// Whether libtorch sees CUDA, after loading its CUDA library: what
/// `mlq devices` prints.
pub fn report() -> serde_json::Value {
    let library = load_cuda();
    serde_json::json!({
        "cuda_library": library.as_ref().ok().map(|p| p.display().to_string()),
        "cuda_library_error": library.err(),
        "cuda_available": tch::Cuda::is_available(),
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "gpus": cuda_devices(),
    })
}

/// The folder of a shared library this process has loaded, from
/// `/proc/self/maps`.
fn loaded_library_dir(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| p.file_name().is_some_and(|f| f == name))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_is_found_and_a_cpu_build_says_why_it_has_no_cuda() {
        // Touch libtorch so its library is mapped.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let dir = loaded_library_dir("libtorch_cpu.so").expect("libtorch_cpu.so is loaded");
        assert!(dir.join("libtorch_cpu.so").exists());
        match load_cuda() {
            Ok(path) => assert!(path.ends_with(CUDA_LIBRARY)),
            Err(why) => assert!(why.contains(CUDA_LIBRARY), "{why}"),
        }
    }
}
