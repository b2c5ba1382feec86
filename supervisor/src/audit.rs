//! The audit spool and the answers to audits: what a miner keeps of each proved (job,
//! attempt) so it can open rows of its committed output when the Coordinator asks, and the
//! pure decisions around it.
//!
//! An [`Entry`] is the job's spec (torch_bench: `n`, `iters`, `seed`), the proof's Merkle
//! root, the output's row leaves (32 bytes per row, from the worker's `Leaves` frames) and,
//! once one came, the [`AuditChallenge`]. It is written durably to
//! `STATE_DIR/audit/<job_id>-<attempt>.audit` (tmp file, fsync, rename, fsync of the
//! directory) BEFORE the proof is posted, so a crash between the proof and the answer loses
//! nothing, and rewritten the same way when the challenge is stored. The file is
//! [`MAGIC`], a 4-byte little-endian header length, the header as JSON ([`Meta`]) and the
//! leaves as raw bytes; [`AuditSpool::list`] reads only the headers (and checks each file's
//! size), so starting over a full spool does not read every leaf.
//!
//! Answering ([`open_rows`]): the challenged rows are recomputed with protocol's
//! `output_rows` (k rows cost `k * iters * n^2` multiply-adds, what the verifier pays), each
//! recomputed row's leaf is compared with the stored one (a mismatch means this miner's own
//! result was wrong; it is reported, and the row is still answered as computed), and the paths
//! are built from the stored leaves with `merkle::inclusion_proof`. The answer's
//! `Idempotency-Key` is [`idempotency_key`] of (job, attempt), so a resend after a crash is a
//! replay. What happens to an entry after a poll of the open audits is [`after_poll`], pure
//! (after an answer, the outbox's own `runtime::verdict` decides: an ack or an API refusal
//! settles it, anything else is retried).
//!
//! This module reads and writes files (blocking; callers use `spawn_blocking`) and computes;
//! it must never talk to the network, never delete an entry it has not been told to, and never
//! trust a challenge: rows out of range, out of order or more than [`MAX_AUDIT_ROWS`] are
//! refused before anything is computed.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::api::{ts, AuditAnswer, AuditChallenge, OpenedRow};
use protocol::merkle::{self, Digest};
use protocol::workload::torch_bench;
use protocol::workload::WorkloadSpec;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Error;

/// The first bytes of every entry file (the format's version is its last digit).
pub const MAGIC: &[u8; 8] = b"AITBCAU1";
/// The largest header an entry file may announce.
pub const MAX_HEADER: usize = 64 << 10;
/// The most rows a challenge may ask this miner to open: a bound on what a Coordinator (or
/// something posing as one) can make it compute. The reference Coordinator asks 8.
pub const MAX_AUDIT_ROWS: usize = 128;
/// Entries older than this are dropped whatever their state: their jobs settled long ago.
pub const MAX_ENTRY_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an entry says besides its leaves: the file's header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Meta {
    pub job_id: String,
    pub attempt: u32,
    /// The job's typed spec: what the rows are recomputed from.
    pub spec: WorkloadSpec,
    /// The proof's Merkle root, lower-case hex.
    pub merkle_root: String,
    /// When the job's output was committed.
    #[serde(with = "ts")]
    pub proved_at: OffsetDateTime,
    /// The audit, once the Coordinator asked one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<AuditChallenge>,
}

impl Meta {
    /// `<job_id>-<attempt>.audit`. The caller has checked the id with `policy::safe_job_id`.
    pub fn file_name(&self) -> String {
        file_name(&self.job_id, self.attempt)
    }

    /// The (job, attempt) the entry is for.
    pub fn key(&self) -> (String, u32) {
        (self.job_id.clone(), self.attempt)
    }
}

/// The file name of (job, attempt)'s entry.
pub fn file_name(job_id: &str, attempt: u32) -> String {
    format!("{job_id}-{attempt}.audit")
}

/// One proved (job, attempt): its header and the leaves of its output's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub meta: Meta,
    pub leaves: Vec<Digest>,
}

impl Entry {
    /// The entry as its file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let header = serde_json::to_vec(&self.meta).map_err(|e| e.to_string())?;
        if header.len() > MAX_HEADER {
            return Err(format!("a header of {} bytes", header.len()));
        }
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 32 * self.leaves.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for leaf in &self.leaves {
            out.extend_from_slice(leaf);
        }
        Ok(out)
    }

    /// An entry from its file's bytes: the magic, a header that parses, and exactly
    /// `spec.rows()` leaves after it.
    pub fn decode(bytes: &[u8]) -> Result<Entry, String> {
        let (meta, body) = split(bytes)?;
        let rows = usize::try_from(meta.spec.rows()).map_err(|e| e.to_string())?;
        if body.len() != rows.saturating_mul(32) {
            return Err(format!(
                "{} bytes of leaves; the job has {rows} rows of 32",
                body.len()
            ));
        }
        let leaves = body
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect();
        Ok(Entry { meta, leaves })
    }
}

/// The header and the rest of an entry file's bytes.
fn split(bytes: &[u8]) -> Result<(Meta, &[u8]), String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not an audit entry (no AITBCAU1 at the start)")?;
    let (len, rest) = rest.split_at_checked(4).ok_or("no header length")?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_HEADER {
        return Err(format!("a header of {len} bytes announced"));
    }
    let (header, rest) = rest
        .split_at_checked(len)
        .ok_or("the header is cut short")?;
    let meta: Meta = serde_json::from_slice(header).map_err(|e| format!("the header: {e}"))?;
    Ok((meta, rest))
}

/// What [`AuditSpool::list`] finds: each entry's path, header and size on disk, and the files
/// set aside as unreadable.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<(PathBuf, Meta, u64)>,
    pub corrupt: Vec<PathBuf>,
}

/// The audit spool's directory, `STATE_DIR/audit`.
#[derive(Clone, Debug)]
pub struct AuditSpool {
    dir: PathBuf,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::AuditSpool {
        path: path.to_owned(),
        source,
    }
}

impl AuditSpool {
    /// Opens (creating, mode 0700) `state_dir/audit`.
    pub fn open(state_dir: &Path) -> Result<AuditSpool, Error> {
        let dir = state_dir.join("audit");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err(&dir))?;
        Ok(AuditSpool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where (job, attempt)'s entry lives.
    pub fn path_of(&self, job_id: &str, attempt: u32) -> PathBuf {
        self.dir.join(file_name(job_id, attempt))
    }

    /// Writes `entry` durably (replacing an older version of it); its path and size.
    pub fn write(&self, entry: &Entry) -> Result<(PathBuf, u64), Error> {
        let name = entry.meta.file_name();
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let bytes = entry
            .encode()
            .map_err(|e| err(&path)(std::io::Error::other(e)))?;
        crate::spool::write_durably(&self.dir, &tmp, &path, &bytes).map_err(err(&path))?;
        Ok((path, bytes.len() as u64))
    }

    /// The whole entry at `path`.
    pub fn read(&self, path: &Path) -> Result<Entry, Error> {
        let bytes = fs::read(path).map_err(err(path))?;
        Entry::decode(&bytes).map_err(|e| err(path)(std::io::Error::other(e)))
    }

    /// Every entry's header, oldest first. A file whose header does not parse, or whose size
    /// is not its header's plus 32 bytes per row, is renamed to `*.corrupt` (kept for the
    /// operator, never answered from) and reported.
    pub fn list(&self) -> Result<Listing, Error> {
        let mut found = Vec::new();
        let mut corrupt = Vec::new();
        for dirent in fs::read_dir(&self.dir).map_err(err(&self.dir))? {
            let dirent = dirent.map_err(err(&self.dir))?;
            let path = dirent.path();
            let name = dirent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".audit") {
                continue;
            }
            match read_header(&path) {
                Ok((meta, size)) => found.push((meta.proved_at, path, meta, size)),
                Err(_) => {
                    let aside = path.with_extension("audit.corrupt");
                    fs::rename(&path, &aside).map_err(err(&path))?;
                    corrupt.push(aside);
                }
            }
        }
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(Listing {
            entries: found.into_iter().map(|(_, p, m, s)| (p, m, s)).collect(),
            corrupt,
        })
    }

    /// Removes an entry (and syncs the directory so it stays removed).
    pub fn remove(&self, path: &Path) -> Result<(), Error> {
        crate::spool::remove_durably(&self.dir, path).map_err(err(path))
    }
}

/// An entry file's header and its size, checked against the rows the header declares.
fn read_header(path: &Path) -> Result<(Meta, u64), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut start = vec![0u8; MAGIC.len() + 4];
    f.read_exact(&mut start).map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as usize;
    if &start[..8] != MAGIC || len > MAX_HEADER {
        return Err("not an audit entry".into());
    }
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    start.extend_from_slice(&header);
    let (meta, _) = split(&start)?;
    let want = (start.len() as u64).saturating_add(meta.spec.rows().saturating_mul(32));
    if size != want {
        return Err(format!("{size} bytes, not {want}"));
    }
    Ok((meta, size))
}

/// The disk one entry takes for a torch_bench job of `n` rows (a UUID job id, no challenge
/// stored yet): `32 n` bytes of leaves and a header of about two hundred bytes. What
/// `AUDIT_SPOOL_MB` is spent in.
pub fn entry_bytes(n: u32) -> u64 {
    let entry = Entry {
        meta: Meta {
            job_id: "00000000-0000-4000-8000-000000000000".into(),
            attempt: 1,
            spec: WorkloadSpec::TorchBench(torch_bench::TorchBenchParams {
                n,
                iters: torch_bench::TorchBenchParams::DEFAULT_ITERS,
                seed: 0,
            }),
            merkle_root: "00".repeat(32),
            proved_at: OffsetDateTime::UNIX_EPOCH,
            challenge: None,
        },
        leaves: vec![[0; 32]; n as usize],
    };
    entry.encode().map_or(0, |b| b.len() as u64)
}

/// The `Idempotency-Key` of the answer to (job, attempt)'s audit: the same after any restart,
/// so a resend is a replay. `audit-` and 32 hex digits of SHA-256 over the pair.
pub fn idempotency_key(job_id: &str, attempt: u32) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"aitbc-miner audit answer\0");
    h.update((job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(attempt.to_le_bytes());
    let d = h.finalize();
    format!("audit-{}", protocol::hex::encode(&d[..16]))
}

/// Why a challenge cannot be answered from an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswerable {
    #[error("the challenge is for job {job} attempt {attempt}, not this entry's")]
    NotThisEntry { job: String, attempt: u32 },
    #[error("the challenge asks {asked} rows; this miner opens at most {MAX_AUDIT_ROWS}")]
    TooManyRows { asked: usize },
    #[error("the challenge's rows are not ascending and distinct")]
    Unordered,
    #[error("the challenge asks row {row} of an output of {rows} rows")]
    NoSuchRow { row: u64, rows: u64 },
    #[error("the entry holds {leaves} leaves for {rows} rows")]
    Leaves { leaves: usize, rows: u64 },
}

/// A recomputed row whose leaf is not the one this miner committed to: its own result was
/// wrong (a faulty kernel, memory or device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfCheckFault {
    pub row: u64,
}

/// Pure: `challenge`'s rows are ones `entry` can open.
pub fn check_challenge(entry: &Entry, challenge: &AuditChallenge) -> Result<(), Unanswerable> {
    let m = &entry.meta;
    if challenge.id != m.job_id || challenge.attempt != m.attempt {
        return Err(Unanswerable::NotThisEntry {
            job: crate::untrusted::bounded(&challenge.id, 128),
            attempt: challenge.attempt,
        });
    }
    let rows = m.spec.rows();
    if entry.leaves.len() as u64 != rows {
        return Err(Unanswerable::Leaves {
            leaves: entry.leaves.len(),
            rows,
        });
    }
    if challenge.rows.len() > MAX_AUDIT_ROWS {
        return Err(Unanswerable::TooManyRows {
            asked: challenge.rows.len(),
        });
    }
    if challenge.rows.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Unanswerable::Unordered);
    }
    if let Some(&row) = challenge.rows.iter().find(|&&r| r >= rows) {
        return Err(Unanswerable::NoSuchRow { row, rows });
    }
    Ok(())
}

/// The answer to `challenge` from `entry`: each row recomputed, its bytes and its path from
/// the stored leaves, in the challenge's order; and the rows whose recomputed leaf is not the
/// stored one (answered as recomputed all the same). Costs `k * iters * n^2` multiply-adds
/// and `2 n^2` bytes for `B` (and its transpose); run it off the async threads.
pub fn open_rows(
    entry: &Entry,
    challenge: &AuditChallenge,
    miner_id: &str,
) -> Result<(AuditAnswer, Vec<SelfCheckFault>), Unanswerable> {
    check_challenge(entry, challenge)?;
    let WorkloadSpec::TorchBench(p) = entry.meta.spec;
    let idx: Vec<usize> = challenge.rows.iter().map(|&r| r as usize).collect();
    let computed = torch_bench::output_rows(&p, &idx);
    let mut faults = Vec::new();
    let mut rows = Vec::with_capacity(idx.len());
    for (&i, row) in idx.iter().zip(&computed) {
        if torch_bench::row_leaf(row) != entry.leaves[i] {
            faults.push(SelfCheckFault { row: i as u64 });
        }
        let path = merkle::inclusion_proof(&entry.leaves, i).unwrap_or_default();
        rows.push(OpenedRow {
            index: i as u64,
            data: protocol::hex::encode(&torch_bench::row_bytes(row)),
            path: path.iter().map(|d| protocol::hex::encode(d)).collect(),
        });
    }
    Ok((
        AuditAnswer {
            id: entry.meta.job_id.clone(),
            miner_id: Some(miner_id.to_owned()),
            attempt: entry.meta.attempt,
            rows,
        },
        faults,
    ))
}

/// Pure: whether a challenge from the network may be kept at all: a job id this miner could
/// have run and at most [`MAX_AUDIT_ROWS`] rows (the rest is checked against the entry).
pub fn plausible(c: &AuditChallenge) -> bool {
    crate::policy::safe_job_id(&c.id) && c.rows.len() <= MAX_AUDIT_ROWS
}

/// What becomes of an entry when the open audits were polled (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollFate {
    /// Keep it as it is (its proof awaits an ack, or it already holds this challenge).
    Keep,
    /// Store this challenge in it and answer.
    Challenge(AuditChallenge),
    /// Drop it: no open audit names it and its proof was acked (or it is past
    /// [`MAX_ENTRY_AGE`]).
    Drop,
}

/// Pure: the fate of an entry whose header is `meta` after a poll found `open` (the open
/// audits of this miner). `awaiting_ack`: its proof has not been answered yet. An entry that
/// holds a challenge is kept (answering it settles it: the verdict, or `NO_AUDIT`) unless it
/// is older than `max_age`.
pub fn after_poll(
    meta: &Meta,
    awaiting_ack: bool,
    open: &[AuditChallenge],
    now: OffsetDateTime,
    max_age: Duration,
) -> PollFate {
    if now - meta.proved_at > max_age {
        return PollFate::Drop;
    }
    let named = open
        .iter()
        .find(|c| c.id == meta.job_id && c.attempt == meta.attempt);
    match (named, &meta.challenge) {
        (Some(c), Some(held)) if c == held => PollFate::Keep,
        (Some(c), _) => PollFate::Challenge(c.clone()),
        (None, Some(_)) => PollFate::Keep,
        (None, None) if awaiting_ack => PollFate::Keep,
        (None, None) => PollFate::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::workload::torch_bench::{commit, reference_output, TorchBenchParams};
    use time::macros::datetime;

    fn params() -> TorchBenchParams {
        TorchBenchParams {
            n: 24,
            iters: 3,
            seed: 5,
        }
    }

    /// The entry an honest worker's output gives.
    fn entry(job: &str, attempt: u32) -> Entry {
        let p = params();
        let out = reference_output(&p);
        let leaves: Vec<Digest> = out
            .chunks(p.n as usize)
            .map(torch_bench::row_leaf)
            .collect();
        let root = commit(&out, p.n as usize).unwrap().merkle_root;
        Entry {
            meta: Meta {
                job_id: job.into(),
                attempt,
                spec: WorkloadSpec::TorchBench(p),
                merkle_root: protocol::hex::encode(&root),
                proved_at: datetime!(2026-01-02 03:04:05 UTC),
                challenge: None,
            },
            leaves,
        }
    }

    fn challenge(job: &str, attempt: u32, rows: Vec<u64>) -> AuditChallenge {
        AuditChallenge {
            id: job.into(),
            attempt,
            rows,
            answer_by: datetime!(2026-01-02 03:06:05 UTC),
        }
    }

    #[test]
    fn an_honest_answer_passes_the_verifiers_check() {
        let e = entry("j1", 2);
        let root = protocol::hex::digest(&e.meta.merkle_root).unwrap();
        let c = challenge("j1", 2, vec![0, 7, 23]);
        let (answer, faults) = open_rows(&e, &c, "m1").unwrap();
        assert!(faults.is_empty());
        assert_eq!((answer.id.as_str(), answer.attempt), ("j1", 2));
        assert_eq!(answer.miner_id.as_deref(), Some("m1"));
        assert_eq!(
            answer.rows.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 7, 23]
        );
        let p = params();
        let b = torch_bench::input(p.seed, torch_bench::MATRIX_B, p.n as usize);
        for r in &answer.rows {
            let data = protocol::hex::decode(&r.data).unwrap();
            let path: Vec<Digest> = r
                .path
                .iter()
                .map(|h| protocol::hex::digest(h).unwrap())
                .collect();
            let expected = torch_bench::output_row(&p, &b, r.index as usize);
            torch_bench::check_opening(&p, &root, r.index, &data, &path, &expected).unwrap();
        }
    }

    #[test]
    fn a_wrong_stored_leaf_is_a_self_check_fault_and_still_answered() {
        let mut e = entry("j1", 1);
        e.leaves[7] = [0xee; 32];
        let (answer, faults) = open_rows(&e, &challenge("j1", 1, vec![3, 7]), "m").unwrap();
        assert_eq!(faults, [SelfCheckFault { row: 7 }]);
        assert_eq!(answer.rows.len(), 2);
    }

    #[test]
    fn challenges_this_entry_cannot_answer_are_refused_before_computing() {
        let e = entry("j1", 1);
        let cases = [
            (challenge("j2", 1, vec![1]), "not this entry's"),
            (challenge("j1", 2, vec![1]), "not this entry's"),
            (challenge("j1", 1, vec![3, 3]), "ascending and distinct"),
            (challenge("j1", 1, vec![4, 3]), "ascending and distinct"),
            (
                challenge("j1", 1, vec![24]),
                "row 24 of an output of 24 rows",
            ),
            (
                challenge("j1", 1, (0..=MAX_AUDIT_ROWS as u64).collect()),
                "at most 128",
            ),
        ];
        for (c, want) in cases {
            let e = open_rows(&e, &c, "m").unwrap_err().to_string();
            assert!(e.contains(want), "{e} !~ {want}");
        }
        let mut short = entry("j1", 1);
        short.leaves.pop();
        assert!(matches!(
            check_challenge(&short, &challenge("j1", 1, vec![0])),
            Err(Unanswerable::Leaves { .. })
        ));
        assert!(!plausible(&challenge("../x", 1, vec![0])));
        assert!(plausible(&challenge("j1", 1, vec![0])));
    }

    #[test]
    fn entries_round_trip_and_broken_files_are_refused() {
        let mut e = entry("j1", 3);
        e.meta.challenge = Some(challenge("j1", 3, vec![1, 2]));
        let bytes = e.encode().unwrap();
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
        assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.extend([0; 32]);
        assert!(Entry::decode(&longer).is_err());
        assert!(Entry::decode(b"AITBCAU1").is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend(u32::MAX.to_le_bytes());
        assert!(Entry::decode(&huge).unwrap_err().contains("announced"));
        assert!(Entry::decode(b"{}").is_err());
    }

    #[test]
    fn the_spool_survives_a_reopen_and_sets_broken_files_aside() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let spool = AuditSpool::open(tmp.path()).unwrap();
        let a = entry("j1", 1);
        let (pa, size) = spool.write(&a).unwrap();
        assert_eq!(pa, spool.path_of("j1", 1));
        assert_eq!(size, fs::metadata(&pa).unwrap().len());
        assert_eq!(
            fs::metadata(&pa).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(spool.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut b = entry("j2", 1);
        b.meta.proved_at = datetime!(2026-01-02 03:04:06 UTC);
        spool.write(&b).unwrap();
        fs::write(spool.dir().join("x-1.audit"), b"AITBCAU1garbage").unwrap();
        let mut cut = a.encode().unwrap();
        cut.truncate(cut.len() - 5);
        fs::write(spool.dir().join("y-1.audit"), cut).unwrap();
        fs::write(spool.dir().join(".z-1.audit.tmp"), b"half").unwrap();

        let again = AuditSpool::open(tmp.path()).unwrap();
        let listing = again.list().unwrap();
        let metas: Vec<&Meta> = listing.entries.iter().map(|(_, m, _)| m).collect();
        assert_eq!(metas, [&a.meta, &b.meta], "oldest first");
        assert_eq!(listing.corrupt.len(), 2);
        assert!(listing
            .corrupt
            .iter()
            .all(|p| p.to_string_lossy().ends_with(".audit.corrupt")));
        assert_eq!(again.read(&pa).unwrap(), a);

        // Storing the challenge rewrites the entry in place.
        let mut a2 = a.clone();
        a2.meta.challenge = Some(challenge("j1", 1, vec![5]));
        again.write(&a2).unwrap();
        assert_eq!(again.read(&pa).unwrap(), a2);
        again.remove(&pa).unwrap();
        again.remove(&pa).unwrap();
        assert_eq!(again.list().unwrap().entries.len(), 1);
    }

    #[test]
    fn an_entry_is_its_leaves_and_a_small_header() {
        for n in [1, 1024, 4096] {
            let b = entry_bytes(n);
            assert!(
                b > 32 * u64::from(n) && b < 32 * u64::from(n) + 400,
                "{n}: {b}"
            );
        }
    }

    #[test]
    fn the_answers_key_is_the_same_for_the_same_pair_only() {
        let k = idempotency_key("job-1", 1);
        assert_eq!(k, idempotency_key("job-1", 1));
        assert_ne!(k, idempotency_key("job-1", 2));
        assert_ne!(k, idempotency_key("job-11", 1));
        assert_eq!(k.len(), "audit-".len() + 32);
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn polls_decide_each_entrys_fate() {
        let now = datetime!(2026-01-02 04:00:00 UTC);
        let age = Duration::from_secs(3600 * 24);
        let e = entry("j1", 1).meta;
        let c = challenge("j1", 1, vec![2]);
        let other = challenge("j1", 2, vec![2]);
        // Named by an open audit: store it (once).
        assert_eq!(
            after_poll(&e, false, &[other.clone(), c.clone()], now, age),
            PollFate::Challenge(c.clone())
        );
        assert_eq!(
            after_poll(&e, true, std::slice::from_ref(&c), now, age),
            PollFate::Challenge(c.clone())
        );
        let held = Meta {
            challenge: Some(c.clone()),
            ..e.clone()
        };
        assert_eq!(
            after_poll(&held, false, std::slice::from_ref(&c), now, age),
            PollFate::Keep
        );
        // A held challenge no poll names any more is still answered (the verdict settles it).
        assert_eq!(after_poll(&held, false, &[], now, age), PollFate::Keep);
        // Not named: kept while the proof awaits its ack, dropped after.
        assert_eq!(
            after_poll(&e, true, std::slice::from_ref(&other), now, age),
            PollFate::Keep
        );
        assert_eq!(after_poll(&e, false, &[other], now, age), PollFate::Drop);
        // Too old: dropped whatever it holds.
        let later = now + time::Duration::days(2);
        assert_eq!(after_poll(&held, true, &[c], later, age), PollFate::Drop);
    }
}
