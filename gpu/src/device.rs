//! The one seam to the hardware: [`detect`] finds a usable device or says
//! why there is none, and never panics.
//!
//! A device is usable when the CUDA driver library loads, reports a device
//! of compute capability 8.0 or more, and the kernels compile (NVRTC, for
//! the device's own architecture) and load on it. Without libcuda, cudarc
//! panics on its first driver call, so the library's presence is probed
//! first; a driver that reports no device returns an error cleanly.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::error::{GpuError, Result};
use crate::nvrtc;

/// The oldest compute capability the kernels are built and tested for.
pub const COMPUTE_CAPABILITY_MIN: (i32, i32) = (8, 0);

/// What a device is.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: u64,
}

/// A usable device with the kernels loaded, and its measured speeds.
pub struct Device {
    info: DeviceInfo,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) aggregate: CudaFunction,
    pub(crate) join_build: CudaFunction,
    pub(crate) join_probe: CudaFunction,
    /// GPU stages that may run at once on this device.
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    calibration: std::sync::OnceLock<Calibration>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("info", &self.info)
            .field("calibration", &self.calibration())
            .finish()
    }
}

/// Speeds measured on the device when it was found (the cost model's
/// constants).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Host to device copies, bytes per second.
    pub copy_in_bytes_per_second: f64,
    /// The fused aggregate kernel over a chunk of rows, rows per second.
    pub kernel_rows_per_second: f64,
    /// Fixed cost of a launch with its copies.
    pub launch: Duration,
}

/// GPU stages allowed on one device at a time.
pub const STAGES_PER_DEVICE: usize = 2;

impl Device {
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn calibration(&self) -> Calibration {
        self.calibration.get().copied().unwrap_or(Calibration {
            copy_in_bytes_per_second: 10e9,
            kernel_rows_per_second: 1e9,
            launch: Duration::from_micros(50),
        })
    }

    /// Device memory free now.
    pub fn free_bytes(&self) -> u64 {
        self.ctx.mem_get_info().map_or(0, |(free, _)| free as u64)
    }
}

/// The device, if this machine has a usable one; `None` otherwise (see
/// [`probe`] for why).
pub fn detect() -> Option<Arc<Device>> {
    probe(None).ok()
}

/// Like [`detect`], saying why there is no device. Kernels are compiled for
/// the device's architecture and cached in `cache_dir` when given.
pub fn probe(cache_dir: Option<&Path>) -> Result<Arc<Device>> {
    // SAFETY: probing tries to load the library by name, nothing more.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(GpuError::NoDriver);
    }
    // A driver library that lacks a symbol cudarc needs panics inside
    // cudarc: caught here (the workspace does not abort on panic).
    std::panic::catch_unwind(|| open(cache_dir)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Err(GpuError::NoDevice {
            reason: format!("the driver library is unusable: {what}"),
        })
    })
}

fn open(cache_dir: Option<&Path>) -> Result<Arc<Device>> {
    let no_device = |e: cudarc::driver::DriverError| GpuError::NoDevice {
        reason: format!("{e:?}"),
    };
    let ctx = CudaContext::new(0).map_err(no_device)?;
    let compute_capability = ctx.compute_capability().map_err(no_device)?;
    let info = DeviceInfo {
        name: ctx.name().map_err(no_device)?,
        compute_capability,
        memory_bytes: ctx.total_mem().map_err(no_device)? as u64,
    };
    if compute_capability < COMPUTE_CAPABILITY_MIN {
        return Err(GpuError::NoDevice {
            reason: format!(
                "{} has compute capability {}.{}, below {}.{}",
                info.name,
                compute_capability.0,
                compute_capability.1,
                COMPUTE_CAPABILITY_MIN.0,
                COMPUTE_CAPABILITY_MIN.1
            ),
        });
    }
    let (major, minor) = compute_capability;
    // A cubin for the device itself; PTX (compiled by the driver) if the
    // driver refuses the cubin, as one older than NVRTC would.
    let cubin = nvrtc::compile_cached(&format!("sm_{major}{minor}"), cache_dir)?;
    let module = match ctx.load_module(Ptx::from_binary(cubin.image)) {
        Ok(module) => module,
        Err(cubin_error) => {
            let ptx = nvrtc::compile(&format!("compute_{major}{minor}"))?;
            let text = String::from_utf8_lossy(&ptx.image).into_owned();
            ctx.load_module(Ptx::from_src(text))
                .map_err(|ptx_error| GpuError::NoDevice {
                    reason: format!(
                        "the kernels do not load: cubin {cubin_error:?}, PTX {ptx_error:?}"
                    ),
                })?
        }
    };
    let function = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| GpuError::driver("cuModuleGetFunction", e))
    };
    let stream = ctx.default_stream();
    let device = Arc::new(Device {
        aggregate: function("flotilla_aggregate")?,
        join_build: function("flotilla_join_build")?,
        join_probe: function("flotilla_join_probe")?,
        info,
        ctx,
        stream,
        permits: Arc::new(tokio::sync::Semaphore::new(STAGES_PER_DEVICE)),
        calibration: std::sync::OnceLock::new(),
    });
    let measured = crate::cuda::calibrate(&device)?;
    let _ = device.calibration.set(measured);
    Ok(device)
}

/// How fast this machine's CPU runs the same kind of stage, measured once
/// per process: DataFusion's vectorized filter and sum over a million rows.
pub fn cpu_rows_per_second() -> f64 {
    static MEASURED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *MEASURED.get_or_init(|| {
        use arrow::array::{Float64Array, Int32Array};
        use arrow::compute::kernels::{aggregate::sum, cmp::lt, filter::filter};
        let rows = 1 << 20;
        let keys = Int32Array::from_iter_values((0..rows).map(|i| i % 100));
        let values = Float64Array::from_iter_values((0..rows).map(|i| i as f64));
        let limit = Int32Array::new_scalar(50);
        let started = Instant::now();
        let mut runs = 0u32;
        while runs < 3 || started.elapsed() < Duration::from_millis(20) {
            let Ok(mask) = lt(&keys, &limit) else { break };
            let Ok(kept) = filter(&values, &mask) else {
                break;
            };
            if let Some(kept) = kept.as_any().downcast_ref::<Float64Array>() {
                std::hint::black_box(sum(kept));
            }
            runs += 1;
        }
        (rows as f64 * runs as f64) / started.elapsed().as_secs_f64().max(1e-9)
    })
}
