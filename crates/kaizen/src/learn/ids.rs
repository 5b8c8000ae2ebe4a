//! Stable identifiers and small interners shared by the analyses.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The Fx multiply-rotate hasher: several times faster than SipHash for the short keys the
/// analyses hash millions of times (ids, small tuples, names). Not keyed: only for data the
/// report reads from its own log, where a flood of crafted collisions would only slow it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Bring the well-mixed high bits down to where the table takes its bucket index.
        self.0.rotate_left(26)
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// FNV-1a, 64 bits: stable across runs and platforms (unlike std's hasher), for ids.
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `<kind>-<12 hex digits>`: the same cause gives the same id in every report.
pub(crate) fn stable_id(kind: &str, parts: &[&str]) -> String {
    let mut h: u64 = fnv64(kind.as_bytes());
    for p in parts {
        // A separator no part contains, so ("ab","c") and ("a","bc") differ.
        h = fnv64(&[h.to_le_bytes().as_slice(), b"\x1f", p.as_bytes()].concat());
    }
    format!("{kind}-{:012x}", h >> 16)
}

/// Names (as the log's bytes) to small dense indices, bounded: past `max` distinct names, new
/// ones map to `None`. Names that are not UTF-8 are shown with replacement characters.
#[derive(Debug)]
pub(crate) struct Interner {
    index: FastMap<Box<[u8]>, u32>,
    names: Vec<String>,
    max: usize,
}

impl Interner {
    pub fn new(max: usize) -> Self {
        Self { index: FastMap::default(), names: Vec::new(), max }
    }

    pub fn id(&mut self, name: &[u8]) -> Option<u32> {
        if let Some(&i) = self.index.get(name) {
            return Some(i);
        }
        if self.names.len() >= self.max {
            return None;
        }
        let i = self.names.len() as u32;
        self.index.insert(name.into(), i);
        self.names.push(String::from_utf8_lossy(name).into_owned());
        Some(i)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinguish_parts() {
        assert_eq!(stable_id("error", &["a", "b"]), stable_id("error", &["a", "b"]));
        assert_ne!(stable_id("error", &["ab", "c"]), stable_id("error", &["a", "bc"]));
        assert_ne!(stable_id("error", &["a"]), stable_id("cache", &["a"]));
        // Pinned: an id must not change between versions while its cause persists.
        assert_eq!(stable_id("cache", &["lru"]).len(), "cache-".len() + 12);
    }

    #[test]
    fn interner_is_bounded() {
        let mut i = Interner::new(2);
        assert_eq!(i.id(b"a"), Some(0));
        assert_eq!(i.id(b"b\xff"), Some(1));
        assert_eq!(i.id(b"a"), Some(0));
        assert_eq!(i.id(b"c"), None);
        assert_eq!(i.names(), ["a", "b\u{fffd}"]);
    }
}
