//! Whether the CUDA driver library (`libcuda.so.1`) can be loaded on this host: a `dlopen`
//! probe with `RTLD_LAZY | RTLD_LOCAL`, closed again at once.
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

/// [`probe`] for any library name (tests use a missing one and libc).
pub fn probe_named(name: &CStr) -> Result<(), String> {
    // SAFETY: dlopen with a NUL-terminated name and valid flags; the handle is closed below and
    // never used for a symbol. Loading runs the library's constructors (libcuda's do not
    // initialise the driver API); dlerror's string is copied before any other dl call.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let why = if err.is_null() {
                "the dynamic loader gave no reason".to_owned()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(format!(
                "no CUDA driver: {} cannot be loaded ({why})",
                name.to_string_lossy()
            ));
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
        // Whatever this host has, the real probe answers without panicking.
        let _ = probe();
    }
}
