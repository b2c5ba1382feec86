//! A host without the NVIDIA driver (this machine and CI): the crate says so and returns error
//! values; nothing panics and nothing initialises CUDA.

use aitbc_cuda::{cublas_present, driver_present, CudaError, Gpu};

#[test]
fn without_a_driver_open_is_an_error_value_not_a_panic() {
    if driver_present() {
        println!("SKIP: a CUDA driver is present; the no-driver path is not exercised here");
        return;
    }
    // Asking twice gives the same answer (cached) and still does not panic.
    assert!(!driver_present());
    let e = Gpu::open(0).unwrap_err();
    assert!(matches!(e, CudaError::NoDriver), "{e}");
    assert!(e.to_string().contains("ACCEL_MODE=cpu"), "{e}");
    // Another ordinal, same answer: the check comes before any device is named.
    assert!(matches!(Gpu::open(7), Err(CudaError::NoDriver)));
}

#[test]
fn library_probes_never_panic() {
    // Whatever this host has, the probes answer.
    let _ = (driver_present(), cublas_present());
}
