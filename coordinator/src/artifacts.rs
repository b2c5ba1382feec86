//! Result artifacts: a job's output bytes as its miner uploads them, kept until its client
//! fetches them.
//!
//! An artifact is the output itself, so it needs no format of its own: it has the proof's
//! `output_len` bytes and their SHA-256 is the proof's `output_sha`. The directory
//! (`--artifact-dir`, by default `<db>.artifacts` beside the database) holds:
//!
//! * `<sha256>`: a complete artifact. Its bytes were hashed to its name before it was renamed
//!   into place, so a file here is always whole and verified, and never changes. Content
//!   addressing lets two jobs with the same output share one file.
//! * `partial/<sha256>.<key id>`: one miner key's upload in progress. Its length is what the
//!   Coordinator holds: each chunk is appended and synced before it is acknowledged, so an
//!   upload resumes after a crash of either side from the length it finds. Once the proof
//!   it belongs to is rejected it can never complete, and the sweep removes it ([`Artifacts::prune`]).
//!
//! [`plan`] is the pure decision about one chunk. This module must never decide who may
//! upload or download (`http.rs` checks the job, the attempt and the key), and never serve or
//! keep a complete file whose bytes do not hash to its name.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aitbc_protocol::api::ErrorCode;
use sha2::{Digest, Sha256};

use crate::error::{Error, Refusal};

/// The largest body one upload request may carry; larger artifacts come in several.
pub const CHUNK_BYTES: usize = 8 << 20;

/// What to do with a chunk of `len` bytes at `offset`, when `received` bytes of an artifact of
/// `size` are held: how many of its first bytes are already held (a replay or an overlapping
/// resume) and are skipped. A chunk may not start past `received` (that would leave a hole)
/// or end past `size`.
pub fn plan(received: u64, offset: u64, len: u64, size: u64) -> Result<u64, Refusal> {
    if offset > received {
        let mut r = Refusal::new(
            ErrorCode::OffsetMismatch,
            format!(
                "offset = {offset}: the coordinator holds {received} bytes of this artifact; \
                 resume at offset {received}"
            ),
        );
        r.details = serde_json::json!({ "field": "offset", "received": received });
        return Err(r);
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok((received - offset).min(len)),
        _ => Err(Refusal::invalid(
            "offset",
            &offset.to_string(),
            &format!("a chunk of {len} bytes there ends past the artifact's {size} bytes"),
        )),
    }
}

/// Where an artifact's upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub received: u64,
    pub complete: bool,
}

/// The artifact directory, and the uploads being written right now (one writer per partial).
#[derive(Debug)]
pub struct Artifacts {
    dir: PathBuf,
    busy: Mutex<HashSet<(String, i64)>>,
}

/// Holds one partial's write turn; released on drop.
pub struct Turn<'a> {
    artifacts: &'a Artifacts,
    slot: (String, i64),
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.artifacts
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.slot);
    }
}

impl Artifacts {
    /// Opens (creating, mode 0700) the directory and its `partial/`.
    pub fn open(dir: &Path) -> Result<Artifacts, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("partial"))?;
        Ok(Artifacts {
            dir: dir.to_path_buf(),
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// The file of a complete artifact, if it is here.
    pub fn complete(&self, sha: &str) -> Result<Option<PathBuf>, Error> {
        let path = self.dir.join(name(sha)?);
        Ok(path.is_file().then_some(path))
    }

    fn partial(&self, sha: &str, key_id: i64) -> Result<PathBuf, Error> {
        Ok(self
            .dir
            .join("partial")
            .join(format!("{}.{key_id}", name(sha)?)))
    }

    /// How much of the artifact `sha` of `size` bytes key `key_id` has uploaded.
    pub fn held(&self, sha: &str, key_id: i64, size: u64) -> Result<Held, Error> {
        if self.complete(sha)?.is_some() {
            return Ok(Held {
                received: size,
                complete: true,
            });
        }
        let received = match std::fs::metadata(self.partial(sha, key_id)?) {
            Ok(m) => m.len().min(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(Held {
            received,
            complete: false,
        })
    }

    /// The write turn on key `key_id`'s upload of `sha`, or `None` while another request has it.
    pub fn turn(&self, sha: &str, key_id: i64) -> Option<Turn<'_>> {
        let slot = (sha.to_string(), key_id);
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(slot.clone()).then(|| Turn {
            artifacts: self,
            slot,
        })
    }

    /// Appends `chunk` (at `offset`) to key `key_id`'s upload of `sha` (`size` bytes), durably;
    /// once all bytes are in, checks their SHA-256 and moves the file into place. A complete
    /// artifact answers every chunk as complete. The caller holds the [`Turn`].
    pub fn write(
        &self,
        _turn: &Turn<'_>,
        sha: &str,
        key_id: i64,
        size: u64,
        offset: u64,
        chunk: &[u8],
    ) -> Result<Held, Error> {
        let held = self.held(sha, key_id, size)?;
        if held.complete {
            return Ok(held);
        }
        let skip = plan(held.received, offset, chunk.len() as u64, size)?;
        let path = self.partial(sha, key_id)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let fresh = &chunk[usize::try_from(skip).unwrap_or(chunk.len())..];
        file.write_all(fresh)?;
        file.sync_data()?;
        let received = held.received + fresh.len() as u64;
        if received < size {
            return Ok(Held {
                received,
                complete: false,
            });
        }
        let got = file_sha256(&path)?;
        if got != sha {
            std::fs::remove_file(&path)?;
            return Err(Refusal::invalid(
                "artifact",
                &got,
                &format!(
                    "the {size} uploaded bytes hash to this, not to the proof's output_sha \
                     {sha}; the upload was discarded and starts again at offset 0"
                ),
            )
            .into());
        }
        std::fs::rename(&path, self.dir.join(name(sha)?))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Held {
            received: size,
            complete: true,
        })
    }
}

impl Artifacts {
    /// Removes every partial upload that `live` (given its digest and key id) says may not go
    /// on, because the proof it belongs to was rejected; returns how many. A partial being
    /// written is skipped, and its turn is held while it is judged and removed, so no chunk
    /// lands in a file as it goes. Files whose names this module did not write are left alone.
    pub fn prune(&self, live: impl Fn(&str, i64) -> Result<bool, Error>) -> Result<usize, Error> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.dir.join("partial"))? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some((sha, key_id)) = file_name.to_str().and_then(parse_partial) else {
                continue;
            };
            let Some(_turn) = self.turn(sha, key_id) else {
                continue;
            };
            if !live(sha, key_id)? {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }
}

/// `<sha256>.<key id>`, as [`Artifacts`] names a partial upload.
fn parse_partial(name: &str) -> Option<(&str, i64)> {
    let (sha, key) = name.split_once('.')?;
    let key_id: i64 = key.parse().ok()?;
    (aitbc_protocol::hex::digest(sha).is_some() && key_id.to_string() == key)
        .then_some((sha, key_id))
}

/// A digest as a file name: exactly 64 lower-case hex digits, so it names no other path.
fn name(sha: &str) -> Result<&str, Error> {
    if aitbc_protocol::hex::digest(sha).is_some() {
        Ok(sha)
    } else {
        Err(Error::Corrupt(format!(
            "artifact digest {sha:?} is not 64 hex digits"
        )))
    }
}

fn file_sha256(path: &Path) -> Result<String, Error> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(aitbc_protocol::hex::encode(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        aitbc_protocol::hex::encode(&Sha256::digest(bytes))
    }

    #[test]
    fn plan_skips_what_is_held_and_refuses_holes_and_overruns() {
        assert_eq!(plan(0, 0, 10, 10), Ok(0));
        assert_eq!(
            plan(4, 0, 10, 10),
            Ok(4),
            "an overlapping resume skips the held bytes"
        );
        assert_eq!(plan(10, 0, 10, 10), Ok(10), "a replay adds nothing");
        assert_eq!(
            plan(4, 2, 1, 10),
            Ok(1),
            "a chunk wholly held is skipped whole"
        );
        let hole = plan(4, 5, 1, 10).unwrap_err();
        assert_eq!(hole.code, ErrorCode::OffsetMismatch);
        assert_eq!(hole.details["received"], 4);
        let over = plan(4, 4, 7, 10).unwrap_err();
        assert_eq!(over.code, ErrorCode::ValidationFailed);
        assert!(
            over.message.starts_with("offset = \"4\""),
            "{}",
            over.message
        );
        assert_eq!(
            plan(0, u64::MAX, 2, 10).unwrap_err().code,
            ErrorCode::OffsetMismatch
        );
        assert_eq!(
            plan(u64::MAX, u64::MAX, 2, u64::MAX).unwrap_err().code,
            ErrorCode::ValidationFailed,
            "an end past u64 is refused, not wrapped"
        );
    }

    #[test]
    fn chunks_resume_verify_and_land_under_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let h = sha(&data);
        let turn = a.turn(&h, 7).unwrap();
        assert!(a.turn(&h, 7).is_none(), "one writer per upload");
        assert!(a.turn(&h, 8).is_some(), "another key's upload is its own");
        assert_eq!(
            a.write(&turn, &h, 7, 1000, 0, &data[..300])
                .unwrap()
                .received,
            300
        );
        // A replay of the first chunk, then an overlapping resume.
        assert_eq!(
            a.write(&turn, &h, 7, 1000, 0, &data[..300])
                .unwrap()
                .received,
            300
        );
        assert_eq!(
            a.write(&turn, &h, 7, 1000, 200, &data[200..700])
                .unwrap()
                .received,
            700
        );
        drop(turn);
        // After a "restart": a new handle finds what was held.
        let a = Artifacts::open(dir.path()).unwrap();
        assert_eq!(a.held(&h, 7, 1000).unwrap().received, 700);
        let turn = a.turn(&h, 7).unwrap();
        let done = a.write(&turn, &h, 7, 1000, 700, &data[700..]).unwrap();
        assert!(done.complete);
        assert_eq!(
            std::fs::read(a.complete(&h).unwrap().unwrap()).unwrap(),
            data
        );
        assert!(
            a.held(&h, 8, 1000).unwrap().complete,
            "any key now sees it complete"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("partial"))
                .unwrap()
                .count(),
            0,
            "the partial was moved into place"
        );
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_proof_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open(dir.path()).unwrap();
        let claimed = sha(b"the real output");
        let turn = a.turn(&claimed, 1).unwrap();
        let e = a
            .write(&turn, &claimed, 1, 15, 0, b"a forged output")
            .unwrap_err();
        let Error::Refused(r) = e else { panic!("{e}") };
        assert_eq!(r.code, ErrorCode::ValidationFailed);
        assert!(r.message.contains(&claimed), "{}", r.message);
        assert_eq!(a.complete(&claimed).unwrap(), None);
        assert_eq!(
            a.held(&claimed, 1, 15).unwrap().received,
            0,
            "starts again at 0"
        );
        assert!(
            a.complete("../../etc/passwd").is_err(),
            "only digests name files"
        );
    }

    #[test]
    fn prune_removes_only_dead_idle_partials_it_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open(dir.path()).unwrap();
        let (live, dead, busy) = (sha(b"live"), sha(b"dead"), sha(b"busy"));
        for h in [&live, &dead, &busy] {
            let turn = a.turn(h, 3).unwrap();
            a.write(&turn, h, 3, 100, 0, b"some bytes").unwrap();
        }
        let stray = dir.path().join("partial").join("notes.txt");
        std::fs::write(&stray, b"not an upload").unwrap();
        let writing = a.turn(&busy, 3).unwrap();
        let judged = std::cell::RefCell::new(Vec::new());
        let removed = a
            .prune(|h, key| {
                judged.borrow_mut().push((h.to_string(), key));
                Ok(h == live)
            })
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(a.held(&dead, 3, 100).unwrap().received, 0, "dead is gone");
        assert_eq!(a.held(&live, 3, 100).unwrap().received, 10, "live stays");
        assert_eq!(
            a.held(&busy, 3, 100).unwrap().received,
            10,
            "a partial being written is not judged"
        );
        assert!(!judged.borrow().iter().any(|(h, _)| *h == busy));
        assert!(stray.exists(), "a file it did not name is left alone");
        drop(writing);
        assert_eq!(a.prune(|_, _| Ok(false)).unwrap(), 2);
        assert!(
            a.prune(|_, _| Err(Error::Corrupt("store down".into())))
                .is_ok(),
            "nothing left to judge"
        );
    }
}
