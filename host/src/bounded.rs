//! A map that keeps at most a fixed number of entries, dropping the oldest: the caches a
//! service run fills with one entry per phone or attachment (issue 13) stay bounded.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `limit` entries; inserting past it drops the entry inserted longest ago.
/// Inserting a key again replaces its value and makes it the newest.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    /// Each value with its insertion number.
    entries: HashMap<K, (V, u64)>,
    /// Keys by insertion number, oldest first.
    order: BTreeMap<u64, K>,
    next: u64,
    limit: usize,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// Keeps at most `limit` entries (at least one).
    pub fn new(limit: usize) -> Self {
        BoundedMap {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            limit: limit.max(1),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn len(&self) -> usize {
        debug_assert_eq!(self.entries.len(), self.order.len());
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Inserts `value` as the newest entry, then drops the oldest while over the limit.
    pub fn insert(&mut self, key: K, value: V) {
        let number = self.next;
        self.next += 1;
        if let Some((_, old)) = self.entries.insert(key.clone(), (value, number)) {
            self.order.remove(&old);
        }
        self.order.insert(number, key);
        while self.entries.len() > self.limit {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let order = &mut self.order;
        self.entries.retain(|key, (value, number)| {
            let kept = keep(key, value);
            if !kept {
                order.remove(number);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_past_the_limit() {
        let mut map = BoundedMap::new(3);
        for i in 0..10 {
            map.insert(i, i * 10);
            assert!(map.len() <= 3);
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&6), None);
        assert_eq!(
            (map.get(&7), map.get(&8), map.get(&9)),
            (Some(&70), Some(&80), Some(&90))
        );
    }

    #[test]
    fn inserting_a_key_again_makes_it_the_newest() {
        let mut map = BoundedMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("a", 3);
        map.insert("c", 4);
        assert_eq!(
            (map.get(&"a"), map.get(&"b"), map.get(&"c")),
            (Some(&3), None, Some(&4))
        );
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn retain_drops_entries_from_both_the_map_and_the_order() {
        let mut map = BoundedMap::new(4);
        for i in 0..4 {
            map.insert(i, ());
        }
        map.retain(|key, _| key % 2 == 0);
        assert_eq!(map.len(), 2);
        // Room for two more before the oldest kept one (0) goes.
        map.insert(10, ());
        map.insert(11, ());
        assert_eq!(map.len(), 4);
        map.insert(12, ());
        assert_eq!((map.get(&0), map.get(&2)), (None, Some(&())));
        assert_eq!(BoundedMap::<u8, ()>::new(0).limit(), 1);
    }
}
