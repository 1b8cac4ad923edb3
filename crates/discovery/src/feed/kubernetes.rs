//! The Kubernetes feed: a kube-rs `runtime::watcher` per kind (it lists,
//! watches, relists after `410 Gone` and backs off on errors), its events
//! mapped to the index's `apply` / `delete` / `reset`.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{FutureExt, StreamExt};
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use super::Readiness;
use crate::index::{IndexedResource, ObjectRef, SharedIndex};

/// The kinds watched; `/ready` waits until each has been listed once.
const KINDS: usize = 6;

/// Watches every kind, and writes route statuses, until the process ends;
/// `ready` is set once all kinds have completed their first list.
pub async fn run(client: Client, index: SharedIndex, ready: Readiness) {
    let synced = Arc::new(AtomicUsize::new(0));
    let on_synced = move || {
        if synced.fetch_add(1, Ordering::AcqRel) + 1 == KINDS {
            tracing::info!("kubernetes feed: initial lists synced");
            ready.set_ready();
        }
    };
    tokio::join!(
        watch(
            Api::<Namespace>::all(client.clone()),
            &index,
            on_synced.clone()
        ),
        watch(
            Api::<Service>::all(client.clone()),
            &index,
            on_synced.clone()
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            &index,
            on_synced.clone()
        ),
        watch(Api::<Pod>::all(client.clone()), &index, on_synced.clone()),
        watch(
            Api::<HttpRoute>::all(client.clone()),
            &index,
            on_synced.clone()
        ),
        watch(Api::<GrpcRoute>::all(client.clone()), &index, on_synced),
        super::route_status::run(client, index.clone()),
    );
}

/// Events taken in one go when they are already waiting (a list, a burst of
/// changes): handled together under one span.
const MAX_BATCH: usize = 256;

async fn watch<K>(api: Api<K>, index: &SharedIndex, on_synced: impl Fn())
where
    K: IndexedResource + kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::KIND;
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
        .fuse();
    let mut state = KindState {
        listed: HashSet::new(),
        synced: false,
    };
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match events.next().now_or_never() {
                Some(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        let _span = tracing::info_span!(
            "plexus.feed.kubernetes.events",
            plexus.kind = %kind,
            plexus.events = batch.len() as i64,
        )
        .entered();
        for event in batch {
            state.handle(event, index, &on_synced);
        }
    }
}

/// One kind's progress through its list and watch.
struct KindState {
    /// Listed objects are applied as they arrive and only their keys kept, so
    /// a relist never holds every object of a kind in memory.
    listed: HashSet<ObjectRef>,
    synced: bool,
}

impl KindState {
    fn handle<K>(
        &mut self,
        event: Result<Event<K>, watcher::Error>,
        index: &SharedIndex,
        on_synced: &impl Fn(),
    ) where
        K: IndexedResource + kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let kind = K::KIND;
        match event {
            Ok(Event::Apply(object)) => index.lock().apply(object),
            Ok(Event::Delete(object)) => {
                let key = object.key();
                index.lock().delete::<K>(&key);
            }
            Ok(Event::Init) => self.listed.clear(),
            Ok(Event::InitApply(object)) => {
                self.listed.insert(object.key());
                index.lock().apply(object);
            }
            Ok(Event::InitDone) => {
                index.lock().retain::<K>(&std::mem::take(&mut self.listed));
                tracing::debug!(%kind, "kubernetes feed: listed");
                if !self.synced {
                    self.synced = true;
                    on_synced();
                }
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404
                    && matches!(
                        kind,
                        crate::index::Kind::HttpRoute | crate::index::Kind::GrpcRoute
                    ) =>
            {
                // Gateway API CRDs not installed: no routes, but do not hold readiness.
                if !self.synced {
                    tracing::warn!(%kind, "kubernetes feed: kind not served (Gateway API CRDs missing?); no routes until it is");
                    self.synced = true;
                    on_synced();
                }
            }
            Err(error) => {
                tracing::warn!(%kind, %error, "kubernetes feed: watch failed; retrying with backoff")
            }
        }
    }
}
