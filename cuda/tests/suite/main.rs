//! The integration tests of aitbc-cuda, one binary: what can be checked without a GPU (the PTX,
//! the absent driver, the CUDA C generator and rescale rule compiled for the host, the test
//! reference itself) and the GPU tests, which print `SKIP: no CUDA driver` and pass when there
//! is no driver to run them on.

mod gpu;
mod host_check;
mod kernel_emulation;
mod no_driver;
mod ptx;
mod reference;
