//! The watched targets and workloads: one `tokio::sync::watch` per target,
//! shared by all its watchers, and reverse maps from what a view was computed
//! from to the views, so a change recomputes only the views it affects.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use plexus_api::v1::ServerPolicy;
use plexus_core::memory;
use tokio::sync::watch;

use super::views::TargetView;
use super::{Lookup, ObjectRef};

/// What an apply/delete/reset changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub services: HashSet<ObjectRef>,
    pub ips: HashSet<IpAddr>,
    pub namespaces: HashSet<String>,
    pub pods: HashSet<ObjectRef>,
    /// Namespaces whose ReferenceGrants changed: backendRefs into them may
    /// resolve differently.
    pub grant_namespaces: HashSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.ips.is_empty()
            && self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.grant_namespaces.is_empty()
    }
}

/// What a target's view was computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Deps {
    pub services: Vec<ObjectRef>,
    pub ips: Vec<IpAddr>,
    /// Namespaces whose annotations, or whose ReferenceGrants, the view read.
    pub namespaces: Vec<String>,
}

#[derive(Debug)]
struct TargetWatch {
    tx: watch::Sender<Arc<TargetView>>,
    deps: Deps,
}

#[derive(Debug, Default)]
pub struct Watches {
    targets: HashMap<Lookup, TargetWatch>,
    by_service: HashMap<ObjectRef, HashSet<Lookup>>,
    by_ip: HashMap<IpAddr, HashSet<Lookup>>,
    by_namespace: HashMap<String, HashSet<Lookup>>,
    servers: HashMap<ObjectRef, watch::Sender<Arc<ServerPolicy>>>,
}

impl Watches {
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    pub fn subscribe_target(
        &mut self,
        lookup: &Lookup,
    ) -> Option<watch::Receiver<Arc<TargetView>>> {
        self.targets.get(lookup).map(|w| w.tx.subscribe())
    }

    pub fn insert_target(
        &mut self,
        lookup: Lookup,
        view: Arc<TargetView>,
        deps: Deps,
    ) -> watch::Receiver<Arc<TargetView>> {
        let (tx, rx) = watch::channel(view);
        self.link(&lookup, &deps);
        self.targets.insert(lookup, TargetWatch { tx, deps });
        rx
    }

    /// The watched lookups a change may affect.
    pub fn affected(&self, changes: &Changes) -> HashSet<Lookup> {
        let mut out = HashSet::new();
        for s in &changes.services {
            out.extend(self.by_service.get(s).into_iter().flatten().cloned());
        }
        for ip in &changes.ips {
            out.extend(self.by_ip.get(ip).into_iter().flatten().cloned());
        }
        for ns in changes.namespaces.iter().chain(&changes.grant_namespaces) {
            out.extend(self.by_namespace.get(ns).into_iter().flatten().cloned());
        }
        out
    }

    /// The current view and deps of a watched lookup; `None` when no one
    /// watches it any more (the watch is then dropped).
    pub fn current(&mut self, lookup: &Lookup) -> Option<Arc<TargetView>> {
        let watch = self.targets.get(lookup)?;
        if watch.tx.receiver_count() == 0 {
            self.remove_target(lookup);
            return None;
        }
        Some(watch.tx.borrow().clone())
    }

    /// Publishes a recomputed view (if it differs) and relinks its deps.
    pub fn update_target(&mut self, lookup: &Lookup, view: Arc<TargetView>, deps: Deps) {
        let Some(watch) = self.targets.get_mut(lookup) else {
            return;
        };
        watch.tx.send_if_modified(|current| {
            if current.same_content(&view) {
                false
            } else {
                *current = view;
                true
            }
        });
        if watch.deps != deps {
            let old = std::mem::replace(&mut watch.deps, deps.clone());
            self.unlink(lookup, &old);
            self.link(lookup, &deps);
        }
    }

    fn remove_target(&mut self, lookup: &Lookup) {
        if let Some(watch) = self.targets.remove(lookup) {
            self.unlink(lookup, &watch.deps);
        }
    }

    /// Drops the watches no one holds any more; whether there were any.
    pub fn sweep(&mut self) -> bool {
        let idle: Vec<Lookup> = self
            .targets
            .iter()
            .filter(|(_, w)| w.tx.receiver_count() == 0)
            .map(|(l, _)| l.clone())
            .collect();
        let servers = self.servers.len();
        let released = !idle.is_empty();
        for lookup in idle {
            self.remove_target(&lookup);
        }
        self.servers.retain(|_, tx| tx.receiver_count() > 0);
        memory::shrink_swept(&mut self.targets);
        memory::shrink_swept(&mut self.by_service);
        memory::shrink_swept(&mut self.by_ip);
        memory::shrink_swept(&mut self.by_namespace);
        memory::shrink_swept(&mut self.servers);
        released || self.servers.len() < servers
    }

    fn link(&mut self, lookup: &Lookup, deps: &Deps) {
        for s in &deps.services {
            self.by_service
                .entry(s.clone())
                .or_default()
                .insert(lookup.clone());
        }
        for ip in &deps.ips {
            self.by_ip.entry(*ip).or_default().insert(lookup.clone());
        }
        for ns in &deps.namespaces {
            self.by_namespace
                .entry(ns.clone())
                .or_default()
                .insert(lookup.clone());
        }
    }

    fn unlink(&mut self, lookup: &Lookup, deps: &Deps) {
        fn remove<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, HashSet<Lookup>>,
            key: &K,
            lookup: &Lookup,
        ) {
            if let Some(set) = map.get_mut(key) {
                set.remove(lookup);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        for s in &deps.services {
            remove(&mut self.by_service, s, lookup);
        }
        for ip in &deps.ips {
            remove(&mut self.by_ip, ip, lookup);
        }
        for ns in &deps.namespaces {
            remove(&mut self.by_namespace, ns, lookup);
        }
    }

    pub fn subscribe_server(
        &mut self,
        pod: &ObjectRef,
    ) -> Option<watch::Receiver<Arc<ServerPolicy>>> {
        self.servers.get(pod).map(watch::Sender::subscribe)
    }

    pub fn insert_server(
        &mut self,
        pod: ObjectRef,
        policy: Arc<ServerPolicy>,
    ) -> watch::Receiver<Arc<ServerPolicy>> {
        let (tx, rx) = watch::channel(policy);
        self.servers.insert(pod, tx);
        rx
    }

    /// Watched workloads a change may affect.
    pub fn affected_servers(&self, changes: &Changes) -> Vec<ObjectRef> {
        let mut out: Vec<ObjectRef> = changes
            .pods
            .iter()
            .filter(|pod| self.servers.contains_key(*pod))
            .cloned()
            .collect();
        if !changes.namespaces.is_empty() {
            out.extend(
                self.servers
                    .keys()
                    .filter(|pod| {
                        changes.namespaces.contains(&pod.namespace) && !changes.pods.contains(*pod)
                    })
                    .cloned(),
            );
        }
        out
    }

    pub fn update_server(&mut self, pod: &ObjectRef, policy: ServerPolicy) {
        let Some(tx) = self.servers.get(pod) else {
            return;
        };
        if tx.receiver_count() == 0 {
            self.servers.remove(pod);
            return;
        }
        tx.send_if_modified(|current| {
            if **current == policy {
                false
            } else {
                *current = Arc::new(policy);
                true
            }
        });
    }
}
