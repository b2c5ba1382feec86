//! Step 5 (Landlock): the filesystem the worker can still reach, as a Landlock ruleset.
//!
//! Handled (denied unless a rule grants them): every filesystem right the `landlock` crate
//! knows, TCP bind/connect (and UDP where the kernel has it), and, from ABI 6, signals to and
//! abstract Unix sockets of processes outside the worker's domain. Best effort across ABI
//! versions: the kernel enforces the subset it knows, and the Hello line names the ABI.
//! Granted ([`rules`]):
//!
//! * read and execute, beneath: `/usr`, `/lib`, `/lib64`, `/etc/ld.so.cache` (the loader and
//!   the shared libraries; absent paths are skipped);
//! * read and write: `/dev/{null,zero,full,random,urandom}` (GPU workers also `/dev/nvidia*`,
//!   with device ioctls);
//! * everything beneath the job directory.
//!
//! Nothing else: no /proc, /sys, /tmp, /home, /etc (beyond the loader cache), no config and no
//! state directory. Landlock is per thread and inherited by threads created later, so this runs
//! while the worker has one thread, before any compute or driver thread exists. This module
//! must never grant a path outside the list above.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::args::Kind;
use crate::confine::Step;
use crate::WorkerError;

/// The newest ABI whose rights this worker asks for; older kernels enforce what they know.
const ASKED_ABI: ABI = ABI::V10;

/// What a rule grants beneath its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Read files, list directories, execute (shared libraries are mapped executable).
    ReadExec,
    /// Read and write an existing device node (no ioctl).
    Device,
    /// Read, write and ioctl a device node (GPU drivers).
    DeviceIoctl,
    /// Everything (the job directory).
    All,
}

/// The worker's read-only paths, for every kind.
pub const READ_ONLY: [&str; 4] = ["/usr", "/lib", "/lib64", "/etc/ld.so.cache"];
/// The device nodes every worker may open.
pub const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The rules for a worker of `kind` whose job directory is `job_dir`, as data. `gpu_devices`
/// are the `/dev/nvidia*` nodes present on the host (ignored for CPU workers).
pub fn rules(kind: Kind, job_dir: &Path, gpu_devices: &[PathBuf]) -> Vec<(PathBuf, Grant)> {
    let mut out: Vec<(PathBuf, Grant)> = READ_ONLY
        .iter()
        .map(|p| (PathBuf::from(p), Grant::ReadExec))
        .collect();
    out.extend(DEVICES.iter().map(|p| (PathBuf::from(p), Grant::Device)));
    if kind == Kind::Gpu {
        out.extend(gpu_devices.iter().map(|p| (p.clone(), Grant::DeviceIoctl)));
    }
    out.push((job_dir.to_path_buf(), Grant::All));
    out
}

/// The `/dev/nvidia*` nodes on this host (nvidiactl, nvidia0.., nvidia-uvm, nvidia-uvm-tools,
/// nvidia-modeset), sorted.
pub fn nvidia_devices() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_char_device()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The Landlock ABI the running kernel offers: 0 when it has none (not built in, or not in
/// the boot's `lsm=` list).
pub fn kernel_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) reads no
    // memory and returns the ABI version or -1 with errno.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// What [`apply`] enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub abi: i32,
    pub partial: bool,
    pub granted: usize,
}

impl Applied {
    /// `landlock abi 7 (ro+dev 9 paths, rw job dir, tcp denied, signal+abstract-unix scoped)`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!(
            "{} paths + rw job dir",
            self.granted.saturating_sub(1)
        )];
        if self.abi >= 4 {
            parts.push("tcp denied".into());
        }
        if self.abi >= 6 {
            parts.push("signal+abstract-unix scoped".into());
        }
        format!(
            "landlock abi {}{} ({})",
            self.abi,
            if self.partial { " partial" } else { "" },
            parts.join(", ")
        )
    }
}

/// Builds the ruleset for `rules` and restricts this thread (and the threads it creates) to
/// it. `required`: fail when the kernel enforces nothing (`--fs landlock`).
pub fn apply(rules: &[(PathBuf, Grant)], required: bool) -> Result<Applied, WorkerError> {
    let ll = |what: &str, e: landlock::RulesetError| refused(format!("{what}: {e}"));
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(ASKED_ABI))
        .map_err(|e| ll("handling filesystem rights", e))?
        .handle_access(AccessNet::from_all(ASKED_ABI))
        .map_err(|e| ll("handling network rights", e))?
        .scope(Scope::from_all(ASKED_ABI))
        .map_err(|e| ll("scoping signals and abstract sockets", e))?
        .create()
        .map_err(|e| ll("creating the ruleset", e))?
        // Step 3 already set no_new_privs; the order guarantees it.
        .no_new_privs(false);
    let mut granted = 0;
    for (path, grant) in rules {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            Err(_) if not_found(path) => continue,
            Err(e) => return Err(refused(format!("opening {}: {e}", path.display()))),
        };
        let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        let mut access = match grant {
            Grant::ReadExec => AccessFs::from_read(ASKED_ABI),
            Grant::Device => AccessFs::ReadFile | AccessFs::WriteFile,
            Grant::DeviceIoctl => AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
            Grant::All => AccessFs::from_all(ASKED_ABI),
        };
        if !is_dir {
            access &= AccessFs::from_file(ASKED_ABI);
        }
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| ll(&format!("granting {}", path.display()), e))?;
        granted += 1;
    }
    let status = created
        .restrict_self()
        .map_err(|e| ll("landlock_restrict_self", e))?;
    let abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi.unwrap_or(effective_abi as i32),
        _ => 0,
    };
    match status.ruleset {
        RulesetStatus::NotEnforced if required => Err(refused(format!(
            "Landlock is not available on this kernel ({:?}); --fs landlock needs it \
             (use --fs mount, or --fs auto to fall back)",
            status.landlock
        ))),
        RulesetStatus::NotEnforced => Err(refused(format!(
            "Landlock enforced nothing ({:?})",
            status.landlock
        ))),
        RulesetStatus::PartiallyEnforced | RulesetStatus::FullyEnforced => Ok(Applied {
            abi,
            partial: status.ruleset == RulesetStatus::PartiallyEnforced && abi >= ASKED_ABI as i32,
            granted,
        }),
    }
}

fn not_found(path: &Path) -> bool {
    matches!(
        std::fs::symlink_metadata(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound
    )
}

fn refused(reason: String) -> WorkerError {
    WorkerError::SetupRefused {
        step: Step::Filesystem,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_the_documented_list() {
        let job = Path::new("/var/lib/aitbc-miner/jobs/w1");
        let gpu = [
            PathBuf::from("/dev/nvidia0"),
            PathBuf::from("/dev/nvidia-uvm"),
        ];
        let cpu = rules(Kind::Cpu, job, &gpu);
        assert_eq!(cpu.len(), READ_ONLY.len() + DEVICES.len() + 1);
        assert!(cpu.iter().all(|(p, _)| !p.starts_with("/dev/nvidia")));
        assert_eq!(cpu.last(), Some(&(job.to_path_buf(), Grant::All)));
        assert_eq!(
            cpu.iter().filter(|(_, g)| *g == Grant::All).count(),
            1,
            "only the job directory is writable"
        );
        let gpu_rules = rules(Kind::Gpu, job, &gpu);
        assert!(gpu_rules.contains(&(PathBuf::from("/dev/nvidia-uvm"), Grant::DeviceIoctl)));
        for forbidden in [
            "/proc",
            "/sys",
            "/tmp",
            "/home",
            "/root",
            "/etc/aitbc",
            "/var/lib",
        ] {
            assert!(
                gpu_rules.iter().all(|(p, _)| p != Path::new(forbidden)),
                "{forbidden}"
            );
        }
    }

    #[test]
    fn description_names_the_abi_and_what_it_covers() {
        let a = Applied {
            abi: 7,
            partial: false,
            granted: 10,
        };
        assert_eq!(
            a.describe(),
            "landlock abi 7 (9 paths + rw job dir, tcp denied, signal+abstract-unix scoped)"
        );
        let old = Applied {
            abi: 3,
            partial: false,
            granted: 4,
        };
        assert_eq!(old.describe(), "landlock abi 3 (3 paths + rw job dir)");
    }
}
