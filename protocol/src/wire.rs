//! The supervisor <-> worker wire format.
//!
//! A frame is a 4-byte little-endian payload length followed by that many bytes of bincode 2
//! (standard configuration). The length is checked against [`MAX_FRAME_LEN`] before any buffer
//! is allocated, so a hostile or broken peer cannot make the other side allocate more.
//!
//! The conversation, one job per worker process:
//! 1. the worker, once set up, sends [`FromWorker::Hello`] with [`WIRE_VERSION`];
//! 2. the supervisor checks the version and, when a job arrives, sends [`ToWorker::Run`]
//!    (or [`ToWorker::Shutdown`] to retire an idle worker);
//! 3. the worker answers with exactly one [`FromWorker::Done`] or [`FromWorker::Failed`] and exits.
//!    Before a `Done` it sends the Merkle leaf hashes of its output in [`FromWorker::Leaves`]
//!    frames of at most [`MAX_LEAVES_PER_FRAME`] each, in row order, exactly
//!    `JobSpec.spec.rows()` of them in all: what the supervisor keeps to answer an audit. The
//!    supervisor refuses more than that, fewer, or leaves whose root is not `Done.merkle_root`
//!    (a protocol error).
//!
//! Framing is split the mini-redis way: [`frame_len`] answers "how long is the frame whose header
//! this is, and is that allowed?", [`decode_payload`] parses a whole payload, and [`decode`] does
//! both over a buffer that may hold a partial frame. Nothing here does I/O except the small
//! blocking helpers [`read_frame`] and [`write_frame`] over a caller's `Read`/`Write`.

use std::io::{self, Read, Write};

use bincode::{Decode, Encode};

use crate::api::Mode;
use crate::workload::WorkloadSpec;

/// Bumped whenever a message changes shape. Both ends must agree exactly.
/// Version 2: `Hello.sandbox` and [`WorkerFailReason::SandboxViolation`].
/// Version 3: `JobSpec.vram_mb`; `JobOutput.compute_us` is the device time on GPU workers.
/// Version 4: `JobOutput.merkle_root`.
/// Version 5: [`FromWorker::Leaves`] before `Done`.
pub const WIRE_VERSION: u32 = 5;
/// Largest payload either side accepts, in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Most leaf hashes in one [`FromWorker::Leaves`] frame: 32 KiB of digests, well inside
/// [`MAX_FRAME_LEN`].
pub const MAX_LEAVES_PER_FRAME: usize = 1024;
/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// The start of the line a worker's seccomp reporter writes to stderr just before the worker
/// dies of SIGSYS: `{SECCOMP_REPORT_PREFIX}{name} ({nr})\n`. The supervisor looks for it in the
/// worker's stderr tail to name the forbidden system call.
pub const SECCOMP_REPORT_PREFIX: &str = "aitbc-worker: seccomp: forbidden system call ";

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Supervisor -> worker.
#[derive(Encode, Decode, Clone, Debug, PartialEq)]
pub enum ToWorker {
    Run(JobSpec),
    Shutdown,
}

/// One job, as much of it as the worker needs. Parameters arrive already typed and checked.
#[derive(Encode, Decode, Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub job_id: String,
    pub spec: WorkloadSpec,
    /// Compute threads the worker may use (its share of the cores).
    pub threads: u32,
    /// The job's memory limit, for the worker's own re-check.
    pub ram_mb: u64,
    /// The job's GPU memory cap in MiB: a GPU worker refuses the job when it is below
    /// `TorchBenchParams::vram_mb()`, and allocates no more than `vram_mb << 20` bytes of
    /// device memory for it. 0 for CPU workers (ignored by them).
    pub vram_mb: u64,
    /// The job's `cpu_time_s`: the worker lowers its RLIMIT_CPU to it before it computes (the
    /// supervisor also sets it from outside where the kernel lets it).
    pub cpu_time_s: u64,
    /// The address-space backstop (RLIMIT_AS) the worker lowers itself to before it computes;
    /// set by the supervisor for CPU workers, `None` for GPU workers (CUDA reserves address
    /// space far beyond what it uses).
    pub address_space_bytes: Option<u64>,
}

/// Worker -> supervisor.
#[derive(Encode, Decode, Clone, Debug, PartialEq)]
pub enum FromWorker {
    Hello(Hello),
    /// The next Merkle leaf hashes of the output's rows (at most [`MAX_LEAVES_PER_FRAME`]),
    /// sent before `Done`.
    Leaves(Vec<[u8; 32]>),
    Done(JobOutput),
    Failed(WorkerFailure),
}

/// The output's leaves as the frames that carry them, in order.
pub fn leaf_frames(leaves: &[[u8; 32]]) -> impl Iterator<Item = FromWorker> + '_ {
    leaves
        .chunks(MAX_LEAVES_PER_FRAME)
        .map(|c| FromWorker::Leaves(c.to_vec()))
}

/// The worker's first frame: it is set up and waiting for a job.
#[derive(Encode, Decode, Clone, Debug, PartialEq)]
pub struct Hello {
    pub version: u32,
    pub pid: u32,
    pub kind: Mode,
    /// One human-readable line naming the confinement the worker actually applied to itself,
    /// in set-up order, e.g. `userns+netns; rlimits; no_new_privs; caps=0; landlock abi 7;
    /// seccomp cpu`. Informational: the supervisor logs it; it is not a proof of anything.
    pub sandbox: String,
}

/// A finished job: the hash of its output and what it cost.
#[derive(Encode, Decode, Clone, Debug, PartialEq)]
pub struct JobOutput {
    pub output_sha: [u8; 32],
    /// The RFC 9162 Merkle root over the output's rows (`protocol::merkle`), for audits.
    pub merkle_root: [u8; 32],
    pub output_len: u64,
    pub flops: u64,
    /// The compute time TFLOP/s is figured from, measured inside the worker. CPU workers: wall
    /// time of allocation, input generation, the products and the hash. GPU workers: device
    /// time of the products and rescales, from two CUDA events with timing on (the inputs, the
    /// copy back and the hash are not in it).
    pub compute_us: u64,
    pub kind: Mode,
}

/// Why the worker could not finish the job it was given.
#[derive(Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerFailReason {
    BadParams,
    OutOfMemory,
    Internal,
    /// The job tried something a confinement layer refused (EPERM/EACCES from Landlock, the
    /// mount view, seccomp's deliberate EPERM answers, rlimits).
    SandboxViolation,
}

#[derive(Encode, Decode, Clone, Debug, PartialEq)]
pub struct WorkerFailure {
    pub reason: WorkerFailReason,
    pub message: String,
}

/// Everything that can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame payload has {0} trailing bytes")]
    Trailing(usize),
    #[error("peer closed the connection")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A worker's command line is wrong ([`crate::args::WorkerArgs::parse`]).
    #[error("{flag} = {value:?}: {reason}")]
    Usage {
        flag: String,
        value: String,
        reason: String,
    },
}

/// Encodes `msg` as one frame (header and payload).
pub fn encode<T: Encode>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// The payload length announced by a header, refused when zero or above [`MAX_FRAME_LEN`].
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header) as usize;
    match len {
        0 => Err(WireError::Empty),
        l if l > MAX_FRAME_LEN => Err(WireError::TooLarge {
            len: l,
            max: MAX_FRAME_LEN,
        }),
        l => Ok(l),
    }
}

/// Parses one whole payload; every byte must belong to the message.
pub fn decode_payload<T: Decode<()>>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, used) = bincode::decode_from_slice(payload, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Parses the first frame in `buf`: `Ok(None)` when more bytes are needed, otherwise the
/// message and how many bytes of `buf` it used.
pub fn decode<T: Decode<()>>(buf: &[u8]) -> Result<Option<(T, usize)>, WireError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = frame_len(header.try_into().expect("slice of HEADER_LEN"))?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

/// Reads exactly one frame from a blocking reader.
pub fn read_frame<T: Decode<()>, R: Read>(r: &mut R) -> Result<T, WireError> {
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = r.read_exact(&mut header) {
        return Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => WireError::Io(e),
        });
    }
    let len = frame_len(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    decode_payload(&payload)
}

/// Writes one frame to a blocking writer.
pub fn write_frame<T: Encode, W: Write>(w: &mut W, msg: &T) -> Result<(), WireError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::torch_bench::TorchBenchParams;
    use proptest::prelude::*;

    fn run() -> ToWorker {
        ToWorker::Run(JobSpec {
            job_id: "job-1".into(),
            spec: WorkloadSpec::TorchBench(TorchBenchParams {
                n: 64,
                iters: 3,
                seed: 7,
            }),
            threads: 2,
            ram_mb: 128,
            vram_mb: 45,
            cpu_time_s: 60,
            address_space_bytes: Some(1 << 30),
        })
    }

    #[test]
    fn round_trip_through_a_stream() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &run()).unwrap();
        write_frame(&mut buf, &ToWorker::Shutdown).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<ToWorker, _>(&mut r).unwrap(), run());
        assert_eq!(
            read_frame::<ToWorker, _>(&mut r).unwrap(),
            ToWorker::Shutdown
        );
        assert!(matches!(
            read_frame::<ToWorker, _>(&mut r),
            Err(WireError::Closed)
        ));
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let frame = encode(&run()).unwrap();
        for cut in 0..frame.len() {
            assert!(decode::<ToWorker>(&frame[..cut]).unwrap().is_none());
        }
        let (msg, used) = decode::<ToWorker>(&frame).unwrap().unwrap();
        assert_eq!((msg, used), (run(), frame.len()));
    }

    #[test]
    fn oversized_header_is_refused_before_allocating() {
        let mut r = &[0xff, 0xff, 0xff, 0x7f][..];
        assert!(matches!(
            read_frame::<FromWorker, _>(&mut r),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(frame_len([0; 4]), Err(WireError::Empty)));
    }

    #[test]
    fn hello_and_sandbox_violation_round_trip() {
        let msgs = [
            FromWorker::Hello(Hello {
                version: WIRE_VERSION,
                pid: 42,
                kind: Mode::Cpu,
                sandbox: "userns+netns; rlimits; no_new_privs; caps=0; landlock abi 7".into(),
            }),
            FromWorker::Failed(WorkerFailure {
                reason: WorkerFailReason::SandboxViolation,
                message: "writing /etc/x: permission denied".into(),
            }),
        ];
        for m in msgs {
            let frame = encode(&m).unwrap();
            assert_eq!(decode::<FromWorker>(&frame).unwrap().unwrap().0, m);
        }
    }

    #[test]
    fn a_full_leaves_frame_fits_and_the_leaves_split_in_order() {
        let leaves: Vec<[u8; 32]> = (0..2500u32)
            .map(|i| {
                let mut d = [0u8; 32];
                d[..4].copy_from_slice(&i.to_le_bytes());
                d
            })
            .collect();
        let frames: Vec<FromWorker> = leaf_frames(&leaves).collect();
        assert_eq!(frames.len(), 3);
        let mut back = Vec::new();
        for f in &frames {
            let bytes = encode(f).unwrap();
            assert!(bytes.len() - HEADER_LEN <= MAX_FRAME_LEN);
            let (FromWorker::Leaves(l), _) = decode::<FromWorker>(&bytes).unwrap().unwrap() else {
                panic!("not a Leaves frame");
            };
            assert!(l.len() <= MAX_LEAVES_PER_FRAME);
            back.extend(l);
        }
        assert_eq!(back, leaves);
        assert_eq!(leaf_frames(&[]).count(), 0);
        // A frame of twice the allowed leaves does not fit a frame at all.
        let too_many = FromWorker::Leaves(vec![[0; 32]; 2 * MAX_LEAVES_PER_FRAME + 1]);
        assert!(matches!(
            encode(&too_many),
            Err(WireError::TooLarge { .. }) | Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn a_workers_kind_keeps_its_wire_index() {
        // Mode replaced the wire's own Mode; its bincode layout is the same.
        for (mode, index) in [(Mode::Cpu, 0u8), (Mode::Gpu, 1)] {
            let bytes = bincode::encode_to_vec(mode, config()).unwrap();
            assert_eq!(bytes, [index]);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut payload = encode(&ToWorker::Shutdown).unwrap()[HEADER_LEN..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_payload::<ToWorker>(&payload),
            Err(WireError::Trailing(1))
        ));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<FromWorker>(&bytes);
            let _ = decode::<ToWorker>(&bytes);
            let _ = decode_payload::<FromWorker>(&bytes);
        }
    }
}
