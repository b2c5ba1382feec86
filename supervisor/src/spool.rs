//! The durable outbox: every proof and fail report is written here (tmp file, fsync, rename,
//! fsync of the directory) BEFORE it is sent, and removed only once the Coordinator has given a
//! definitive answer. A crash, an outage or a restart therefore never loses a result, and the
//! idempotency key stored with the body makes a resend safe (never credited twice).
//!
//! Files are `STATE_DIR/spool/<job_id>-<attempt>.json`; one attempt ends in exactly one entry.
//! This module only reads and writes files (blocking; callers use `spawn_blocking`); it must
//! never talk to the network and never delete an entry it has not been told to.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use protocol::api::{FailReport, Proof};
use serde::{Deserialize, Serialize};

use crate::Error;

/// What waits in the outbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Proof {
        idempotency_key: String,
        body: Proof,
    },
    Fail {
        idempotency_key: String,
        body: FailReport,
    },
}

impl Entry {
    pub fn proof(body: Proof) -> Entry {
        Entry::Proof {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            body,
        }
    }

    pub fn fail(body: FailReport) -> Entry {
        Entry::Fail {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            body,
        }
    }

    pub fn job_id(&self) -> &str {
        match self {
            Entry::Proof { body, .. } => &body.id,
            Entry::Fail { body, .. } => &body.id,
        }
    }

    pub fn attempt(&self) -> u32 {
        match self {
            Entry::Proof { body, .. } => body.attempt.unwrap_or(0),
            Entry::Fail { body, .. } => body.attempt.unwrap_or(0),
        }
    }

    /// `<job_id>-<attempt>.json`. The caller has checked the id with `policy::safe_job_id`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.json", self.job_id(), self.attempt())
    }
}

/// What [`Spool::list`] finds: the entries waiting (with their paths) and the files set aside.
pub struct Listing {
    pub entries: Vec<(PathBuf, Entry)>,
    pub corrupt: Vec<PathBuf>,
}

/// The outbox directory.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

fn spool_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Spool {
        path: path.to_owned(),
        source,
    }
}

impl Spool {
    /// Opens (creating, mode 0700) `state_dir/spool`.
    pub fn open(state_dir: &Path) -> Result<Spool, Error> {
        let dir = state_dir.join("spool");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(spool_err(&dir))?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `entry` durably and returns its path.
    pub fn write(&self, entry: &Entry) -> Result<PathBuf, Error> {
        let path = self.dir.join(entry.file_name());
        let tmp = self.dir.join(format!(".{}.tmp", entry.file_name()));
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| Error::Spool {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_durably(&self.dir, &tmp, &path, &bytes).map_err(spool_err(&path))?;
        Ok(path)
    }

    /// Every entry waiting, oldest first (by modification time, then name). A file that does not
    /// parse is renamed to `*.corrupt` (kept for the operator, never resent) and reported.
    pub fn list(&self) -> Result<Listing, Error> {
        let mut found = Vec::new();
        let mut corrupt = Vec::new();
        for dirent in fs::read_dir(&self.dir).map_err(spool_err(&self.dir))? {
            let dirent = dirent.map_err(spool_err(&self.dir))?;
            let path = dirent.path();
            let name = dirent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let modified = dirent.metadata().and_then(|m| m.modified()).ok();
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(entry) => found.push((modified, path, entry)),
                Err(_) => {
                    let aside = path.with_extension("json.corrupt");
                    fs::rename(&path, &aside).map_err(spool_err(&path))?;
                    corrupt.push(aside);
                }
            }
        }
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(Listing {
            entries: found.into_iter().map(|(_, p, e)| (p, e)).collect(),
            corrupt,
        })
    }

    /// Whether an entry for (job, attempt) is waiting (its file exists).
    pub fn holds(&self, job_id: &str, attempt: u32) -> bool {
        self.dir.join(format!("{job_id}-{attempt}.json")).exists()
    }

    /// Removes a sent entry (and syncs the directory so it stays removed).
    pub fn remove(&self, path: &Path) -> Result<(), Error> {
        remove_durably(&self.dir, path).map_err(spool_err(path))
    }
}

/// Writes `bytes` to `path` in `dir` so that a crash leaves the old file or the new one, never
/// a torn one: a private (0600) `tmp` file, fsync, rename over `path`, fsync of `dir`. The
/// proof spool and the audit spool both write this way.
pub(crate) fn write_durably(
    dir: &Path,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Removes `path` (already gone is fine) and syncs `dir` so it stays removed.
pub(crate) fn remove_durably(dir: &Path, path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::{FailReason, Metrics, Mode};

    fn proof(id: &str, attempt: u32) -> Proof {
        Proof {
            id: id.into(),
            miner_id: Some("m1".into()),
            attempt: Some(attempt),
            mode: Mode::Cpu,
            output_sha: "ab".repeat(32),
            merkle_root: None,
            output_len: Some(16),
            metrics: Metrics::default(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn entries_survive_a_reopen_with_their_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path()).unwrap();
        let a = Entry::proof(proof("j1", 1));
        let b = Entry::fail(FailReport {
            id: "j2".into(),
            miner_id: Some("m1".into()),
            attempt: Some(2),
            reason: FailReason::TimedOut,
            message: "ran past 1 s".into(),
        });
        let pa = spool.write(&a).unwrap();
        let pb = spool.write(&b).unwrap();
        assert_eq!(pa.file_name().unwrap(), "j1-1.json");
        assert_eq!(pb.file_name().unwrap(), "j2-2.json");

        let again = Spool::open(tmp.path()).unwrap();
        let Listing {
            entries: list,
            corrupt,
        } = again.list().unwrap();
        assert!(corrupt.is_empty());
        let entries: Vec<_> = list.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(entries.len(), 2);
        assert!(entries.contains(&a) && entries.contains(&b));

        assert!(again.holds("j1", 1) && again.holds("j2", 2));
        assert!(!again.holds("j1", 2));
        again.remove(&pa).unwrap();
        again.remove(&pa).unwrap(); // twice is fine
        assert!(!again.holds("j1", 1));
        let list = again.list().unwrap().entries;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].1, b);
    }

    #[test]
    fn corrupt_files_are_set_aside_not_resent() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path()).unwrap();
        fs::write(spool.dir().join("x-1.json"), b"{not json").unwrap();
        fs::write(spool.dir().join(".y-1.json.tmp"), b"half").unwrap();
        let Listing { entries, corrupt } = spool.list().unwrap();
        assert!(entries.is_empty());
        assert_eq!(corrupt, vec![spool.dir().join("x-1.json.corrupt")]);
        assert!(spool.list().unwrap().corrupt.is_empty());
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path()).unwrap();
        let p = spool.write(&Entry::proof(proof("j", 1))).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dmode = fs::metadata(spool.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
    }
}
