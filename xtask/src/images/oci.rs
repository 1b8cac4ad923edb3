//! An image as an `oci-archive`: the OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) in one tar, as `skopeo copy oci-archive:…` and
//! `kind load image-archive` read it. One layer, one manifest, one platform.

use std::collections::HashMap;

use anyhow::{Context, Result};
use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, DescriptorBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os,
    RootFsBuilder,
};

use super::tree::{CompressedLayer, FileTree, sha256};

/// How a container of the image starts.
pub struct RunConfig {
    pub user: String,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub exposed_ports: Vec<String>,
}

/// `value` as JSON with every object's keys sorted. oci-spec keeps maps
/// (exposed ports, annotations) in `HashMap`s, whose order changes from one
/// build to the next, and digests are of the bytes: unsorted, the same image
/// got another config digest each time.
fn canonical_json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|(a, _), (b, _)| a.cmp(b));
                entries.into_iter().map(|(k, v)| (k, sorted(v))).collect()
            }
            serde_json::Value::Array(items) => items.into_iter().map(sorted).collect(),
            other => other,
        }
    }
    let value = serde_json::to_value(value).context("an OCI document as JSON")?;
    Ok(serde_json::to_vec(&sorted(value))?)
}

/// An archive's bytes and what the build prints about it.
pub struct Archive {
    pub bytes: Vec<u8>,
    pub manifest_digest: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

/// The archive of one image whose root filesystem is `layer`, tagged `tag` in its
/// index; every timestamp is `mtime` (SOURCE_DATE_EPOCH).
pub fn archive(run: &RunConfig, layer: &CompressedLayer, tag: &str, mtime: u64) -> Result<Archive> {
    let config = ImageConfigurationBuilder::default()
        .created(rfc3339(mtime))
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .user(run.user.clone())
                .entrypoint(run.entrypoint.clone())
                .env(run.env.clone())
                .exposed_ports(run.exposed_ports.clone())
                .working_dir("/".to_string())
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers".to_string())
                .diff_ids(vec![layer.diff_id.clone()])
                .build()?,
        )
        .build()?;
    let config_json = canonical_json(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_json)?)
        .layers(vec![descriptor_of(
            MediaType::ImageLayerGzip,
            layer.gzip.len(),
            &layer.digest,
        )?])
        .build()?;
    let manifest_json = canonical_json(&manifest)?;
    let mut manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest_json)?;
    manifest_descriptor.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_string(),
        tag.to_string(),
    )])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()?;

    let mut layout = FileTree::default();
    layout.file(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        0o644,
    )?;
    layout.file("index.json", canonical_json(&index)?, 0o644)?;
    for (digest, bytes) in [
        (sha256(&config_json), config_json),
        (sha256(&manifest_json), manifest_json.clone()),
        (layer.digest.clone(), layer.gzip.clone()),
    ] {
        layout.file(&blob_path(&digest), bytes, 0o644)?;
    }
    Ok(Archive {
        bytes: layout.tar(mtime)?,
        manifest_digest: sha256(&manifest_json),
        compressed_size: layer.gzip.len() as u64,
        uncompressed_size: layer.uncompressed_size,
    })
}

fn descriptor(media_type: MediaType, bytes: &[u8]) -> Result<Descriptor> {
    descriptor_of(media_type, bytes.len(), &sha256(bytes))
}

fn descriptor_of(media_type: MediaType, size: usize, digest: &str) -> Result<Descriptor> {
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .size(size as u64)
        .digest(
            digest
                .parse::<oci_spec::image::Digest>()
                .context("a sha256 digest")?,
        )
        .build()?)
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// `seconds` since the epoch as RFC 3339 UTC (the config's `created`), without a
/// date crate: days to a civil date by Howard Hinnant's algorithm.
fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

    use super::*;

    fn run_config() -> RunConfig {
        RunConfig {
            user: "2102:2102".to_string(),
            entrypoint: vec!["/usr/local/bin/tool".to_string()],
            env: vec!["PATH=/usr/bin".to_string()],
            // Several: oci-spec holds them in a HashMap, whose order varies.
            exposed_ports: ["8080/tcp", "15001/tcp", "15006/tcp", "15020/tcp"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn sample_layer() -> CompressedLayer {
        let mut tree = FileTree::default();
        tree.file("usr/local/bin/tool", b"tool".to_vec(), 0o755)
            .unwrap();
        tree.layer(0).unwrap()
    }

    fn files(archive: &Archive) -> HashMap<String, Vec<u8>> {
        let mut files = HashMap::new();
        for entry in tar::Archive::new(archive.bytes.as_slice())
            .entries()
            .unwrap()
        {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(entry.path().unwrap().to_string_lossy().into_owned(), data);
        }
        files
    }

    #[test]
    fn the_index_manifest_and_config_reference_each_other_by_digest() {
        let layer = sample_layer();
        let archive = archive(&run_config(), &layer, "1.2.3", 0).unwrap();
        let files = files(&archive);
        let index = ImageIndex::from_reader(files["index.json"].as_slice()).unwrap();
        let entry = &index.manifests()[0];
        assert_eq!(entry.digest().to_string(), archive.manifest_digest);
        assert_eq!(
            entry.annotations().as_ref().unwrap()[ANNOTATION_REF_NAME],
            "1.2.3"
        );
        let manifest_bytes = &files[&blob_path(&archive.manifest_digest)];
        assert_eq!(entry.size(), manifest_bytes.len() as u64);
        let manifest = ImageManifest::from_reader(manifest_bytes.as_slice()).unwrap();
        assert_eq!(manifest.layers()[0].digest().to_string(), layer.digest);
        assert_eq!(files[&blob_path(&layer.digest)], layer.gzip);
        let config_bytes = &files[&blob_path(manifest.config().digest().as_ref())];
        assert_eq!(sha256(config_bytes), manifest.config().digest().to_string());
        let config = ImageConfiguration::from_reader(config_bytes.as_slice()).unwrap();
        assert_eq!(
            config.rootfs().diff_ids(),
            std::slice::from_ref(&layer.diff_id)
        );
        assert_eq!(
            config.config().as_ref().unwrap().user().as_deref(),
            Some("2102:2102")
        );
        assert_eq!(config.created().as_deref(), Some("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn building_twice_gives_identical_archives() {
        let first = archive(&run_config(), &sample_layer(), "1.2.3", 42).unwrap();
        for _ in 0..10 {
            let again = archive(&run_config(), &sample_layer(), "1.2.3", 42).unwrap();
            assert_eq!(first.manifest_digest, again.manifest_digest);
            assert_eq!(first.bytes, again.bytes);
        }
    }

    #[test]
    fn created_is_the_utc_date_of_the_epoch_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_774_896), "2025-12-03T15:14:56Z");
    }
}
