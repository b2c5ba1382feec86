//! Whether the NVIDIA libraries a GPU worker needs can be loaded on this host: the CUDA driver
//! (`libcuda.so.1`), NVML (`libnvidia-ml.so.1`) and cuBLAS (the names cudarc tries). Each is a
//! `dlopen` probe with `RTLD_LAZY | RTLD_LOCAL`, closed again at once.
//!
//! It must never call a CUDA function (no `cuInit`): the supervisor only asks the dynamic
//! loader; CUDA is initialised by GPU workers alone.

use std::ffi::CStr;

/// The library a GPU worker's driver API comes from.
pub const LIBCUDA: &CStr = c"libcuda.so.1";

/// `Ok` when `libcuda.so.1` loads; otherwise the loader's reason.
pub fn probe() -> Result<(), String> {
    probe_named(LIBCUDA)
}

/// The NVML library (part of the NVIDIA driver).
pub const LIBNVML: &CStr = c"libnvidia-ml.so.1";

/// The names cudarc 0.19 tries for cuBLAS, in its order, duplicates removed: what
/// `cudarc::get_lib_name_candidates("cublas")` gives on 64-bit Linux when built with the
/// workspace's `cuda-12000` feature (CUDA 12.0). GPU workers use the first that loads, and
/// their own SGEMM kernel when none does. Keep in step with cudarc when it is upgraded.
pub const CUBLAS_CANDIDATES: &[&CStr] = &[
    c"libcublas.so",
    c"libcublas64.so",
    c"libcublas64_12.so",
    c"libcublas64_120.so",
    c"libcublas64_120_0.so",
    c"libcublas64_10.so",
    c"libcublas64_11.so",
    c"libcublas64_9.so",
    c"libcublas.so.12",
    c"libcublas.so.11",
    c"libcublas.so.10",
    c"libcublas.so.9",
    c"libcublas.so.1",
];

/// The first of [`CUBLAS_CANDIDATES`] that loads; otherwise what the loader said about
/// `libcublas.so.12`, the name a CUDA 12 installation provides.
pub fn probe_cublas() -> Result<&'static CStr, String> {
    let mut why = String::new();
    for name in CUBLAS_CANDIDATES {
        match loads(name) {
            Ok(()) => return Ok(name),
            Err(e) if name.to_bytes() == b"libcublas.so.12" => why = e,
            Err(_) => {}
        }
    }
    Err(format!(
        "none of the {} names cudarc tries loads ({why})",
        CUBLAS_CANDIDATES.len()
    ))
}

/// [`probe`] for any library name (tests use a missing one and libc).
pub fn probe_named(name: &CStr) -> Result<(), String> {
    loads(name).map_err(|why| {
        format!(
            "no CUDA driver: {} cannot be loaded ({why})",
            name.to_string_lossy()
        )
    })
}

/// `Ok` when the library `name` loads; otherwise the dynamic loader's reason.
pub fn loads(name: &CStr) -> Result<(), String> {
    // SAFETY: dlopen with a NUL-terminated name and valid flags; the handle is closed below and
    // never used for a symbol. Loading runs the library's constructors (libcuda's do not
    // initialise the driver API); dlerror's string is copied before any other dl call.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            let err = libc::dlerror();
            return Err(if err.is_null() {
                "the dynamic loader gave no reason".to_owned()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            });
        }
        libc::dlclose(handle);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_value_and_a_present_one_loads() {
        let e = probe_named(c"libaitbc-does-not-exist.so.1").unwrap_err();
        assert!(
            e.starts_with("no CUDA driver: libaitbc-does-not-exist.so.1 cannot be loaded ("),
            "{e}"
        );
        assert_eq!(probe_named(c"libc.so.6"), Ok(()));
        // Whatever this host has, the real probes answer without panicking.
        let _ = probe();
        let _ = loads(LIBNVML);
        match probe_cublas() {
            Ok(name) => assert!(CUBLAS_CANDIDATES.contains(&name)),
            Err(e) => assert!(e.contains("libcublas.so.12"), "{e}"),
        }
    }
}
