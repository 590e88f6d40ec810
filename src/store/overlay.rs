//! The records made durable in the journal since the last checkpoint, kept
//! in memory and read before the redb file: a group commit then costs a
//! journal record and a few map inserts, and redb is written once per
//! checkpoint (every key once, however often it changed) instead of once
//! per group.
//!
//! Two layers: `active` takes the groups being written now; `frozen` is
//! the layer a checkpoint is writing to redb, still read until that
//! checkpoint is durable (then it is dropped: redb has it). A read looks in
//! `active`, then `frozen`, then redb — in that order, and the overlay
//! before redb, so that a layer dropped between the two looks is already
//! in redb when redb is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::{Table, Write};

/// One table's records: key → value, `None` for a deleted key. Hashed,
/// not ordered: keys share long prefixes (a session's id), which made
/// every comparison of an ordered map's lookups a long `memcmp`; the rare
/// scans and the checkpoints sort what they take.
pub(super) type Records = HashMap<String, Option<Vec<u8>>>;

/// Every table's records, indexed by [`Table::index`].
pub(super) type Layer = [Records; Table::ALL.len()];

/// The two layers, behind one lock (held for a map lookup or insert).
#[derive(Default)]
pub(super) struct Overlay {
    layers: RwLock<Layers>,
}

#[derive(Default)]
struct Layers {
    active: Layer,
    frozen: Option<Arc<Layer>>,
}

impl Overlay {
    /// Records a durable group's writes, in order (the last write of a key
    /// wins).
    pub(super) fn apply(&self, writes: Vec<Write>) {
        let mut layers = self.write();
        for write in writes {
            lay(&mut layers.active, write);
        }
    }

    /// What the overlay knows of a key: `Some(None)` when it was deleted,
    /// `None` when redb has the answer.
    pub(super) fn get(&self, table: Table, key: &str) -> Option<Option<Vec<u8>>> {
        let layers = self.read();
        let newest_first = std::iter::once(&layers.active).chain(layers.frozen.as_deref());
        for layer in newest_first {
            if let Some(value) = layer[table.index()].get(key) {
                return Some(value.clone());
            }
        }
        None
    }

    /// Every record of `table` under `prefix`, newest layer winning: what
    /// a scan lays over redb's records.
    pub(super) fn under(&self, table: Table, prefix: &str) -> BTreeMap<String, Option<Vec<u8>>> {
        self.matching(table, |key| key.starts_with(prefix))
    }

    /// Every record of `table` whose key `wanted`, newest layer winning.
    pub(super) fn matching(
        &self,
        table: Table,
        wanted: impl Fn(&str) -> bool,
    ) -> BTreeMap<String, Option<Vec<u8>>> {
        let layers = self.read();
        let mut found = BTreeMap::new();
        let oldest_first = layers.frozen.as_deref().into_iter().chain([&layers.active]);
        for layer in oldest_first {
            for (key, value) in &layer[table.index()] {
                if wanted(key) {
                    found.insert(key.clone(), value.clone());
                }
            }
        }
        found
    }

    /// Whether the active layer holds nothing.
    pub(super) fn is_idle(&self) -> bool {
        self.read().active.iter().all(Records::is_empty)
    }

    /// Moves the active layer to `frozen` (for a checkpoint) and starts an
    /// empty one. The previous frozen layer must have been dropped.
    pub(super) fn freeze(&self) -> Arc<Layer> {
        let mut layers = self.write();
        debug_assert!(layers.frozen.is_none(), "a checkpoint is still pending");
        let frozen = Arc::new(std::mem::take(&mut layers.active));
        layers.frozen = Some(frozen.clone());
        frozen
    }

    /// The frozen layer, if a checkpoint has not made it durable yet.
    pub(super) fn frozen(&self) -> Option<Arc<Layer>> {
        self.read().frozen.clone()
    }

    /// Drops the frozen layer: its checkpoint is durable.
    pub(super) fn thaw(&self) {
        self.write().frozen = None;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Layers> {
        self.layers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Layers> {
        self.layers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A layer holding `writes` (the last write of a key wins).
pub(super) fn layer_of<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Layer {
    let mut layer = Layer::default();
    for write in writes {
        lay(&mut layer, write.clone());
    }
    layer
}

fn lay(layer: &mut Layer, write: Write) {
    match write {
        Write::Put(table, key, value) => layer[table.index()].insert(key, Some(value)),
        Write::Delete(table, key) => layer[table.index()].insert(key, None),
    };
}

/// Lays the overlay's records (`over`) on redb's (`base`, in key order):
/// the overlay's values replace redb's, its deletions remove them.
pub(super) fn merge(
    base: Vec<(String, Vec<u8>)>,
    over: BTreeMap<String, Option<Vec<u8>>>,
) -> Vec<(String, Vec<u8>)> {
    if over.is_empty() {
        return base;
    }
    let mut merged: BTreeMap<String, Vec<u8>> = base.into_iter().collect();
    for (key, value) in over {
        match value {
            Some(value) => merged.insert(key, value),
            None => merged.remove(&key),
        };
    }
    merged.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Write {
        Write::Put(Table::Vars, key.into(), value.as_bytes().to_vec())
    }

    #[test]
    fn the_newest_layer_wins_and_deletions_are_remembered() {
        let overlay = Overlay::default();
        overlay.apply(vec![put("a", "1"), put("b", "1")]);
        let frozen = overlay.freeze();
        assert_eq!(frozen[Table::Vars.index()].len(), 2);
        overlay.apply(vec![put("a", "2"), Write::Delete(Table::Vars, "b".into())]);
        assert_eq!(overlay.get(Table::Vars, "a"), Some(Some(b"2".to_vec())));
        assert_eq!(overlay.get(Table::Vars, "b"), Some(None), "deleted");
        assert_eq!(overlay.get(Table::Vars, "c"), None, "redb's to answer");
        assert_eq!(
            overlay.get(Table::Sessions, "a"),
            None,
            "tables are separate"
        );
        overlay.thaw();
        assert_eq!(overlay.get(Table::Vars, "a"), Some(Some(b"2".to_vec())));
        assert!(overlay.frozen().is_none());
    }

    #[test]
    fn a_frozen_layer_is_read_until_it_is_thawed() {
        let overlay = Overlay::default();
        overlay.apply(vec![put("a", "1")]);
        overlay.freeze();
        assert!(overlay.is_idle());
        assert_eq!(overlay.get(Table::Vars, "a"), Some(Some(b"1".to_vec())));
        overlay.thaw();
        assert_eq!(overlay.get(Table::Vars, "a"), None);
    }

    #[test]
    fn a_scan_lays_the_overlay_over_the_database() {
        let overlay = Overlay::default();
        overlay.apply(vec![put("p\u{0}a", "old"), put("p\u{0}c", "3")]);
        overlay.freeze();
        overlay.apply(vec![
            put("p\u{0}a", "new"),
            Write::Delete(Table::Vars, "p\u{0}b".into()),
            put("q\u{0}z", "other prefix"),
        ]);
        let base = vec![
            ("p\u{0}a".to_string(), b"db".to_vec()),
            ("p\u{0}b".to_string(), b"db".to_vec()),
            ("p\u{0}d".to_string(), b"db".to_vec()),
        ];
        let merged = merge(base, overlay.under(Table::Vars, "p\u{0}"));
        let expected: Vec<(String, Vec<u8>)> = vec![
            ("p\u{0}a".into(), b"new".to_vec()),
            ("p\u{0}c".into(), b"3".to_vec()),
            ("p\u{0}d".into(), b"db".to_vec()),
        ];
        assert_eq!(merged, expected);
    }
}
