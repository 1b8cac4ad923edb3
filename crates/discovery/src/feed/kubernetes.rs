//! The Kubernetes feed: a kube-rs `runtime::watcher` per kind (it lists,
//! watches, relists after `410 Gone` and backs off on errors), its events
//! mapped to the index's `apply` / `delete` / `retain` / `refuse`.
//!
//! Routes and ReferenceGrants are watched [`Lenient`]ly: the cluster's Gateway API CRDs may be
//! newer than this build's types (a filter type they do not know), and a
//! typed watch would drop such an event, and fail every relist of the kind
//! (so `/ready` never). Core kinds are watched typed: the API server
//! validates them against the very schema their types are generated from.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::Readiness;
use super::decode::{decode_json, unreadable};
use crate::index::{IndexedResource, ObjectRef, ReferenceGrant, SharedIndex, Unreadable};

/// The kinds watched; `/ready` waits until each has been listed once.
const KINDS: usize = 7;

/// Watches every kind, and writes route statuses while `leading`, until the
/// process ends; `ready` is set once all kinds have completed their first list.
pub async fn run(
    client: Client,
    index: SharedIndex,
    ready: Readiness,
    leading: tokio::sync::watch::Receiver<bool>,
) {
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
            Api::<Lenient<HttpRoute>>::all(client.clone()),
            &index,
            on_synced.clone()
        ),
        watch(
            Api::<Lenient<GrpcRoute>>::all(client.clone()),
            &index,
            on_synced.clone()
        ),
        watch(
            Api::<Lenient<ReferenceGrant>>::all(client.clone()),
            &index,
            on_synced
        ),
        super::leading::while_leading(leading, "route status", || {
            super::route_status::run(client.clone(), index.clone())
        }),
    );
}

/// Events taken in one go when they are already waiting (a list, a burst of
/// changes): handled together under one span.
const MAX_BATCH: usize = 256;

/// What a watch yields: an object of kind `Self::Indexed`, read or not.
trait Watched: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static {
    type Indexed: IndexedResource;

    fn read(self) -> Result<Self::Indexed, Box<Unreadable>>;
}

impl<K> Watched for K
where
    K: IndexedResource + kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    type Indexed = K;

    fn read(self) -> Result<K, Box<Unreadable>> {
        Ok(self)
    }
}

async fn watch<W: Watched>(api: Api<W>, index: &SharedIndex, on_synced: impl Fn())
where
    W::DynamicType: Default,
{
    let kind = W::Indexed::KIND;
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
        .fuse();
    let mut state = KindState {
        listed: HashSet::new(),
        synced: false,
        not_served: NotServed::default(),
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
    not_served: NotServed,
}

impl KindState {
    fn handle<W: Watched>(
        &mut self,
        event: Result<Event<W>, watcher::Error>,
        index: &SharedIndex,
        on_synced: &impl Fn(),
    ) {
        let kind = W::Indexed::KIND;
        match event {
            Ok(Event::Apply(object)) => apply(index, object),
            Ok(Event::Delete(object)) => {
                let key = ObjectRef::of(object.meta());
                index.lock().delete::<W::Indexed>(&key);
            }
            Ok(Event::Init) => self.listed.clear(),
            Ok(Event::InitApply(object)) => {
                self.listed.insert(ObjectRef::of(object.meta()));
                apply(index, object);
            }
            Ok(Event::InitDone) => {
                index
                    .lock()
                    .retain::<W::Indexed>(&std::mem::take(&mut self.listed));
                tracing::debug!(%kind, "kubernetes feed: listed");
                if self.not_served.served() {
                    tracing::info!(%kind, "kubernetes feed: kind served now; its routes apply");
                }
                if !self.synced {
                    self.synced = true;
                    on_synced();
                }
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.code == 404
                    && matches!(
                        kind,
                        crate::index::Kind::HttpRoute
                            | crate::index::Kind::GrpcRoute
                            | crate::index::Kind::ReferenceGrant
                    ) =>
            {
                // Gateway API CRDs not installed: no routes, but do not hold
                // readiness. The watcher lists again with its backoff (at most
                // 30 s apart), so CRDs installed later are picked up.
                if self.not_served.remind(Instant::now()) {
                    tracing::warn!(%kind, "kubernetes feed: kind not served (Gateway API CRDs missing?); no routes until it is");
                }
                if !self.synced {
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

/// How often a kind that the API server does not serve is warned about:
/// once when found missing, then at most once per [`NotServed::REMIND`]
/// while it stays missing (the watcher asks again every few seconds).
#[derive(Debug, Default)]
struct NotServed {
    /// When it was last warned about; `None` while the kind is served.
    warned: Option<Instant>,
}

impl NotServed {
    const REMIND: Duration = Duration::from_secs(60);

    /// The kind was found missing at `now`: whether to warn.
    fn remind(&mut self, now: Instant) -> bool {
        let due = self
            .warned
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::REMIND);
        if due {
            self.warned = Some(now);
        }
        due
    }

    /// The kind was listed: whether it had been missing until now.
    fn served(&mut self) -> bool {
        self.warned.take().is_some()
    }
}

fn apply<W: Watched>(index: &SharedIndex, object: W) {
    match object.read() {
        Ok(object) => index.lock().apply(object),
        Err(object) => index.lock().refuse::<W::Indexed>(*object),
    }
}

/// A watched object of kind `K` that may not read into `K`: then it is
/// refused with every bad field named (the index keeps its served version),
/// where a typed watch would drop the event.
#[derive(Clone, Debug)]
pub enum Lenient<K> {
    Read(K),
    Unreadable(Box<Unreadable>),
}

impl<'de, K: IndexedResource + DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(match decode_json::<K>(&value) {
            Ok(object) => Lenient::Read(object),
            Err(errors) => Lenient::Unreadable(Box::new(unreadable(K::KIND, &value, errors))),
        })
    }
}

impl<K: kube::Resource<DynamicType = ()>> kube::Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Lenient::Read(object) => object.meta(),
            Lenient::Unreadable(object) => &object.meta,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Lenient::Read(object) => object.meta_mut(),
            Lenient::Unreadable(object) => &mut object.meta,
        }
    }
}

impl<K> Watched for Lenient<K>
where
    K: IndexedResource
        + kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    type Indexed = K;

    fn read(self) -> Result<K, Box<Unreadable>> {
        match self {
            Lenient::Read(object) => Ok(object),
            Lenient::Unreadable(object) => Err(object),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kind_is_warned_once_then_at_most_once_a_minute() {
        let start = Instant::now();
        let mut missing = NotServed::default();
        let warned: Vec<u64> = (0..=150)
            .filter(|second| missing.remind(start + Duration::from_secs(*second)))
            .collect();
        assert_eq!(warned, [0, 60, 120]);
        assert!(missing.served(), "served after being missing");
        assert!(!missing.served(), "said once");
        assert!(
            missing.remind(start + Duration::from_secs(151)),
            "missing again: warned at once"
        );
    }
}
