//! Where the CA lives: the Secret `plexus-ca` in a cluster, a directory
//! outside one. Either is created once if absent, and every later start (and
//! every other replica) loads the same CA.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use plexus_identity::{Ca, CaError, CaMaterial};
use tokio::sync::watch;

/// The Secret holding the CA, in the controller's namespace.
pub use plexus_core::CA_SECRET;
/// Keys in the Secret, and file names in the CA directory.
pub const CERTIFICATE_KEY: &str = "tls.crt";
pub const PRIVATE_KEY_KEY: &str = "tls.key";
pub const TRUST_ANCHOR_KEY: &str = plexus_core::CA_TRUST_ANCHOR_KEY;

/// Lifetime of a CA the controller makes itself.
pub const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How to make the CA when none exists yet.
#[derive(Clone)]
pub struct CaSettings {
    pub trust_domain: String,
    pub lifetime: Duration,
    /// A user's root (certificate PEM, PKCS#8 key PEM): the controller makes
    /// an intermediate under it instead of its own root.
    pub user_root: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    #[error("Secret {CA_SECRET}: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {CA_SECRET}: key {0} is missing or not UTF-8")]
    MissingKey(&'static str),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("CA: {0}")]
    Ca(#[from] CaError),
}

/// How often a follower looks for the leader's CA Secret.
const FOLLOWER_POLL: Duration = Duration::from_secs(1);

fn create(settings: &CaSettings) -> Result<Ca, CaError> {
    match &settings.user_root {
        Some((cert, key)) => {
            Ca::new_intermediate(&settings.trust_domain, cert, key, settings.lifetime)
        }
        None => Ca::new_root(&settings.trust_domain, settings.lifetime),
    }
}

/// Loads the CA from the Secret `plexus-ca` in `namespace`; only the leading
/// replica creates it when absent (a follower waits until it exists or it
/// leads). A create that still races (the Lease changed hands) answers 409
/// Conflict, and the loser loads the winner's CA instead of its own.
pub async fn ca_from_secret(
    client: kube::Client,
    namespace: &str,
    settings: &CaSettings,
    mut leading: watch::Receiver<bool>,
) -> Result<Ca, CaStoreError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    for attempt in 0.. {
        if let Some(secret) = secrets.get_opt(CA_SECRET).await? {
            return Ok(Ca::from_material(&material_of(&secret)?)?);
        }
        if *leading.borrow_and_update() {
            break;
        }
        if attempt == 0 {
            tracing::info!("waiting for the leading replica to create Secret {CA_SECRET}");
        }
        tokio::select! {
            // A closed channel never changes again: only the poll remains.
            Ok(()) = leading.changed() => {}
            () = tokio::time::sleep(FOLLOWER_POLL) => {}
        }
    }
    let ca = create(settings)?;
    match secrets
        .create(&PostParams::default(), &secret_of(ca.material()))
        .await
    {
        Ok(_) => Ok(ca),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!("another controller created Secret {CA_SECRET} first; using its CA");
            let secret = secrets.get(CA_SECRET).await?;
            Ok(Ca::from_material(&material_of(&secret)?)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn secret_of(material: &CaMaterial) -> Secret {
    let data = [
        (CERTIFICATE_KEY, &material.certificate_pem),
        (PRIVATE_KEY_KEY, &material.key_pem),
        (TRUST_ANCHOR_KEY, &material.trust_anchor_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.clone().into_bytes())))
    .collect::<BTreeMap<_, _>>();
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn material_of(secret: &Secret) -> Result<CaMaterial, CaStoreError> {
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .ok_or(CaStoreError::MissingKey(key))
    };
    Ok(CaMaterial {
        certificate_pem: get(CERTIFICATE_KEY)?,
        key_pem: get(PRIVATE_KEY_KEY)?,
        trust_anchor_pem: get(TRUST_ANCHOR_KEY)?,
    })
}

/// Loads the CA from `dir` (`tls.crt`, `tls.key`, `ca.crt`), creating it if
/// absent. The key is written 0600; each file is written to a temporary name
/// and renamed, and the key last, so a crash never leaves a half CA that
/// would be loaded later.
pub fn ca_from_dir(dir: &Path, settings: &CaSettings) -> Result<Ca, CaStoreError> {
    let path = |name: &str| dir.join(name);
    let file_error = |p: &Path| {
        let path = p.display().to_string();
        move |source| CaStoreError::File { path, source }
    };
    let key_path = path(PRIVATE_KEY_KEY);
    if key_path.exists() {
        let read = |name: &str| {
            let p = path(name);
            std::fs::read_to_string(&p).map_err(file_error(&p))
        };
        return Ok(Ca::from_material(&CaMaterial {
            certificate_pem: read(CERTIFICATE_KEY)?,
            key_pem: read(PRIVATE_KEY_KEY)?,
            trust_anchor_pem: read(TRUST_ANCHOR_KEY)?,
        })?);
    }
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let ca = create(settings)?;
    let material = ca.material();
    for (name, contents, mode) in [
        (CERTIFICATE_KEY, &material.certificate_pem, 0o644),
        (TRUST_ANCHOR_KEY, &material.trust_anchor_pem, 0o644),
        (PRIVATE_KEY_KEY, &material.key_pem, 0o600),
    ] {
        let target = path(name);
        let temporary = path(&format!(".{name}.tmp"));
        write_file(&temporary, contents.as_bytes(), mode).map_err(file_error(&temporary))?;
        std::fs::rename(&temporary, &target).map_err(file_error(&target))?;
    }
    Ok(ca)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_api::{ApiStandIn, Reply};
    use std::sync::Mutex;

    fn settings() -> CaSettings {
        CaSettings {
            trust_domain: "td".into(),
            lifetime: Duration::from_secs(3600),
            user_root: None,
        }
    }

    fn secret_json(material: &CaMaterial) -> serde_json::Value {
        let mut value = serde_json::to_value(secret_of(material)).unwrap();
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        value["metadata"]["namespace"] = "plexus".into();
        value
    }

    fn leading() -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    #[tokio::test]
    async fn creates_the_secret_once_and_then_loads_it() {
        let stored: Mutex<Option<serde_json::Value>> = Mutex::new(None);
        let path = "/api/v1/namespaces/plexus/secrets";
        let server = ApiStandIn::start(move |method, uri, body| {
            let mut stored = stored.lock().unwrap();
            match (method.as_str(), uri) {
                ("GET", p) if p == format!("{path}/{CA_SECRET}") => match &*stored {
                    Some(secret) => Reply::json(200, secret.clone()),
                    None => Reply::status(404, "NotFound"),
                },
                ("POST", p) if p == path => {
                    let secret: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    *stored = Some(secret.clone());
                    Reply::json(201, secret)
                }
                other => panic!("unexpected request {other:?}"),
            }
        })
        .await;
        let first = ca_from_secret(server.client(), "plexus", &settings(), leading())
            .await
            .unwrap();
        let second = ca_from_secret(server.client(), "plexus", &settings(), leading())
            .await
            .unwrap();
        assert_eq!(first.material(), second.material());
    }

    /// An API server whose first GET finds no CA Secret and every later one
    /// finds `ca`'s (another replica created it meanwhile); `other` answers
    /// every other method.
    async fn secret_appearing(
        ca: &Ca,
        other: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> ApiStandIn {
        let theirs = secret_json(ca.material());
        let gets = Mutex::new(0);
        ApiStandIn::start(move |method, _, _| match method.as_str() {
            "GET" => {
                let mut gets = gets.lock().unwrap();
                *gets += 1;
                if *gets == 1 {
                    Reply::status(404, "NotFound")
                } else {
                    Reply::json(200, theirs.clone())
                }
            }
            method => other(method),
        })
        .await
    }

    #[tokio::test]
    async fn a_replica_that_loses_the_race_uses_the_winners_ca() {
        let winner = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        // The create conflicts: the other replica created it meanwhile.
        let server = secret_appearing(&winner, |method| match method {
            "POST" => Reply::status(409, "AlreadyExists"),
            other => panic!("unexpected {other}"),
        })
        .await;
        let ca = ca_from_secret(server.client(), "plexus", &settings(), leading())
            .await
            .unwrap();
        assert_eq!(ca.material(), winner.material());
    }

    #[tokio::test]
    async fn a_follower_never_creates_and_loads_the_leaders_secret() {
        let leaders = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let server = secret_appearing(&leaders, |other| panic!("a follower sent {other}")).await;
        let (_elected, following) = watch::channel(false);
        let ca = ca_from_secret(server.client(), "plexus", &settings(), following)
            .await
            .unwrap();
        assert_eq!(ca.material(), leaders.material());
    }

    #[test]
    fn a_ca_directory_is_created_once() {
        let dir = std::env::temp_dir().join(format!(
            "plexus-ca-dir-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let first = ca_from_dir(&dir, &settings()).unwrap();
        let second = ca_from_dir(&dir, &settings()).unwrap();
        assert_eq!(first.material(), second.material());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(PRIVATE_KEY_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_user_root_yields_an_intermediate() {
        let root = Ca::new_root("td", Duration::from_secs(3600)).unwrap();
        let ca = create(&CaSettings {
            user_root: Some((
                root.material().certificate_pem.clone(),
                root.material().key_pem.clone(),
            )),
            ..settings()
        })
        .unwrap();
        assert_eq!(ca.trust_anchor(), root.trust_anchor());
        assert_eq!(ca.chain().len(), 1);
    }
}
