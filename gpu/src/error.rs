//! The crate's one error type.

/// What can go wrong on the way to, or on, a device.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No CUDA driver library could be loaded.
    #[error("no CUDA driver library (libcuda) could be loaded")]
    NoDriver,
    /// The driver loaded but offers no usable device.
    #[error("no usable GPU: {reason}")]
    NoDevice { reason: String },
    /// A driver call failed.
    #[error("CUDA driver call {call} failed: {message}")]
    Driver { call: &'static str, message: String },
    /// NVRTC is missing or refused a kernel.
    #[error("NVRTC could not compile the kernels for {arch}: {log}")]
    Compile { arch: String, log: String },
    /// The device lacks the memory a stage needs.
    #[error("the GPU has {free_bytes} bytes free, a stage needs {needed_bytes}")]
    OutOfMemory { needed_bytes: u64, free_bytes: u64 },
    /// A kernel reported a condition the CPU path must handle (flags of
    /// `FL_ERROR_*` in `kernels/common.cuh`).
    #[error("a GPU kernel reported {what}")]
    Kernel { what: String },
    /// DataFusion failed while the stage was planned.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Something the GPU stage does not support.
    #[error("not supported on the GPU: {what}")]
    Unsupported { what: String },
}

/// Broad classes of [`GpuError`], as the other crates' errors have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Unavailable,
    Unsupported,
    ResourcesExhausted,
    Internal,
}

impl GpuError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            GpuError::NoDriver | GpuError::NoDevice { .. } => ErrorKind::Unavailable,
            GpuError::Unsupported { .. } => ErrorKind::Unsupported,
            GpuError::OutOfMemory { .. } => ErrorKind::ResourcesExhausted,
            GpuError::Driver { .. }
            | GpuError::Compile { .. }
            | GpuError::Kernel { .. }
            | GpuError::DataFusion(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        GpuError::Unsupported { what: what.into() }
    }

    pub(crate) fn driver(call: &'static str, error: impl std::fmt::Debug) -> Self {
        GpuError::Driver {
            call,
            message: format!("{error:?}"),
        }
    }
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;
