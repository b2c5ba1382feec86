//! Step 5 (Landlock): the filesystem the worker can still reach, as a Landlock ruleset.
//!
//! Handled (denied unless a rule grants them): every filesystem right the `landlock` crate
//! knows, TCP bind/connect (and UDP where the kernel has it), and, from ABI 6, signals to and
//! abstract Unix sockets of processes outside the worker's domain. Best effort across ABI
//! versions: the kernel enforces the subset it knows, and the Hello line names the ABI.
//! Granted ([`rules`]):
//!
//! * read and execute, beneath: `/usr`, `/lib`, `/lib64`, `/etc/ld.so.cache` (the loader and
//!   the shared libraries; absent paths are skipped). For GPU workers this is also what lets
//!   `Gpu::open` (step 6, after this one) `dlopen` `libcuda.so.1` and `libcublas.so.12`
//!   wherever the driver's packages put them (`/usr/lib/x86_64-linux-gnu`, `/usr/lib64`,
//!   `/usr/lib/wsl/lib`, `/usr/local/...`): workers have an empty environment, so the loader
//!   finds them through `/etc/ld.so.cache`;
//! * read and write: `/dev/{null,zero,full,random,urandom}`;
//! * everything beneath the job directory;
//! * GPU workers only ([`gpu_rules`]): the `/dev/nvidia*` device nodes and `/dev/nvidia-caps/`
//!   read-write with device ioctls (`LANDLOCK_ACCESS_FS_IOCTL_DEV`, ABI >= 5; below that the
//!   kernel does not filter ioctls at all), and read-only (no execute) the driver's files listed
//!   with their reasons in [`GPU_READ_ONLY`], plus the sysfs directory of each NVIDIA PCI
//!   function (the `/sys/bus/pci/devices/*` links resolve there, and Landlock checks the
//!   resolved path). **Unverified on a GPU:** the list comes from published straces of CUDA
//!   initialisation and the driver's documentation; a read it misses fails with EACCES inside
//!   `Gpu::open`, which the worker reports as a failed device step before Hello.
//!
//! Nothing else: no /proc or /sys beyond the GPU list, no /tmp, /home, /etc (beyond the loader
//! cache), no config and no state directory. Landlock is per thread and inherited by threads
//! created later, so this runs while the worker has one thread, before any compute or driver
//! thread exists. This module must never grant a path outside the lists above, and never grant
//! write access outside the job directory and device nodes.
//!
//! A caveat of procfs: it makes a new inode when a path is looked up again after its dentry was
//! reclaimed, and a Landlock rule is tied to the inode it was made on. So the `/proc` rules are
//! dependable for the moments right after they are made, which is when `Gpu::open` reads them;
//! a later read could be refused under memory pressure (sysfs keeps its inodes; not affected).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::confine::Step;
use crate::WorkerError;
use aitbc_protocol::api::Mode;

/// The newest ABI whose rights this worker asks for; older kernels enforce what they know.
const ASKED_ABI: ABI = ABI::V10;

/// What a rule grants beneath its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Read files, list directories, execute (shared libraries are mapped executable).
    ReadExec,
    /// Read files and list directories, no execute (the GPU driver's /proc and /sys files).
    ReadOnly,
    /// Read and write an existing device node (no ioctl).
    Device,
    /// Read, write and ioctl a device node (GPU drivers).
    DeviceIoctl,
    /// Everything (the job directory).
    All,
}

/// The worker's read-only paths, for every kind: the same as the mount view binds.
pub const READ_ONLY: [&str; 4] = [
    super::READ_ONLY_DIRS[0],
    super::READ_ONLY_DIRS[1],
    super::READ_ONLY_DIRS[2],
    super::READ_ONLY_FILES[0],
];
pub use super::DEVICES;

/// What a GPU worker's CUDA driver reads besides libraries and device nodes, granted
/// read-only, each with the reason. **Unverified on a GPU** (see the module docs). Left out on
/// purpose: `/etc/nvidia` (OpenGL application profiles and vGPU licensing, not CUDA compute),
/// `$HOME/.nv/ComputeCache` (the PTX JIT cache: workers have no `HOME`, so the driver JITs
/// the module at every start; its time is in the device step's timing), `/proc/self/mem`,
/// `environ` and `fd/` (nothing in CUDA needs another view of the worker's own memory).
pub const GPU_READ_ONLY: [(&str, &str); 9] = [
    (
        "/proc/driver/nvidia",
        "params (the device files' mode, whether the driver may create them), version, \
         gpus/*/information, capabilities/ (the minors of MIG's /dev/nvidia-caps nodes)",
    ),
    (
        "/proc/devices",
        "the character major of nvidia-uvm, looked up before /dev/nvidia-uvm is opened",
    ),
    ("/proc/modules", "whether the nvidia-uvm module is loaded"),
    (
        "/proc/self/maps",
        "the driver and UVM read the worker's own address-space layout",
    ),
    (
        "/proc/self/status",
        "the worker's own allowed CPUs and NUMA nodes (Cpus_allowed, Mems_allowed)",
    ),
    (
        "/proc/self/task",
        "the worker's own threads (the driver names and places its helper threads)",
    ),
    (
        "/sys/devices/system/cpu",
        "online and possible CPUs, for the driver's thread affinity",
    ),
    (
        "/sys/devices/system/node",
        "NUMA nodes and their cpumaps: where pinned host memory is placed",
    ),
    (
        "/sys/bus/pci/devices",
        "the PCI functions by bus id, where the driver looks its GPU up (the links resolve to \
         each function's own directory, granted separately)",
    ),
];

/// The PCI vendor id of NVIDIA, as sysfs writes it in `vendor`.
const NVIDIA_PCI_VENDOR: &str = "0x10de";

/// The rules for a worker of `kind` whose job directory is `job_dir`, as data. `gpu` are the
/// GPU worker's extra rules, [`gpu_rules`] on this host (ignored for CPU workers).
pub fn rules(kind: Mode, job_dir: &Path, gpu: &[(PathBuf, Grant)]) -> Vec<(PathBuf, Grant)> {
    let mut out: Vec<(PathBuf, Grant)> = READ_ONLY
        .iter()
        .map(|p| (PathBuf::from(p), Grant::ReadExec))
        .collect();
    out.extend(DEVICES.iter().map(|p| (PathBuf::from(p), Grant::Device)));
    if kind == Mode::Gpu {
        out.extend(gpu.iter().cloned());
    }
    out.push((job_dir.to_path_buf(), Grant::All));
    out
}

/// A GPU worker's extra rules on this host: its `/dev/nvidia*` nodes and `/dev/nvidia-caps`
/// (read, write, device ioctls), [`GPU_READ_ONLY`], and the sysfs directory of every NVIDIA
/// PCI function (read-only). Paths this host lacks are skipped when the rules are applied.
pub fn gpu_rules() -> Vec<(PathBuf, Grant)> {
    let mut out: Vec<(PathBuf, Grant)> = nvidia_devices()
        .into_iter()
        .map(|p| (p, Grant::DeviceIoctl))
        .collect();
    out.push((PathBuf::from("/dev/nvidia-caps"), Grant::DeviceIoctl));
    out.extend(
        GPU_READ_ONLY
            .iter()
            .map(|(p, _)| (PathBuf::from(p), Grant::ReadOnly)),
    );
    out.extend(
        nvidia_pci_functions()
            .into_iter()
            .map(|p| (p, Grant::ReadOnly)),
    );
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

/// The canonical sysfs directories (`/sys/devices/pci.../0000:01:00.0`) of the NVIDIA PCI
/// functions on this host, sorted; empty where there are none.
pub fn nvidia_pci_functions() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("vendor")).is_ok_and(|v| is_nvidia_vendor(&v))
        })
        .filter_map(|e| std::fs::canonicalize(e.path()).ok())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Whether a sysfs `vendor` file's text names NVIDIA.
fn is_nvidia_vendor(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case(NVIDIA_PCI_VENDOR)
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
            Grant::ReadOnly => AccessFs::ReadFile | AccessFs::ReadDir,
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
            (PathBuf::from("/dev/nvidia0"), Grant::DeviceIoctl),
            (PathBuf::from("/dev/nvidia-uvm"), Grant::DeviceIoctl),
            (PathBuf::from("/proc/driver/nvidia"), Grant::ReadOnly),
        ];
        let cpu = rules(Mode::Cpu, job, &gpu);
        assert_eq!(cpu.len(), READ_ONLY.len() + DEVICES.len() + 1);
        assert!(cpu.iter().all(|(p, _)| {
            let p = p.to_string_lossy();
            !p.starts_with("/dev/nvidia") && !p.starts_with("/proc")
        }));
        assert_eq!(cpu.last(), Some(&(job.to_path_buf(), Grant::All)));
        assert_eq!(
            cpu.iter().filter(|(_, g)| *g == Grant::All).count(),
            1,
            "only the job directory is writable"
        );
        let gpu_rules = rules(Mode::Gpu, job, &gpu);
        assert_eq!(gpu_rules.len(), cpu.len() + gpu.len());
        assert!(gpu_rules.contains(&(PathBuf::from("/dev/nvidia-uvm"), Grant::DeviceIoctl)));
        assert_eq!(gpu_rules.last(), Some(&(job.to_path_buf(), Grant::All)));
    }

    #[test]
    fn the_gpu_list_is_read_only_outside_dev_and_never_broad() {
        let gpu = gpu_rules();
        for (path, grant) in &gpu {
            let dev = path.starts_with("/dev");
            assert!(
                !dev || path.to_string_lossy().starts_with("/dev/nvidia"),
                "{}",
                path.display()
            );
            assert_eq!(
                *grant,
                if dev {
                    Grant::DeviceIoctl
                } else {
                    Grant::ReadOnly
                },
                "{}",
                path.display()
            );
            if !dev {
                assert!(
                    path.starts_with("/proc/") || path.starts_with("/sys/"),
                    "{}",
                    path.display()
                );
            }
        }
        for forbidden in [
            "/",
            "/proc",
            "/proc/self",
            "/proc/self/mem",
            "/proc/self/environ",
            "/sys",
            "/sys/devices",
            "/dev",
            "/tmp",
            "/home",
            "/root",
            "/etc",
            "/etc/aitbc",
            "/var/lib",
        ] {
            assert!(
                gpu.iter().all(|(p, _)| p != Path::new(forbidden)),
                "{forbidden}"
            );
        }
        // Every read-only entry says why.
        assert!(GPU_READ_ONLY.iter().all(|(_, why)| why.len() > 20));
        // The PCI functions are canonical sysfs directories, whatever this host has.
        assert!(nvidia_pci_functions()
            .iter()
            .all(|p| p.starts_with("/sys/devices/")));
    }

    #[test]
    fn the_nvidia_vendor_id_is_recognised() {
        assert!(is_nvidia_vendor("0x10de\n"));
        assert!(is_nvidia_vendor("0x10DE"));
        assert!(!is_nvidia_vendor("0x8086\n"));
        assert!(!is_nvidia_vendor(""));
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
