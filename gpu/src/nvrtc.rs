//! The kernels' source and their compilation with NVRTC (which needs no GPU):
//! PTX for a virtual architecture (`compute_90`), or a cubin for a real one
//! (`sm_90`) together with ptxas' register and spill figures per kernel.
//!
//! NVRTC is loaded at run time. Besides the places the dynamic loader
//! searches, [`load_library`] looks at `FLOTILLA_NVRTC` (the library file or
//! its directory) and at the `nvidia-cuda-nvrtc-cu12` wheel of the system's
//! Python, so a `pip install` is enough on a machine without the CUDA toolkit.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cudarc::nvrtc::{result, sys};

use crate::error::{GpuError, Result};

/// The CUDA source of every kernel, one translation unit.
pub const KERNEL_SOURCE: &str = concat!(
    include_str!("../kernels/common.cuh"),
    include_str!("../kernels/aggregate.cu"),
    include_str!("../kernels/join.cu"),
);

/// The kernels' entry points.
pub const KERNELS: [&str; 3] = [
    "flotilla_aggregate",
    "flotilla_join_build",
    "flotilla_join_probe",
];

/// Options every compilation uses. `__int128` holds decimals on the device.
const BASE_OPTIONS: [&str; 2] = ["--device-int128", "--std=c++17"];

/// ptxas' figures for one kernel of a cubin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionFigures {
    pub name: String,
    pub registers: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// One compilation's output.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// `compute_XY` (PTX) or `sm_XY` (cubin).
    pub arch: String,
    /// The PTX text or the cubin.
    pub image: Vec<u8>,
    /// NVRTC's log.
    pub log: String,
    /// Per kernel, for a cubin (empty for PTX).
    pub functions: Vec<FunctionFigures>,
    pub elapsed: Duration,
}

impl KernelBuild {
    pub fn is_cubin(&self) -> bool {
        self.arch.starts_with("sm_")
    }
}

/// Makes NVRTC loadable, or says why it is not.
pub fn load_library() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(find_and_load)
        .clone()
        .map_err(|log| GpuError::Compile {
            arch: "any".into(),
            log,
        })
}

fn find_and_load() -> std::result::Result<(), String> {
    let mut tried = Vec::new();
    for candidate in candidates() {
        // Loaded by its path and kept loaded, the library answers the
        // by-name load cudarc does next (it matches the soname).
        // SAFETY: loading NVRTC runs only its initialisers, which have no
        // preconditions.
        match unsafe { libloading::Library::new(&candidate) } {
            Ok(library) => {
                std::mem::forget(library);
                break;
            }
            Err(error) => tried.push(format!("{}: {error}", candidate.display())),
        }
    }
    // SAFETY: probing loads and unloads the library by name only.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(format!(
            "libnvrtc not found (set FLOTILLA_NVRTC, or pip install nvidia-cuda-nvrtc-cu12); tried {}",
            if tried.is_empty() {
                "the loader's paths".to_string()
            } else {
                tried.join("; ")
            }
        ))
    }
}

/// Where NVRTC may be, besides the loader's own paths.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let push_dir = |dir: &Path, out: &mut Vec<PathBuf>| {
        for name in ["libnvrtc.so.12", "libnvrtc.so"] {
            let file = dir.join(name);
            if file.exists() {
                out.push(file);
            }
        }
    };
    if let Some(given) = std::env::var_os("FLOTILLA_NVRTC").map(PathBuf::from) {
        if given.is_dir() {
            push_dir(&given, &mut out);
        } else {
            out.push(given);
        }
    }
    for dir in ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"] {
        push_dir(Path::new(dir), &mut out);
    }
    // The wheel's directory, as the system Python sees it.
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(output) = probe {
        if output.status.success() {
            let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
            push_dir(Path::new(&dir), &mut out);
        }
    }
    out
}

/// Compiles [`KERNEL_SOURCE`] for `arch`: `compute_XY` gives PTX, `sm_XY` a
/// cubin with ptxas' figures.
pub fn compile(arch: &str) -> Result<KernelBuild> {
    compile_source(KERNEL_SOURCE, arch)
}

/// Compiles `source` (see [`compile`]).
pub fn compile_source(source: &str, arch: &str) -> Result<KernelBuild> {
    load_library()?;
    let failed = |log: String| GpuError::Compile {
        arch: arch.to_string(),
        log,
    };
    let started = Instant::now();
    let source = CString::new(source).map_err(|_| failed("a NUL byte in the source".into()))?;
    let name = c"flotilla_kernels.cu";
    let program =
        result::create_program(&source, Some(name)).map_err(|e| failed(format!("{e:?}")))?;
    let cubin = arch.starts_with("sm_");
    let mut options: Vec<String> = BASE_OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    if cubin {
        options.push("--ptxas-options=-v".into());
    }
    // SAFETY: `program` was created above and is destroyed once, below.
    let compiled = unsafe { result::compile_program(program, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program) }
        .map(|raw| c_text(&raw))
        .unwrap_or_default();
    let image = compiled
        .map_err(|e| failed(format!("{e:?}: {log}")))
        .and_then(|()| {
            // SAFETY: as above; the program compiled.
            unsafe {
                if cubin {
                    cubin_of(program).map_err(|e| failed(format!("{e:?}")))
                } else {
                    result::get_ptx(program)
                        .map(|raw| c_text(&raw).into_bytes())
                        .map_err(|e| failed(format!("{e:?}")))
                }
            }
        });
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(program) };
    let image = image?;
    Ok(KernelBuild {
        arch: arch.to_string(),
        functions: if cubin {
            ptxas_figures(&log)
        } else {
            Vec::new()
        },
        image,
        log,
        elapsed: started.elapsed(),
    })
}

/// # Safety
/// `program` must be a live, compiled NVRTC program.
unsafe fn cubin_of(program: sys::nvrtcProgram) -> std::result::Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(program, &mut size).result()?;
    let mut image = vec![0u8; size];
    sys::nvrtcGetCUBIN(program, image.as_mut_ptr() as *mut c_char).result()?;
    Ok(image)
}

fn c_text(raw: &[c_char]) -> String {
    if raw.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC's strings end with a NUL within the buffer it sized.
    unsafe { CStr::from_ptr(raw.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Reads ptxas' `-v` lines: "Compiling entry function 'f' for 'sm_90'",
/// "N bytes stack frame, S bytes spill stores, L bytes spill loads",
/// "Used R registers".
pub fn ptxas_figures(log: &str) -> Vec<FunctionFigures> {
    let mut out: Vec<FunctionFigures> = Vec::new();
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let end = line.find(what)?;
        line[..end].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(FunctionFigures {
                name,
                ..FunctionFigures::default()
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        if let Some(n) = number_before(line, "bytes stack frame") {
            current.stack_frame_bytes = n;
        }
        if let Some(n) = number_before(line, "bytes spill stores") {
            current.spill_store_bytes = n;
        }
        if let Some(n) = number_before(line, "bytes spill loads") {
            current.spill_load_bytes = n;
        }
        if let Some(n) = number_before(line, "registers") {
            current.registers = n;
        }
    }
    out
}

/// A cubin for `arch` from the cache directory, or compiled and stored there.
/// The cache key covers the source, the architecture and NVRTC's version.
pub fn compile_cached(arch: &str, cache_dir: Option<&Path>) -> Result<KernelBuild> {
    let Some(dir) = cache_dir else {
        return compile(arch);
    };
    load_library()?;
    let key = cache_key(arch);
    let file = dir.join(format!("flotilla-kernels-{arch}-{key:016x}.bin"));
    if let Ok(image) = std::fs::read(&file) {
        return Ok(KernelBuild {
            arch: arch.to_string(),
            image,
            log: String::new(),
            functions: Vec::new(),
            elapsed: Duration::ZERO,
        });
    }
    let build = compile(arch)?;
    if std::fs::create_dir_all(dir).is_ok() {
        // Written aside and renamed, so a concurrent reader never sees half.
        let partial = file.with_extension(format!("{}.partial", std::process::id()));
        if std::fs::write(&partial, &build.image).is_ok() {
            let _ = std::fs::rename(&partial, &file);
        }
    }
    Ok(build)
}

fn cache_key(arch: &str) -> u64 {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded (load_library) and the call only writes
    // the two integers.
    unsafe {
        let _ = sys::nvrtcVersion(&mut major, &mut minor);
    }
    // FNV-1a: stable across builds, unlike the standard hasher.
    let mut hash = 0xcbf29ce484222325u64;
    let text = format!(
        "{major}.{minor}|{arch}|{}|{KERNEL_SOURCE}",
        BASE_OPTIONS.join(" ")
    );
    for byte in text.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_lines_are_read() {
        let log = "ptxas info    : Compiling entry function 'flotilla_aggregate' for 'sm_90'\n\
                   ptxas info    : Function properties for flotilla_aggregate\n\
                   ptxas         .     576 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
                   ptxas info    : Used 43 registers, used 0 barriers, 576 bytes cumulative stack size\n";
        assert_eq!(
            ptxas_figures(log),
            vec![FunctionFigures {
                name: "flotilla_aggregate".into(),
                registers: 43,
                stack_frame_bytes: 576,
                spill_store_bytes: 8,
                spill_load_bytes: 4,
            }]
        );
    }
}
