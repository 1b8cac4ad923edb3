//! A rule's weighted backends (a traffic split): a backend is drawn per
//! request in proportion to its weight; weight 0 gets nothing, no weight is 1.
//! A backend the controller could not resolve keeps its share, which the
//! proxy answers with 500 (Gateway API: an invalid backendRef's share fails).

use std::sync::Arc;

use plexus_api::v1 as proto;
use rand::Rng;

use super::routes::BackendFilters;

/// One backend of a split, as drawn.
#[derive(Debug)]
pub struct SplitBackend {
    /// A key of the target's backends (or, when unresolved, only a name for it).
    pub name: Arc<str>,
    /// Why the backendRef does not resolve; `None` when it does.
    pub unresolved: Option<Arc<str>>,
    /// The backendRef's own filters; `None` when it has none.
    pub filters: Option<Box<BackendFilters>>,
}

#[derive(Debug)]
pub struct BackendSplit {
    backends: Vec<(SplitBackend, u64)>,
    total: u64,
}

impl BackendSplit {
    /// The split of `backends` (at `field`); an error names the field of a
    /// backend's filter that does not compile.
    pub fn compile(
        backends: &[proto::WeightedBackend],
        field: &str,
    ) -> Result<BackendSplit, String> {
        let mut split = Vec::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            let filters =
                BackendFilters::compile(b.filters.as_ref(), &format!("{field}[{i}].filters"))?;
            let weight = u64::from(b.weight.unwrap_or(1));
            if weight == 0 {
                continue;
            }
            let backend = SplitBackend {
                name: Arc::from(b.backend.as_str()),
                unresolved: (!b.unresolved.is_empty()).then(|| Arc::from(b.unresolved.as_str())),
                filters,
            };
            split.push((backend, weight));
        }
        let total = split.iter().map(|(_, w)| w).sum();
        Ok(BackendSplit {
            backends: split,
            total,
        })
    }

    /// Whether a backend of the split has filters of its own.
    pub fn has_filters(&self) -> bool {
        self.backends.iter().any(|(b, _)| b.filters.is_some())
    }

    /// All traffic to `backend`; nothing at all when it is empty.
    pub fn single(backend: &str) -> BackendSplit {
        if backend.is_empty() {
            return BackendSplit {
                backends: Vec::new(),
                total: 0,
            };
        }
        let backend = SplitBackend {
            name: Arc::from(backend),
            unresolved: None,
            filters: None,
        };
        BackendSplit {
            backends: vec![(backend, 1)],
            total: 1,
        }
    }

    /// A backend drawn by weight; `None` when every weight is 0 (or none named).
    pub fn pick(&self) -> Option<&SplitBackend> {
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
            ..Default::default()
        }
    }

    fn split(backends: &[proto::WeightedBackend]) -> BackendSplit {
        BackendSplit::compile(backends, "backends").expect("a split without filters")
    }

    fn picked(split: &BackendSplit) -> Option<String> {
        split.pick().map(|b| b.name.to_string())
    }

    #[test]
    fn picks_follow_weights_and_skip_zero() {
        let weights = split(&[
            weighted("a", Some(3)),
            weighted("b", None),
            weighted("z", Some(0)),
        ]);
        let mut a = 0;
        for _ in 0..4000 {
            match picked(&weights).as_deref() {
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
        assert!(split(&[weighted("z", Some(0))]).pick().is_none());
        assert!(BackendSplit::single("").pick().is_none());
        assert_eq!(picked(&BackendSplit::single("b")).as_deref(), Some("b"));
    }

    #[test]
    fn an_unresolved_backend_keeps_its_share_and_says_why() {
        let gone = proto::WeightedBackend {
            unresolved: "BackendNotFound: Service shop/gone does not exist".into(),
            ..weighted("gone", Some(1))
        };
        let unresolved = split(&[gone]);
        let backend = unresolved.pick().expect("the unresolved backend is drawn");
        assert_eq!(
            backend.unresolved.as_deref(),
            Some("BackendNotFound: Service shop/gone does not exist")
        );
        let resolved = split(&[weighted("web", None)]);
        assert_eq!(resolved.pick().and_then(|b| b.unresolved.clone()), None);
    }
}
