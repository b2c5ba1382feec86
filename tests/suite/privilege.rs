//! `aitbc-miner run` started as root gives root up: checked from outside, on the running
//! supervisor's `/proc/<pid>/status` (ids, capability sets, no_new_privs), the ownership of its
//! `/proc/<pid>` files (not dumpable) and of the directories it handed to the run-as user; and
//! a `RUN_AS_USER` that names no user stops it at start with the fix.
//!
//! The root-only checks say so and pass trivially when the suite does not run as root (CI runs
//! as root). These tests must never talk to a real Coordinator (closed port, as in
//! `config_cli`).

use std::os::unix::fs::MetadataExt;

use crate::common::{reachable_tempdir, RUN_AS};
use crate::config_cli::{refused, valid_config, write_config, Miner};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The value of `Name:` in a `/proc/<pid>/status` text, whitespace-normalised.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
}

#[test]
fn a_root_miner_drops_to_the_run_as_user_with_nothing_left() {
    if !is_root() {
        eprintln!("skipped: needs root (a non-root miner has nothing to drop)");
        return;
    }
    let nobody = nix::unistd::User::from_name(RUN_AS)
        .expect("passwd readable")
        .expect("nobody exists");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let dir = reachable_tempdir();
    let config = write_config(dir.path(), "miner.conf", &valid_config(dir.path()), 0o600);
    let path = config.to_str().expect("temp paths are UTF-8");
    let mut miner = Miner::start(&["--config", path], &[]);
    assert!(
        miner.wait_for("heartbeat failed"),
        "the miner never ran; stderr:\n{}",
        miner.stderr.join("\n")
    );
    let pid = miner.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    assert_eq!(field(&status, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(field(&status, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    assert_eq!(field(&status, "Groups"), gid.to_string());
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&status, set), "0000000000000000", "{set}:\n{status}");
    }
    assert_eq!(
        field(&status, "NoNewPrivs"),
        "1",
        "the supervisor sets no_new_privs"
    );
    // Not dumpable: its /proc files belong to root, so its own uid (its workers) cannot open
    // its memory, environment or descriptors.
    for file in ["environ", "mem", "fd"] {
        let meta = std::fs::metadata(format!("/proc/{pid}/{file}")).expect("stat /proc file");
        assert_eq!(
            meta.uid(),
            0,
            "/proc/{pid}/{file} is owned by uid {}",
            meta.uid()
        );
    }
    // The directories it needs were handed to the run-as user.
    for sub in ["work", "state", "state/spool"] {
        let meta = std::fs::metadata(dir.path().join(sub)).expect("the directory exists");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{sub}");
    }
    let (exit, stderr) = miner.stop();
    assert!(exit.success(), "SIGTERM stops it cleanly: {exit}\n{stderr}");
    assert!(stderr.contains("dropped root"), "{stderr}");
}

#[test]
fn a_missing_run_as_user_stops_the_miner_with_the_fix() {
    if !is_root() {
        eprintln!("skipped: RUN_AS_USER is only used when the miner starts as root");
        return;
    }
    let dir = reachable_tempdir();
    let text = format!(
        "{}RUN_AS_USER=aitbc-no-such-user\n",
        valid_config(dir.path())
    );
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let stderr = refused(&config, &[]);
    assert!(
        stderr.contains(
            "RUN_AS_USER=\"aitbc-no-such-user\": no such user on this system; create it with \
             `useradd --system --no-create-home aitbc-miner`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("or set RUN_AS_USER=nobody"), "{stderr}");
    assert!(
        !dir.path().join("work").exists(),
        "nothing was set up before the user was found"
    );
}

#[test]
fn the_new_keys_are_checked_from_the_file_and_the_environment() {
    let dir = reachable_tempdir();
    let text = format!("{}SANDBOX_FS=chroot\n", valid_config(dir.path()));
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let line = valid_config(dir.path()).lines().count() + 1;
    let stderr = refused(&config, &[]);
    let want = format!(
        "{}:{line}: SANDBOX_FS=\"chroot\": expected auto, landlock or mount",
        config.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");

    let config = write_config(dir.path(), "ok.conf", &valid_config(dir.path()), 0o600);
    for (key, value, want) in [
        (
            "MAX_JOB_DISK_MB",
            "0",
            "environment: MAX_JOB_DISK_MB=\"0\": expected a whole number from 1",
        ),
        (
            "RUN_AS_USER",
            "Bad User",
            "environment: RUN_AS_USER=\"Bad User\": expected a user name",
        ),
    ] {
        let stderr = refused(&config, &[(key, value)]);
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
}
