//! A rule's weighted backends (a traffic split): a backend is drawn per
//! request in proportion to its weight; weight 0 gets nothing, no weight is 1.

use std::sync::Arc;

use plexus_api::v1 as proto;
use rand::Rng;

#[derive(Debug)]
pub struct BackendSplit {
    backends: Vec<(Arc<str>, u64)>,
    total: u64,
}

impl BackendSplit {
    pub fn new(backends: &[proto::WeightedBackend]) -> BackendSplit {
        let backends: Vec<(Arc<str>, u64)> = backends
            .iter()
            .map(|b| {
                (
                    Arc::from(b.backend.as_str()),
                    u64::from(b.weight.unwrap_or(1)),
                )
            })
            .filter(|(_, weight)| *weight > 0)
            .collect();
        let total = backends.iter().map(|(_, w)| w).sum();
        BackendSplit { backends, total }
    }

    /// All traffic to `backend`; nothing at all when it is empty.
    pub fn single(backend: &str) -> BackendSplit {
        if backend.is_empty() {
            return BackendSplit {
                backends: Vec::new(),
                total: 0,
            };
        }
        BackendSplit {
            backends: vec![(Arc::from(backend), 1)],
            total: 1,
        }
    }

    /// A backend drawn by weight; `None` when every weight is 0 (or none named).
    pub fn pick(&self) -> Option<&Arc<str>> {
        if let [(only, _)] = self.backends.as_slice() {
            return Some(only);
        }
        if self.total == 0 {
            return None;
        }
        let mut point = rand::rng().random_range(0..self.total);
        for (backend, weight) in &self.backends {
            if point < *weight {
                return Some(backend);
            }
            point -= weight;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(backend: &str, weight: Option<u32>) -> proto::WeightedBackend {
        proto::WeightedBackend {
            backend: backend.into(),
            weight,
        }
    }

    #[test]
    fn picks_follow_weights_and_skip_zero() {
        let split = BackendSplit::new(&[
            weighted("a", Some(3)),
            weighted("b", None),
            weighted("z", Some(0)),
        ]);
        let mut a = 0;
        for _ in 0..4000 {
            match split.pick().map(|b| b.to_string()).as_deref() {
                Some("a") => a += 1,
                Some("b") => {}
                other => panic!("unexpected pick {other:?}"),
            }
        }
        // 3:1 -> 3000 expected; binomial sd ~27.
        assert!((2850..=3150).contains(&a), "a picked {a} times");
    }

    #[test]
    fn all_zero_weights_or_no_backend_pick_nothing() {
        assert!(
            BackendSplit::new(&[weighted("z", Some(0))])
                .pick()
                .is_none()
        );
        assert!(BackendSplit::single("").pick().is_none());
        assert_eq!(
            BackendSplit::single("b")
                .pick()
                .map(|b| b.to_string())
                .as_deref(),
            Some("b")
        );
    }
}
