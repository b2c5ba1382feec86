//! The worker's arguments as one typed struct that both ends share: the supervisor writes
//! them with [`WorkerArgs::to_args`], the worker reads them back with [`WorkerArgs::parse`]:
//!
//! ```text
//! aitbc-miner worker --job-dir DIR [--fs auto|landlock|mount] [--file-size-mb N] [--kind cpu|gpu]
//!                    [--cpu-kernel auto|avx512-vnni|avx-vnni|avx2|portable]
//! ```
//!
//! Parsing is a pure function from the flags to [`WorkerArgs`]; it never touches the
//! filesystem (the job directory is checked when the worker confines itself). Every refusal
//! is [`WireError::Usage`] naming the flag and the value. It must never read the environment or
//! a config file: everything a worker is told comes from its supervisor on this command line.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::api::Mode;
use crate::wire::WireError;

/// Default RLIMIT_FSIZE in MiB when `--file-size-mb` is not given (the config's default
/// `MAX_JOB_DISK_MB`).
pub const DEFAULT_FILE_SIZE_MB: u64 = 1024;
/// Largest `--file-size-mb` accepted (1 TiB): a sanity bound that keeps `N << 20` in range.
pub const MAX_FILE_SIZE_MB: u64 = 1 << 20;

/// How the worker confines its view of the filesystem (`--fs`, the config's `SANDBOX_FS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsMode {
    /// Landlock when the kernel has it, otherwise the mount-namespace view.
    #[default]
    Auto,
    /// Landlock, and fail when the kernel does not have it.
    Landlock,
    /// A mount namespace whose root is a fresh read-only tmpfs holding only what the worker
    /// needs (the fallback for hosts without Landlock).
    Mount,
}

impl FsMode {
    pub const ALL: [FsMode; 3] = [FsMode::Auto, FsMode::Landlock, FsMode::Mount];

    /// The spelling used in the config file and on the worker's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FsMode::Auto => "auto",
            FsMode::Landlock => "landlock",
            FsMode::Mount => "mount",
        }
    }

    pub fn parse(s: &str) -> Option<FsMode> {
        FsMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for FsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which int8 kernel a worker's CPU chain runs (`--cpu-kernel`, the config's `CPU_KERNEL`):
/// the fastest the CPU has, or exactly the one named. Every kernel gives the same bytes; naming
/// one is an operator's workaround (a CPU whose fast path misbehaves) or a way to compare
/// paths. A worker whose CPU lacks the named kernel refuses to start; it never runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CpuKernel {
    /// The fastest kernel the CPU runs, detected by the worker.
    #[default]
    Auto,
    /// 512-bit `vpdpbusd` (AVX-512F, AVX-512BW, AVX-512-VNNI).
    Avx512Vnni,
    /// 256-bit `vpdpbusd` (AVX-VNNI and AVX2).
    AvxVnni,
    /// `vpmovsxbw` + `vpmaddwd` (AVX2).
    Avx2,
    /// Plain loops: any CPU.
    Portable,
}

impl CpuKernel {
    pub const ALL: [CpuKernel; 5] = [
        CpuKernel::Auto,
        CpuKernel::Avx512Vnni,
        CpuKernel::AvxVnni,
        CpuKernel::Avx2,
        CpuKernel::Portable,
    ];

    /// The spelling used in the config file and on the worker's command line (a kernel's name
    /// in the worker's logs and benchmarks too).
    pub fn as_str(self) -> &'static str {
        match self {
            CpuKernel::Auto => "auto",
            CpuKernel::Avx512Vnni => "avx512-vnni",
            CpuKernel::AvxVnni => "avx-vnni",
            CpuKernel::Avx2 => "avx2",
            CpuKernel::Portable => "portable",
        }
    }

    pub fn parse(s: &str) -> Option<CpuKernel> {
        CpuKernel::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What a refusal of a spelling says is expected.
    pub const EXPECTED: &'static str = "expected auto, avx512-vnni, avx-vnni, avx2 or portable";
}

impl std::fmt::Display for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker's command line after the subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerArgs {
    /// The one directory the worker may write; absolute.
    pub job_dir: PathBuf,
    pub fs: FsMode,
    /// RLIMIT_FSIZE, in MiB.
    pub file_size_mb: u64,
    /// Which kind of worker this process is (selects the seccomp profile and Landlock paths).
    pub kind: Mode,
    /// The int8 kernel of the CPU chain.
    pub cpu_kernel: CpuKernel,
}

impl WorkerArgs {
    /// The flags, every one of them, in the order `--job-dir`, `--fs`, `--file-size-mb`,
    /// `--kind`, `--cpu-kernel`: what [`WorkerArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--job-dir".into(),
            self.job_dir.clone().into_os_string(),
            "--fs".into(),
            self.fs.as_str().into(),
            "--file-size-mb".into(),
            self.file_size_mb.to_string().into(),
            "--kind".into(),
            self.kind.as_str().into(),
            "--cpu-kernel".into(),
            self.cpu_kernel.as_str().into(),
        ]
    }

    /// Parses the flags (what follows `worker`). Each flag may be given once, as
    /// `--flag VALUE` or `--flag=VALUE`; all but `--job-dir` have defaults.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<WorkerArgs, WireError> {
        let mut it = args.into_iter();
        let mut job_dir: Option<PathBuf> = None;
        let mut fs: Option<FsMode> = None;
        let mut file_size_mb: Option<u64> = None;
        let mut kind: Option<Mode> = None;
        let mut cpu_kernel: Option<CpuKernel> = None;
        while let Some(arg) = it.next() {
            let Some(text) = arg.to_str() else {
                return Err(usage(
                    "(argument)",
                    &arg,
                    "not a flag this worker knows (not UTF-8)",
                ));
            };
            let (flag, inline) = match text.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(OsString::from(v))),
                _ => (text.to_string(), None),
            };
            if !matches!(
                flag.as_str(),
                "--job-dir" | "--fs" | "--file-size-mb" | "--kind" | "--cpu-kernel"
            ) {
                return Err(usage(
                    "(argument)",
                    &arg,
                    "unknown; expected --job-dir, --fs, --file-size-mb, --kind or --cpu-kernel",
                ));
            }
            let value = match inline.or_else(|| it.next()) {
                Some(v) => v,
                None => return Err(usage(&flag, OsStr::new(""), "missing its value")),
            };
            let twice = |f: &str| usage(f, &value, "given more than once");
            match flag.as_str() {
                "--job-dir" => {
                    if job_dir.is_some() {
                        return Err(twice(&flag));
                    }
                    job_dir = Some(parse_job_dir(&value)?);
                }
                "--fs" => {
                    if fs.is_some() {
                        return Err(twice(&flag));
                    }
                    fs = Some(match value.to_str().and_then(FsMode::parse) {
                        Some(m) => m,
                        None => {
                            return Err(usage(&flag, &value, "expected auto, landlock or mount"))
                        }
                    });
                }
                "--file-size-mb" => {
                    if file_size_mb.is_some() {
                        return Err(twice(&flag));
                    }
                    let n = value
                        .to_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|n| (1..=MAX_FILE_SIZE_MB).contains(n));
                    match n {
                        Some(n) => file_size_mb = Some(n),
                        None => {
                            return Err(usage(
                                &flag,
                                &value,
                                &format!(
                                    "expected whole MiB from 1 to {MAX_FILE_SIZE_MB}, e.g. 1024"
                                ),
                            ))
                        }
                    }
                }
                "--cpu-kernel" => {
                    if cpu_kernel.is_some() {
                        return Err(twice(&flag));
                    }
                    cpu_kernel = Some(match value.to_str().and_then(CpuKernel::parse) {
                        Some(k) => k,
                        None => return Err(usage(&flag, &value, CpuKernel::EXPECTED)),
                    });
                }
                _ => {
                    if kind.is_some() {
                        return Err(twice(&flag));
                    }
                    kind = Some(match value.to_str().and_then(Mode::parse) {
                        Some(m) => m,
                        None => return Err(usage(&flag, &value, "expected cpu or gpu")),
                    });
                }
            }
        }
        let Some(job_dir) = job_dir else {
            return Err(usage(
                "--job-dir",
                OsStr::new(""),
                "required: the directory the supervisor made for this worker",
            ));
        };
        Ok(WorkerArgs {
            job_dir,
            fs: fs.unwrap_or(FsMode::Auto),
            file_size_mb: file_size_mb.unwrap_or(DEFAULT_FILE_SIZE_MB),
            kind: kind.unwrap_or(Mode::Cpu),
            cpu_kernel: cpu_kernel.unwrap_or_default(),
        })
    }
}

/// An absolute, UTF-8 path with no `.`/`..` components and no NUL (it is rebuilt component by
/// component inside the mount view, and named in the Hello line).
fn parse_job_dir(value: &OsStr) -> Result<PathBuf, WireError> {
    let bad = |reason: &str| usage("--job-dir", value, reason);
    let Some(s) = value.to_str() else {
        return Err(bad("not UTF-8"));
    };
    if !s.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if s.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if s.split('/').any(|c| c == "." || c == "..") {
        return Err(bad("must not contain `.` or `..` components"));
    }
    let path = PathBuf::from(s.trim_end_matches('/'));
    if path.as_os_str().is_empty() {
        return Err(bad("must not be `/`"));
    }
    Ok(path)
}

fn usage(flag: &str, value: &OsStr, reason: &str) -> WireError {
    WireError::Usage {
        flag: flag.to_string(),
        value: value.to_string_lossy().into_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<WorkerArgs, String> {
        WorkerArgs::parse(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn to_args_round_trips() {
        for kind in [Mode::Cpu, Mode::Gpu] {
            for fs in FsMode::ALL {
                for file_size_mb in [1, DEFAULT_FILE_SIZE_MB, MAX_FILE_SIZE_MB] {
                    for cpu_kernel in CpuKernel::ALL {
                        let a = WorkerArgs {
                            job_dir: "/var/lib/aitbc/work/w 1".into(),
                            fs,
                            file_size_mb,
                            kind,
                            cpu_kernel,
                        };
                        assert_eq!(WorkerArgs::parse(a.to_args()).unwrap(), a);
                    }
                }
            }
        }
    }

    #[test]
    fn defaults_and_every_flag() {
        assert_eq!(
            parse(&["--job-dir", "/var/lib/aitbc/jobs/w1"]).unwrap(),
            WorkerArgs {
                job_dir: "/var/lib/aitbc/jobs/w1".into(),
                fs: FsMode::Auto,
                file_size_mb: DEFAULT_FILE_SIZE_MB,
                kind: Mode::Cpu,
                cpu_kernel: CpuKernel::Auto,
            }
        );
        assert_eq!(
            parse(&[
                "--fs=mount",
                "--file-size-mb",
                "16",
                "--kind",
                "gpu",
                "--cpu-kernel=portable",
                "--job-dir=/j/",
            ])
            .unwrap(),
            WorkerArgs {
                job_dir: "/j".into(),
                fs: FsMode::Mount,
                file_size_mb: 16,
                kind: Mode::Gpu,
                cpu_kernel: CpuKernel::Portable,
            }
        );
        assert_eq!(
            parse(&["--job-dir", "/j", "--fs", "landlock"]).unwrap().fs,
            FsMode::Landlock
        );
        for k in CpuKernel::ALL {
            assert_eq!(
                parse(&["--job-dir", "/j", "--cpu-kernel", k.as_str()])
                    .unwrap()
                    .cpu_kernel,
                k
            );
            assert_eq!(CpuKernel::parse(&k.to_string()), Some(k));
        }
    }

    #[test]
    fn refusals_name_the_flag_and_the_value() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--job-dir = \"\": required"),
            (&["--job-dir"], "--job-dir = \"\": missing its value"),
            (
                &["--job-dir", "jobs/w1"],
                "--job-dir = \"jobs/w1\": must be an absolute path",
            ),
            (
                &["--job-dir", "/a/../etc"],
                "--job-dir = \"/a/../etc\": must not contain",
            ),
            (&["--job-dir", "/"], "--job-dir = \"/\": must not be `/`"),
            (
                &["--job-dir", "/j", "--fs", "chroot"],
                "--fs = \"chroot\": expected auto",
            ),
            (
                &["--job-dir", "/j", "--file-size-mb", "0"],
                "--file-size-mb = \"0\": expected whole MiB",
            ),
            (
                &["--job-dir", "/j", "--file-size-mb", "1e3"],
                "--file-size-mb = \"1e3\"",
            ),
            (
                &["--job-dir", "/j", "--file-size-mb", "99999999"],
                "--file-size-mb = \"99999999\"",
            ),
            (
                &["--job-dir", "/j", "--kind", "tpu"],
                "--kind = \"tpu\": expected cpu or gpu",
            ),
            (
                &["--job-dir", "/j", "--cpu-kernel", "avx512"],
                "--cpu-kernel = \"avx512\": expected auto, avx512-vnni, avx-vnni, avx2 or portable",
            ),
            (
                &["--job-dir", "/j", "--cpu-kernel", "AVX2"],
                "--cpu-kernel = \"AVX2\": expected auto",
            ),
            (
                &[
                    "--job-dir",
                    "/j",
                    "--cpu-kernel",
                    "portable",
                    "--cpu-kernel=avx2",
                ],
                "--cpu-kernel = \"avx2\": given more than once",
            ),
            (
                &["--job-dir", "/j", "--job-dir", "/k"],
                "--job-dir = \"/k\": given more than once",
            ),
            (
                &["--job-dir", "/j", "--verbose"],
                "(argument) = \"--verbose\": unknown",
            ),
            (
                &["--job-dir", "/j", "extra"],
                "(argument) = \"extra\": unknown",
            ),
        ];
        for (args, want) in cases {
            let got = parse(args).unwrap_err();
            assert!(
                got.contains(want),
                "{args:?}: {got:?} does not contain {want:?}"
            );
        }
    }
}
