//! The CPU packages' energy counters through the powercap interface:
//! `/sys/class/powercap/intel-rapl:N/energy_uj` (one top-level zone per package; AMD's RAPL
//! shows up under the same name), each wrapping to 0 past its `max_energy_range_uj`.
//!
//! Reading is best effort: since Linux 5.10 `energy_uj` is readable by root only, and many
//! virtual machines have no powercap at all; then the answer is `None` and the proof says
//! `energy_source = unavailable`. Sub-zones (`intel-rapl:N:M`, cores/uncore/DRAM, inside their
//! package) and `psys` (the whole platform) are not added, so nothing is counted twice.
//! Nothing here writes to sysfs or panics on what it reads.

use std::path::{Path, PathBuf};

/// Where the kernel puts powercap zones.
pub const POWERCAP: &str = "/sys/class/powercap";

/// One package zone.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    energy_uj: PathBuf,
    max_uj: u64,
}

/// The package zones found under a powercap directory, in name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rapl {
    zones: Vec<Zone>,
}

/// A reading: one counter value per zone, in microjoules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample(Vec<u64>);

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Rapl {
    /// The package zones under `root` (normally [`POWERCAP`]) whose counter can be read now;
    /// `None` when there are none.
    pub fn open(root: &Path) -> Option<Rapl> {
        let mut zones: Vec<(String, Zone)> = std::fs::read_dir(root)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_prefix("intel-rapl:")?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let dir = e.path();
                let kind = std::fs::read_to_string(dir.join("name")).unwrap_or_default();
                if !kind.is_empty() && !kind.trim().starts_with("package") {
                    return None;
                }
                let energy_uj = dir.join("energy_uj");
                read_u64(&energy_uj)?;
                let max_uj = read_u64(&dir.join("max_energy_range_uj")).unwrap_or(u64::MAX);
                Some((name, Zone { energy_uj, max_uj }))
            })
            .collect();
        zones.sort_by(|a, b| a.0.cmp(&b.0));
        (!zones.is_empty()).then(|| Rapl {
            zones: zones.into_iter().map(|(_, z)| z).collect(),
        })
    }

    /// Reads every zone's counter; `None` if any cannot be read.
    pub fn sample(&self) -> Option<Sample> {
        self.zones
            .iter()
            .map(|z| read_u64(&z.energy_uj))
            .collect::<Option<Vec<u64>>>()
            .map(Sample)
    }

    /// Energy between two samples of this set of zones, in millijoules (each zone's difference
    /// across its wraparound, summed, rounded down).
    pub fn delta_mj(&self, before: &Sample, after: &Sample) -> Option<u64> {
        if before.0.len() != self.zones.len() || after.0.len() != self.zones.len() {
            return None;
        }
        let uj = self
            .zones
            .iter()
            .zip(before.0.iter().zip(&after.0))
            .map(|(z, (b, a))| super::energy_delta(*b, *a, z.max_uj))
            .fold(0u64, u64::saturating_add);
        Some(uj / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, name: &str, kind: &str, energy: &str, max: &str) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{kind}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    #[test]
    fn packages_are_summed_across_wraparound() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        zone(root, "intel-rapl:0", "package-0", "1000000", "262143328850");
        zone(
            root,
            "intel-rapl:1",
            "package-1",
            "262143000000",
            "262143328850",
        );
        // Not counted: a package's sub-zone, the platform zone, another driver's zone.
        zone(root, "intel-rapl:0:0", "core", "5", "100");
        zone(root, "intel-rapl:2", "psys", "7", "100");
        zone(root, "intel-rapl-mmio:0", "package-0", "9", "100");
        let rapl = Rapl::open(root).unwrap();
        assert_eq!(rapl.zones.len(), 2);
        let before = rapl.sample().unwrap();
        assert_eq!(before, Sample(vec![1_000_000, 262_143_000_000]));
        // Package 0 used 2.5 J; package 1 wrapped: 328_850 µJ to the top, then 171_150 µJ.
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "3500000\n").unwrap();
        std::fs::write(root.join("intel-rapl:1/energy_uj"), "171150\n").unwrap();
        let after = rapl.sample().unwrap();
        assert_eq!(rapl.delta_mj(&before, &after), Some(2500 + 500));
        assert_eq!(rapl.delta_mj(&before, &Sample(vec![1])), None);
    }

    #[test]
    fn unreadable_or_absent_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(Rapl::open(&t.path().join("missing")), None);
        assert_eq!(Rapl::open(t.path()), None);
        zone(t.path(), "intel-rapl:0", "package-0", "not a number", "10");
        assert_eq!(Rapl::open(t.path()), None);
        zone(t.path(), "intel-rapl:1", "package-1", "5", "10");
        let rapl = Rapl::open(t.path()).unwrap();
        std::fs::remove_file(t.path().join("intel-rapl:1/energy_uj")).unwrap();
        assert_eq!(rapl.sample(), None);
        // This host's real powercap: whatever it has, no panic.
        let _ = Rapl::open(Path::new(POWERCAP)).and_then(|r| r.sample());
    }
}
