//! GPU operators for executors.
//!
//! - [`detect`] / [`probe`]: the one seam to the hardware; no device without
//!   libcuda, without a device, or below compute capability 8.0, and never a
//!   panic.
//! - `kernels/`: the CUDA C source, compiled with NVRTC at executor start
//!   for the device found ([`nvrtc`]), and for the host through
//!   `emulation/cuda_emulation.h` (the tests run the same code).
//! - [`GpuStageRule`]: turns supported partial aggregates (with the
//!   projection and filter under them) into a [`GpuStageExec`] that keeps the
//!   CPU plan and falls back to it.
//!
//! The executor is the crate's only user; nothing here depends on another
//! workspace crate, and plans on the wire never mention GPUs.

mod backend;
mod cuda;
mod device;
mod error;
pub mod nvrtc;
pub mod program;
mod rule;
mod stage;

pub use backend::Figures;
pub use device::{
    cpu_rows_per_second, detect, probe, Calibration, Device, DeviceInfo, COMPUTE_CAPABILITY_MIN,
    STAGES_PER_DEVICE,
};
pub use error::{ErrorKind, GpuError, Result};
pub use rule::{estimate, Capability, Estimate, GpuMode, GpuStageRule, ROWS_MIN};
pub use stage::{stage_counts, AggregateStage, Decision, GpuStageExec, CHUNK_ROWS};

/// Inner-join pairs (probe row, build row) on one integer key, computed by
/// the join kernels in the host emulation: the kernels' own check.
pub fn emulated_join_pairs(
    build: &dyn arrow::array::Array,
    probe: &dyn arrow::array::Array,
) -> Result<(Vec<i32>, Vec<i32>)> {
    backend::join_on(&backend::Backend::Emulated, build, probe)
}

/// The same pairs on `device`.
pub fn join_pairs(
    device: &std::sync::Arc<Device>,
    build: &dyn arrow::array::Array,
    probe: &dyn arrow::array::Array,
) -> Result<(Vec<i32>, Vec<i32>)> {
    backend::join_on(
        &backend::Backend::Cuda(std::sync::Arc::clone(device)),
        build,
        probe,
    )
}
