//! [`CudaError`], the one error type of this crate: every failure of the GPU path, from a host
//! without a driver to a job over its VRAM cap, as a value the worker can report.
//!
//! Messages name the thing and the value and, where an operator can act, the fix. They must
//! never be built by formatting a panic payload that could hold anything but text.

use cudarc::cublas::result::CublasError;
use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;

/// Everything that can go wrong on the GPU path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda.so.1` cannot be loaded: no NVIDIA driver on this host (or not visible to us:
    /// the loader finds it through `/etc/ld.so.cache`, since workers run with an empty
    /// environment).
    #[error(
        "no CUDA driver: libcuda.so.1 not found (neither libcuda.so nor libcuda.so.1 loads; \
         install the NVIDIA driver, 525 or newer, or run the miner with ACCEL_MODE=cpu)"
    )]
    NoDriver,

    /// A CUDA driver call failed.
    #[error("CUDA driver error while {during}: {source}")]
    Driver {
        /// What we were doing, e.g. "loading the PTX module".
        during: &'static str,
        #[source]
        source: DriverError,
    },

    /// A cuBLAS call failed.
    #[error("cuBLAS error while {during}: {source}")]
    Cublas {
        /// What we were doing.
        during: &'static str,
        #[source]
        source: CublasError,
    },

    /// An allocation would take the job past its VRAM cap; nothing was allocated for it.
    #[error(
        "GPU memory cap exceeded: {what} needs {bytes} bytes with {used} already allocated, \
         over the job's cap of {cap} bytes (torch_bench needs vram_needed(n) bytes; raise \
         the job's vram_mb or lower n)"
    )]
    VramCap {
        /// The buffer that was refused.
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// Bytes this job had already allocated.
        used: u64,
        /// The job's cap.
        cap: u64,
    },

    /// A chain parameter this crate cannot run.
    #[error("{field} = {value}: {reason}")]
    BadParams {
        /// The parameter, e.g. "params.n".
        field: &'static str,
        /// Its value, as given.
        value: String,
        /// What was expected.
        reason: String,
    },

    /// cuBLAS was asked for explicitly but is not loaded in this [`crate::Gpu`].
    #[error("cuBLAS is not available on this GPU handle: {reason}")]
    CublasUnavailable {
        /// Why it was not loaded.
        reason: String,
    },

    /// The device's result disagrees with what it must be (the kernels counted another number
    /// of steps than `iters`, a warm-up chain's bytes are not the protocol's reference, the
    /// streamed rows do not add up): a bug or a faulty GPU, not bad input.
    #[error("the GPU chain is inconsistent: {what} is {got}, expected {expected}")]
    Inconsistent {
        /// What was checked, e.g. "the device's count of requantizations".
        what: &'static str,
        /// What the device gave.
        got: String,
        /// What it should have been.
        expected: String,
    },

    /// cudarc panicked (e.g. a symbol missing from an old driver); caught and turned into a value.
    #[error("the CUDA bindings panicked while {during}: {message}")]
    Panicked {
        /// What we were doing.
        during: &'static str,
        /// The panic's message, when it was text.
        message: String,
    },
}

impl CudaError {
    /// Whether this is the device running out of memory: the job's own cap
    /// ([`CudaError::VramCap`]), the driver's `CUDA_ERROR_OUT_OF_MEMORY` (other processes hold
    /// the rest) or cuBLAS failing to allocate.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            CudaError::VramCap { .. } => true,
            CudaError::Driver { source, .. } => source.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            CudaError::Cublas { source, .. } => {
                source.0 == cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
            }
            _ => false,
        }
    }

    /// A `map_err` adapter for driver calls: `.map_err(CudaError::driver("launching"))`.
    pub fn driver(during: &'static str) -> impl FnOnce(DriverError) -> CudaError {
        move |source| CudaError::Driver { during, source }
    }

    /// A `map_err` adapter for cuBLAS calls.
    pub fn cublas(during: &'static str) -> impl FnOnce(CublasError) -> CudaError {
        move |source| CudaError::Cublas { during, source }
    }

    /// Turns a caught panic payload into [`CudaError::Panicked`].
    pub(crate) fn panicked(during: &'static str, payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(a panic without a message)".to_string()
        };
        CudaError::Panicked { during, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_value_and_the_fix() {
        let e = CudaError::VramCap {
            what: "W",
            bytes: 4096,
            used: 8192,
            cap: 10_000,
        };
        let s = e.to_string();
        assert!(
            s.contains("W needs 4096 bytes") && s.contains("cap of 10000"),
            "{s}"
        );
        let none = CudaError::NoDriver.to_string();
        assert!(
            none.starts_with("no CUDA driver: libcuda.so.1 not found")
                && none.contains("ACCEL_MODE=cpu"),
            "{none}"
        );
        assert!(e.is_out_of_memory());
        let oom = CudaError::Driver {
            during: "allocating X",
            source: DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY),
        };
        assert!(oom.is_out_of_memory());
        let other = CudaError::Driver {
            during: "launching",
            source: DriverError(CUresult::CUDA_ERROR_LAUNCH_FAILED),
        };
        assert!(!other.is_out_of_memory() && !CudaError::NoDriver.is_out_of_memory());
        let blas = CudaError::Cublas {
            during: "x",
            source: CublasError(cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED),
        };
        assert!(blas.is_out_of_memory());
        let p = CudaError::panicked("loading", Box::new("Missing symbol cuFoo"));
        assert_eq!(
            p.to_string(),
            "the CUDA bindings panicked while loading: Missing symbol cuFoo"
        );
        let p = CudaError::panicked("x", Box::new(String::from("owned")));
        assert!(p.to_string().ends_with("owned"));
        let p = CudaError::panicked("x", Box::new(7u8));
        assert!(p.to_string().contains("without a message"));
    }
}
