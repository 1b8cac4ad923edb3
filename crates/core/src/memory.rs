//! Memory freed by the sweeps of idle destinations and watches, given back to
//! the system: the swept maps' spare capacity, and the allocator's free pages.
//! Shared by the proxy (its destinations) and the controller (its watches).
//!
//! glibc's malloc returns freed memory to the kernel only from the top of a
//! heap. The state of thousands of destinations, freed together by a sweep,
//! lies below allocations that outlive it, so without a trim the proxy's
//! resident memory would stay at its peak for good (10,000 destinations:
//! 180 MiB, against 16 MiB before them; `cluster::destination_memory`).

use std::collections::HashMap;
use std::hash::Hash;

/// Trims after each sweep that released something, and once more at the
/// sweep after it: part of what a sweep releases is freed only later, when
/// the runtime drops the tasks it aborted (watch streams, pooled connections).
#[derive(Debug, Default)]
pub struct TrimAfterSweeps {
    last_released: bool,
}

impl TrimAfterSweeps {
    pub fn swept(&mut self, released: bool) {
        if released || self.last_released {
            return_freed_to_system();
        }
        self.last_released = released;
    }
}

/// Hands the free pages of every malloc arena back to the kernel
/// (`malloc_trim`). It walks the heap: for the sweeps, never the request path.
pub fn return_freed_to_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim works on malloc's own free lists under its own locks;
    // it frees nothing a caller still holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back what a map swept of idle destinations no longer needs: a
/// `HashMap` keeps the capacity of its fullest moment, which for maps keyed
/// by what applications send is the largest burst they ever sent. Only once
/// it is mostly empty, so a steady state never reallocates.
pub fn shrink_swept<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > SHRINK_FACTOR * map.len().max(MIN_SHRUNK_CAPACITY) {
        map.shrink_to(2 * map.len());
    }
}

/// A swept map is shrunk when its capacity is this many times its length...
const SHRINK_FACTOR: usize = 4;
/// ...and never below this: small maps are not worth reallocating.
const MIN_SHRUNK_CAPACITY: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swept_map_keeps_the_capacity_of_its_load_not_its_peak() {
        let mut map: HashMap<usize, ()> = (0..10_000).map(|n| (n, ())).collect();
        map.retain(|n, _| *n < 1_000);
        shrink_swept(&mut map);
        assert!(map.capacity() >= 1_000, "room for what is left");
        let steady = map.capacity();
        assert!(steady <= 4_000, "capacity {steady} for 1,000 entries");
        shrink_swept(&mut map);
        assert_eq!(map.capacity(), steady, "no reallocation in a steady state");
        map.clear();
        shrink_swept(&mut map);
        assert!(map.capacity() < 1_000);
    }
}
