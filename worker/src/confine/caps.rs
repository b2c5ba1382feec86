//! Step 4: drop every capability, then check that none is left.
//!
//! After step 1 the worker holds every capability over its own new user namespace (none over
//! the host's). They go in this order: the bounding set first (dropping from it needs
//! CAP_SETPCAP, which goes with the next sets), then ambient, then inheritable, then
//! permitted (which empties effective with it). Finally every set is read back and
//! must be empty, including capabilities newer than the `caps` crate knows (the bounding set
//! is walked by number up to the kernel's last capability).
//!
//! This module must never raise a capability, and must fail rather than continue when any
//! capability survives.

use std::io;

use caps::CapSet;

use crate::confine::Step;
use crate::WorkerError;

/// Highest capability number probed in the bounding set (the kernel answers EINVAL past its
/// last one; 63 is the limit of the 64-bit sets).
const MAX_CAP: u32 = 63;

/// Drops every capability from every set and verifies that all are empty.
pub fn drop_all() -> Result<(), WorkerError> {
    for cap in 0..=MAX_CAP {
        match bounding_has(cap)? {
            None => break,
            Some(false) => {}
            Some(true) => {
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
                {
                    return Err(os(
                        format!("PR_CAPBSET_DROP({cap})"),
                        io::Error::last_os_error(),
                    ));
                }
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| refused(format!("clearing ambient: {e}")))?;
    for set in [CapSet::Inheritable, CapSet::Permitted, CapSet::Effective] {
        caps::clear(None, set).map_err(|e| refused(format!("clearing {set:?}: {e}")))?;
    }
    verify_empty()
}

/// Reads every set back; any capability left is an error naming it.
fn verify_empty() -> Result<(), WorkerError> {
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Permitted,
        CapSet::Effective,
    ] {
        let left = caps::read(None, set).map_err(|e| refused(format!("reading {set:?}: {e}")))?;
        if !left.is_empty() {
            return Err(refused(format!("{set:?} still holds {left:?}")));
        }
    }
    for cap in 0..=MAX_CAP {
        match bounding_has(cap)? {
            None => break,
            Some(false) => {}
            Some(true) => {
                return Err(refused(format!(
                    "the bounding set still holds capability {cap}"
                )))
            }
        }
    }
    Ok(())
}

/// Whether capability number `cap` is in the bounding set; `None` past the kernel's last one.
fn bounding_has(cap: u32) -> Result<Option<bool>, WorkerError> {
    // SAFETY: prctl with integer arguments only.
    match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } {
        0 => Ok(Some(false)),
        1 => Ok(Some(true)),
        _ => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                Ok(None)
            } else {
                Err(os(format!("PR_CAPBSET_READ({cap})"), e))
            }
        }
    }
}

fn os(what: String, source: io::Error) -> WorkerError {
    WorkerError::Setup {
        step: Step::Capabilities,
        what,
        source,
    }
}

fn refused(reason: String) -> WorkerError {
    WorkerError::SetupRefused {
        step: Step::Capabilities,
        reason,
    }
}
