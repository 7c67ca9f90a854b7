//! Plugins in an OCI registry, as Wasm artifacts (the CNCF Wasm OCI artifact layout: one
//! `application/wasm` layer, a `application/vnd.wasm.config.v0+json` config), pulled and pushed
//! with `oci-client`.
//!
//! Nothing the registry says is trusted: the manifest must hash to the digest asked for (or that
//! the registry names), the layer to the manifest's digest for it, and the bytes to the pin
//! (engine.lock's or the pipeline's sha256). A tag is only a name: a pinned plugin is pulled by
//! its manifest digest, and where the tag points now is only looked up to tell that it moved.

use super::SourceError;
use super::download::{DownloadCache, MAX_PLUGIN_BYTES, error_chain};
use crate::runtime::cache::sha256_hex;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The layer media type of a Wasm component (CNCF Wasm OCI artifact layout).
pub const WASM_LAYER: &str = "application/wasm";
/// The config media type of a Wasm artifact (CNCF Wasm OCI artifact layout).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// `oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:HEX`, with what pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySource {
    /// As written after `oci://`.
    pub reference: String,
    /// The manifest digest to pull (`sha256:HEX`): the reference's own, or engine.lock's.
    pub manifest: Option<String>,
    /// The sha256 of the component's bytes: the pipeline's `sha256`, or engine.lock's.
    pub sha256: Option<String>,
}

/// What a pull found out besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The digest of the manifest the bytes came from.
    pub manifest: String,
    /// Where the reference's tag points now, when it has one and the registry answered;
    /// differs from `manifest` when the tag moved since the plugin was pinned.
    pub tag_now: Option<String>,
}

impl fmt::Display for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}", self.reference)
    }
}

impl RegistrySource {
    /// Parses what follows `oci://`; the error says what is wrong with it.
    pub fn parse(reference: &str) -> Result<RegistrySource, String> {
        let parsed = parse_reference(reference)?;
        Ok(RegistrySource {
            reference: reference.to_string(),
            manifest: parsed.digest().map(str::to_string),
            sha256: None,
        })
    }

    /// Whether the reference names a tag (which must be resolved to a digest and pinned).
    pub fn has_tag(&self) -> bool {
        parse_reference(&self.reference).is_ok_and(|r| r.digest().is_none())
    }
}

fn parse_reference(text: &str) -> Result<Reference, String> {
    if !text.contains('/') {
        return Err(format!(
            "`oci://{text}` names no registry; write oci://REGISTRY/REPOSITORY:TAG, such as oci://ghcr.io/acme/my-check:1.2.0"
        ));
    }
    text.parse::<Reference>().map_err(|e| {
        format!("`oci://{text}` is not a registry reference ({e}); write oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST")
    })
}

/// A client that speaks plain HTTP only to registries on this machine (a development or test
/// registry), HTTPS to every other.
fn client_for(reference: &Reference) -> Client {
    let registry = reference.resolve_registry().to_string();
    let host = registry
        .rsplit_once(':')
        .map_or(registry.as_str(), |(h, _)| h);
    let protocol = if super::is_this_machine(host) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        // A registry that does not answer must not hold every run up (the tag lookup happens
        // on each load of a tag-pinned plugin).
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

/// A digest as a registry writes it, `sha256:` and 64 hexadecimal digits; anything else a
/// registry sends is not used (it would be printed and stored).
fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(super::is_sha256_hex)
}

/// Where a layer is pulled into: refuses to grow past the layer's declared size, so a registry
/// cannot make the engine hold more than a plugin may be before the digest check.
struct BoundedBuffer {
    bytes: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for BoundedBuffer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.bytes.len() + data.len() > self.limit {
            let message = format!(
                "the registry sent more than the layer's {} bytes",
                self.limit
            );
            return Poll::Ready(Err(std::io::Error::other(message)));
        }
        self.bytes.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The component `source` names: from the cache when its sha256 is pinned and kept there (so a
/// registry that is down does not stop a pinned plugin), else pulled and checked.
pub(super) async fn fetch(
    plugin: &str,
    source: &RegistrySource,
    cache: &DownloadCache,
) -> Result<(Vec<u8>, Pulled), SourceError> {
    let failed = |message: String| SourceError::Fetch {
        plugin: plugin.to_string(),
        source_text: source.to_string(),
        message,
    };
    let reference = parse_reference(&source.reference).map_err(failed)?;
    let client = client_for(&reference);
    let tag_now = match (&source.manifest, reference.digest()) {
        // Pinned by engine.lock but written with a tag: see where the tag points now.
        (Some(_), None) => client
            .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
            .await
            .inspect_err(|e| tracing::debug!("cannot resolve {source}: {e}"))
            .ok()
            .filter(|digest| is_digest(digest)),
        _ => None,
    };
    if let (Some(manifest), Some(sha256)) = (&source.manifest, &source.sha256)
        && let Some(bytes) = cache.get(sha256)
    {
        let pulled = Pulled {
            manifest: manifest.clone(),
            tag_now,
        };
        return Ok((bytes, pulled));
    }
    let target = match &source.manifest {
        Some(digest) => Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest.clone(),
        ),
        None => reference.clone(),
    };
    let (manifest, digest) = pull_manifest(plugin, source, &client, &target).await?;
    let layer = wasm_layer(&manifest).map_err(failed)?;
    let mut buffer = BoundedBuffer {
        bytes: Vec::new(),
        // wasm_layer checked that the declared size fits.
        limit: usize::try_from(layer.size).unwrap_or(MAX_PLUGIN_BYTES),
    };
    client
        .pull_blob(&target, &layer, &mut buffer)
        .await
        .map_err(|e| pull_error(plugin, source, "the component layer", e))?;
    let bytes = buffer.bytes;
    check_digest(plugin, source, "the component layer", &layer.digest, &bytes)?;
    if source
        .sha256
        .as_deref()
        .is_none_or(|pin| pin.eq_ignore_ascii_case(&sha256_hex(&bytes)))
    {
        cache.put(&bytes);
    }
    let pulled = Pulled {
        manifest: digest,
        tag_now,
    };
    Ok((bytes, pulled))
}

/// The manifest at `target`, checked to hash to the digest it was asked by (or, for a tag, to the
/// digest the registry names for it).
async fn pull_manifest(
    plugin: &str,
    source: &RegistrySource,
    client: &Client,
    target: &Reference,
) -> Result<(OciImageManifest, String), SourceError> {
    let failed = |message: String| SourceError::Fetch {
        plugin: plugin.to_string(),
        source_text: source.to_string(),
        message,
    };
    let accepted = [
        oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    ];
    let (raw, named) = client
        .pull_manifest_raw(target, &RegistryAuth::Anonymous, &accepted)
        .await
        .map_err(|e| pull_error(plugin, source, "the manifest", e))?;
    let expected = target.digest().map_or(named, str::to_string);
    check_digest(plugin, source, "the manifest", &expected, &raw)?;
    let manifest: OciImageManifest = serde_json::from_slice(&raw)
        .map_err(|e| failed(format!("its manifest is not an OCI image manifest: {e}")))?;
    Ok((manifest, expected))
}

/// Why `what` could not be pulled; content that does not match its digest (oci-client checks
/// it too) is a [`SourceError::DigestMismatch`] whoever found it.
fn pull_error(
    plugin: &str,
    source: &RegistrySource,
    what: &'static str,
    error: OciDistributionError,
) -> SourceError {
    match error {
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            SourceError::DigestMismatch {
                plugin: plugin.to_string(),
                source_text: source.to_string(),
                what,
                expected,
                actual,
            }
        }
        error => SourceError::Fetch {
            plugin: plugin.to_string(),
            source_text: source.to_string(),
            message: format!("cannot pull {what}: {}", error_chain(&error)),
        },
    }
}

/// The one layer that holds the component.
fn wasm_layer(manifest: &OciImageManifest) -> Result<OciDescriptor, String> {
    let wasm: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| {
            l.media_type == WASM_LAYER
                || l.media_type == oci_client::manifest::WASM_LAYER_MEDIA_TYPE
        })
        .collect();
    match wasm.as_slice() {
        [layer] if usize::try_from(layer.size).is_ok_and(|s| s <= MAX_PLUGIN_BYTES) => {
            Ok((*layer).clone())
        }
        [layer] => Err(format!(
            "its layer is {} bytes, more than the {} MiB a plugin may be",
            layer.size,
            MAX_PLUGIN_BYTES >> 20
        )),
        [] => Err(format!(
            "it is not a Wasm artifact: no layer of media type {WASM_LAYER} (publish components with `engine plugins push`)"
        )),
        _ => Err("it has several Wasm layers; a plugin is one component".into()),
    }
}

/// Refuses content that does not hash to the digest (`sha256:HEX`) it is named by.
fn check_digest(
    plugin: &str,
    source: &RegistrySource,
    what: &'static str,
    digest: &str,
    content: &[u8],
) -> Result<(), SourceError> {
    let actual = format!("sha256:{}", sha256_hex(content));
    if digest.eq_ignore_ascii_case(&actual) {
        return Ok(());
    }
    Err(SourceError::DigestMismatch {
        plugin: plugin.to_string(),
        source_text: source.to_string(),
        what,
        expected: digest.to_string(),
        actual,
    })
}

/// What `engine plugins push` publishes, and where it went.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `oci://REGISTRY/REPOSITORY@sha256:…`: the reference that pins what was pushed.
    pub pinned: String,
    pub manifest_digest: String,
}

/// The component's own description, for the artifact's config (what Wasm tools read).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentDescription {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

/// Publishes `component` at `reference` (what follows `oci://`) as a Wasm artifact.
pub async fn push(
    reference: &str,
    component: Vec<u8>,
    description: ComponentDescription,
) -> Result<Pushed, String> {
    let target = parse_reference(reference)?;
    let layer_digest = format!("sha256:{}", sha256_hex(&component));
    let config = serde_json::json!({
        "created": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": description,
    });
    let config = Config::new(
        serde_json::to_vec(&config).expect("JSON"),
        WASM_CONFIG.to_string(),
        None,
    );
    let layers = [ImageLayer::new(component, WASM_LAYER.to_string(), None)];
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.artifact_type = Some(WASM_CONFIG.to_string());
    let client = client_for(&target);
    client
        .push(
            &target,
            &layers,
            config,
            &RegistryAuth::Anonymous,
            Some(manifest.clone()),
        )
        .await
        .map_err(|e| format!("cannot push to oci://{reference}: {}", error_chain(&e)))?;
    let manifest_digest = client
        .fetch_manifest_digest(&target, &RegistryAuth::Anonymous)
        .await
        .map_err(|e| {
            format!(
                "pushed, but cannot read back the digest of oci://{reference}: {}",
                error_chain(&e)
            )
        })?;
    let pinned = format!(
        "oci://{}/{}@{manifest_digest}",
        target.registry(),
        target.repository()
    );
    Ok(Pushed {
        pinned,
        manifest_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_needs_a_registry_and_a_digest_pins_it() {
        assert!(
            RegistrySource::parse("my-check:1")
                .unwrap_err()
                .contains("names no registry")
        );
        let tagged = RegistrySource::parse("localhost:5000/acme/check:1.2.0").unwrap();
        assert!(tagged.has_tag() && tagged.manifest.is_none());
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = RegistrySource::parse(&format!("ghcr.io/acme/check@{digest}")).unwrap();
        assert!(!pinned.has_tag());
        assert_eq!(pinned.manifest.as_deref(), Some(digest.as_str()));
        assert!(RegistrySource::parse("ghcr.io/Acme/check:1").is_err());
    }

    #[tokio::test]
    async fn a_layer_larger_than_declared_is_refused_while_it_arrives() {
        use tokio::io::AsyncWriteExt;
        let mut buffer = BoundedBuffer {
            bytes: Vec::new(),
            limit: 8,
        };
        buffer.write_all(b"12345678").await.unwrap();
        let err = buffer.write_all(b"9").await.unwrap_err();
        assert!(
            err.to_string().contains("more than the layer's 8 bytes"),
            "{err}"
        );
        assert_eq!(buffer.bytes, b"12345678");
    }

    #[test]
    fn only_a_sha256_digest_is_a_digest() {
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}\u{1b}", "a".repeat(63))));
        assert!(!is_digest("md5:abc"));
    }
}
