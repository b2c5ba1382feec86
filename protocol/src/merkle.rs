//! The Merkle tree that commits to a job's output rows, so that a verifier can later ask for a
//! few rows and check each against the committed root with a short path, without the rest.
//!
//! It is the tree of RFC 9162 (Certificate Transparency 2.0, section 2.1), with SHA-256:
//!
//! ```text
//! leaf hash      LH(d)      = SHA-256(0x00 || d)
//! node hash      NH(l, r)   = SHA-256(0x01 || l || r)
//! tree of n >= 1 leaves     MTH([d]) = LH(d);
//!                           MTH(D[0:n]) = NH(MTH(D[0:k]), MTH(D[k:n])), k the largest power of
//!                           two smaller than n
//! ```
//!
//! The 0x00 / 0x01 prefixes keep a leaf from ever passing for an inner node. An inclusion proof
//! ("audit path") of leaf `m` lists the sibling subtree roots from the leaf up; [`verify`] is
//! RFC 9162's algorithm 2.1.3.2. A tree of zero leaves is not defined here: every output has at
//! least one row.
//!
//! Pure: no I/O, nothing host-specific; the same bytes everywhere. Verifier code (the
//! Coordinator's audits) uses this module as it is, so it must never depend on the miner.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// `LH(d) = SHA-256(0x00 || d)`: the hash of one leaf (one output row).
pub fn leaf_hash(data: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `NH(l, r) = SHA-256(0x01 || l || r)`: the hash of an inner node.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root over the given leaf hashes (in order); `None` for no leaves.
pub fn root(leaves: &[Digest]) -> Option<Digest> {
    match leaves.len() {
        0 => None,
        1 => Some(leaves[0]),
        n => {
            let k = split(n);
            Some(node_hash(&root(&leaves[..k])?, &root(&leaves[k..])?))
        }
    }
}

/// The inclusion proof of leaf `index`: the sibling subtree roots from the leaf up to the root;
/// `None` when `index` is not a leaf.
pub fn inclusion_proof(leaves: &[Digest], index: usize) -> Option<Vec<Digest>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    let (mut lo, mut hi, mut m) = (0, leaves.len(), index);
    // Walk down, collecting the other side at each split; the path runs leaf-up, so reverse.
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(root(&leaves[lo + k..hi])?);
            hi = lo + k;
        } else {
            path.push(root(&leaves[lo..lo + k])?);
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    Some(path)
}

/// Whether `path` proves that `leaf` (a [`leaf_hash`]) is leaf `index` of a tree of `size`
/// leaves with root `root` (RFC 9162, 2.1.3.2).
pub fn verify(root: &Digest, size: u64, index: u64, leaf: &Digest, path: &[Digest]) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n as u32).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    fn hex(d: &Digest) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The definition itself, written the slow way: the tree of RFC 9162 by recursion on the
    /// data, for comparison with `root`.
    fn mth(data: &[Vec<u8>]) -> Digest {
        if data.len() == 1 {
            return leaf_hash(&data[0]);
        }
        let mut k = 1;
        while k * 2 < data.len() {
            k *= 2;
        }
        node_hash(&mth(&data[..k]), &mth(&data[k..]))
    }

    #[test]
    fn known_roots() {
        // SHA-256(0x00): RFC 9162's hash of the empty leaf.
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(root(&[]), None);
        let one = leaves(1);
        assert_eq!(root(&one), Some(one[0]));
        let three = leaves(3);
        assert_eq!(
            root(&three),
            Some(node_hash(&node_hash(&three[0], &three[1]), &three[2]))
        );
    }

    #[test]
    fn root_follows_the_definition() {
        for n in 1..=40usize {
            let data: Vec<Vec<u8>> = (0..n as u32).map(|i| i.to_le_bytes().to_vec()).collect();
            assert_eq!(root(&leaves(n)), Some(mth(&data)), "{n}");
        }
    }

    #[test]
    fn every_leaf_of_every_size_proves_and_nothing_else_does() {
        for n in 1..=33usize {
            let l = leaves(n);
            let r = root(&l).unwrap();
            for m in 0..n {
                let path = inclusion_proof(&l, m).unwrap();
                assert!(path.len() <= 6, "{n} {m}");
                assert!(verify(&r, n as u64, m as u64, &l[m], &path), "{n} {m}");
                // Another leaf, another index, another size, a cut or a longer path: refused.
                let other = leaf_hash(b"not a row");
                assert!(!verify(&r, n as u64, m as u64, &other, &path));
                let mut bent = path.clone();
                if let Some(first) = bent.first_mut() {
                    first[0] ^= 1;
                    assert!(!verify(&r, n as u64, m as u64, &l[m], &bent), "{n} {m}");
                }
                if n > 1 {
                    let m2 = (m + 1) % n;
                    assert!(!verify(&r, n as u64, m2 as u64, &l[m], &path), "{n} {m}");
                }
                // The root binds the tree: the same path does not open a tree one leaf larger.
                let bigger = root(&leaves(n + 1)).unwrap();
                assert!(
                    !verify(&bigger, n as u64 + 1, m as u64, &l[m], &path),
                    "{n} {m}"
                );
                if !path.is_empty() {
                    assert!(!verify(&r, n as u64, m as u64, &l[m], &path[1..]));
                }
                let mut longer = path.clone();
                longer.push(r);
                assert!(!verify(&r, n as u64, m as u64, &l[m], &longer));
            }
            assert_eq!(inclusion_proof(&l, n), None);
            assert!(!verify(&r, n as u64, n as u64, &l[0], &[]));
        }
    }

    #[test]
    fn a_changed_row_changes_the_root() {
        let mut l = leaves(10);
        let before = root(&l);
        l[7] = leaf_hash(b"changed");
        assert_ne!(root(&l), before);
    }
}
