//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a table of
//! [`SIZE`] slots, each naming an endpoint, which a key's hash indexes. Every
//! endpoint fills slots along its own permutation of the table, taking turns,
//! so each owns a share in proportion to its weight, and adding or removing
//! one of N endpoints moves about 1/N of the keys. Built once per change of
//! the endpoint set (a few milliseconds, 256 KiB); a pick is one read.

use xxhash_rust::xxh64::xxh64;

/// Slots of a table: a prime, so every skip walks all of them, and well
/// above 100 times the endpoints of a backend (the paper's bound for
/// shares within 1 % of each other).
pub const SIZE: usize = 65_537;

/// Marks a slot no endpoint has claimed yet, while building.
const EMPTY: u32 = u32::MAX;

/// A built table: each slot holds an index into the endpoints it was built from.
pub struct Table {
    slots: Box<[u32]>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("size", &self.slots.len())
            .finish()
    }
}

/// One endpoint's progress along its permutation while the table fills.
struct Filler {
    index: u32,
    slot: usize,
    skip: usize,
    weight: u64,
    /// The round from which (times its weight) it claims again.
    claimed: u64,
}

impl Table {
    /// A table over `endpoints`, each a stable name (the same on every proxy,
    /// so all of them build the same table) and a weight (0 is read as 1).
    /// `None` without endpoints.
    pub fn build<'a>(endpoints: impl IntoIterator<Item = (&'a str, u32)>) -> Option<Table> {
        let mut named: Vec<(&str, u32, u32)> = endpoints
            .into_iter()
            .zip(0..u32::MAX)
            .map(|((name, weight), index)| (name, weight.max(1), index))
            .collect();
        // Turns in name order: the controller's listing order must not matter.
        named.sort_unstable_by_key(|(name, _, _)| *name);
        let max_weight = u64::from(named.iter().map(|(_, w, _)| *w).max()?);
        let mut fillers: Vec<Filler> = named
            .iter()
            .map(|(name, weight, index)| Filler {
                index: *index,
                slot: (xxh64(name.as_bytes(), 0) % SIZE as u64) as usize,
                skip: (xxh64(name.as_bytes(), 1) % (SIZE as u64 - 1)) as usize + 1,
                weight: u64::from(*weight),
                claimed: 0,
            })
            .collect();
        let mut slots = vec![EMPTY; SIZE].into_boxed_slice();
        let mut filled = 0;
        // The heaviest endpoints claim every round, so this ends within SIZE
        // rounds; a lighter one claims in `weight / max_weight` of them.
        let mut round: u64 = 0;
        while filled < SIZE {
            for filler in &mut fillers {
                if filled == SIZE {
                    break;
                }
                if round * filler.weight < filler.claimed {
                    continue;
                }
                filler.claimed += max_weight;
                while slots[filler.slot] != EMPTY {
                    filler.slot = (filler.slot + filler.skip) % SIZE;
                }
                slots[filler.slot] = filler.index;
                filled += 1;
            }
            round += 1;
        }
        Some(Table { slots })
    }

    /// The index of the endpoint that owns `hash`.
    pub fn get(&self, hash: u64) -> usize {
        self.slots[(hash % SIZE as u64) as usize] as usize
    }
}

/// The hash of a key's bytes.
pub fn hash(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// The `n`th other hash of a key whose owner cannot take it: independent
/// of the first, so an ejected endpoint's keys spread over all the others.
pub fn rehash(hash: u64, n: u64) -> u64 {
    xxh64(&hash.to_le_bytes(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn table(names: &[String], weights: &[u32]) -> Table {
        Table::build(
            names
                .iter()
                .map(String::as_str)
                .zip(weights.iter().copied()),
        )
        .expect("endpoints")
    }

    fn keys() -> impl Iterator<Item = u64> {
        (0..20_000u32).map(|k| hash(format!("user-{k}").as_bytes()))
    }

    /// How many of the keys each endpoint owns.
    fn shares(table: &Table, n: usize) -> Vec<usize> {
        let mut shares = vec![0; n];
        for key in keys() {
            shares[table.get(key)] += 1;
        }
        shares
    }

    #[test]
    fn keys_spread_evenly_and_by_weight() {
        let names = names(5);
        let even = shares(&table(&names, &[1; 5]), 5);
        for share in &even {
            // 4000 each, within 10 %.
            assert!((3600..=4400).contains(share), "{even:?}");
        }
        let weighted = shares(&table(&names, &[1, 1, 1, 1, 4]), 5);
        // 2500 each, the heavy one 10000.
        assert!((9000..=11_000).contains(&weighted[4]), "{weighted:?}");
        for share in &weighted[..4] {
            assert!((2200..=2800).contains(share), "{weighted:?}");
        }
        let zero = shares(&table(&names, &[0, 1, 1, 1, 1]), 5);
        assert!(
            zero.iter().all(|s| (3600..=4400).contains(s)),
            "0 is 1: {zero:?}"
        );
    }

    #[test]
    fn the_listing_order_does_not_change_the_table() {
        let names = names(4);
        let reversed: Vec<String> = names.iter().rev().cloned().collect();
        let (a, b) = (table(&names, &[1; 4]), table(&reversed, &[1; 4]));
        for key in keys() {
            assert_eq!(names[a.get(key)], reversed[b.get(key)]);
        }
    }

    #[test]
    fn adding_one_of_n_endpoints_moves_about_one_nth_of_the_keys() {
        for n in [4, 9] {
            let before_names = names(n);
            let after_names = names(n + 1);
            let (before, after) = (
                table(&before_names, &vec![1; n]),
                table(&after_names, &vec![1; n + 1]),
            );
            let mut moved = 0;
            let mut to_new = 0;
            for key in keys() {
                let (was, is) = (&before_names[before.get(key)], &after_names[after.get(key)]);
                if was != is {
                    moved += 1;
                    to_new += usize::from(is == &after_names[n]);
                }
            }
            let total = keys().count();
            let ideal = total / (n + 1);
            // Maglev moves a little more than the ideal share, almost all to the new one.
            assert!(
                moved >= ideal * 9 / 10 && moved <= ideal * 13 / 10,
                "{n}: {moved} of {total}"
            );
            assert!(
                to_new * 10 >= moved * 9,
                "{n}: {to_new} of {moved} to the new endpoint"
            );
        }
    }

    #[test]
    fn rehashes_are_spread_over_the_table() {
        let names = names(4);
        let t = table(&names, &[1; 4]);
        // The keys of endpoint 0, rehashed once, land on every endpoint.
        let mut landed = [0usize; 4];
        for key in keys().filter(|k| t.get(*k) == 0) {
            landed[t.get(rehash(key, 1))] += 1;
        }
        let total: usize = landed.iter().sum();
        for share in landed {
            assert!(share * 100 >= total * 20, "{landed:?}");
        }
    }

    #[test]
    fn no_endpoints_no_table() {
        assert!(Table::build(std::iter::empty()).is_none());
        let one = table(&names(1), &[1]);
        assert!(keys().all(|k| one.get(k) == 0));
    }
}
