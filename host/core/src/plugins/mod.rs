//! Where plugins come from: built into the `engine` binary, a `.wasm` file, an OCI registry
//! (`oci://`) or an `https://` URL, each pinned by sha256 (or by engine.lock).

mod download;
pub mod registry;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

pub use download::DownloadCache;

/// A first-party plugin compiled by `host/core/build.rs` and embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedPlugin {
    pub name: &'static str,
    /// `provider`, `strategy` or `health`, from the directory it was built from.
    pub kind: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/embedded_plugins.rs"));

/// Every built-in plugin.
pub fn embedded() -> &'static [EmbeddedPlugin] {
    EMBEDDED
}

/// Looks a built-in plugin up by name.
pub fn find_embedded(name: &str) -> Option<&'static EmbeddedPlugin> {
    EMBEDDED.iter().find(|p| p.name == name)
}

/// Why a plugin's bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read plugin '{plugin}' from {path}: {message}")]
    Read {
        plugin: String,
        path: String,
        message: String,
    },
    #[error(
        "plugin '{plugin}' ({path}) does not match its pinned sha256\n  expected: {expected}\n  actual:   {actual}\nIf you rebuilt or upgraded the plugin on purpose, update `sha256` in [plugins.{plugin}] (or, when engine.lock pins it, run `engine plugins lock --update`); otherwise the file was changed and should not be trusted."
    )]
    HashMismatch {
        plugin: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("`sha256` of plugin '{plugin}' must be 64 hexadecimal characters, got {value:?}")]
    BadPin { plugin: String, value: String },
    #[error("there is no built-in plugin named '{name}'; built-in plugins: {available}")]
    UnknownEmbedded { name: String, available: String },
    #[error(
        "plugin '{plugin}' ({source_text}) is not pinned: give it a `sha256` in [plugins.{plugin}], or run `engine plugins lock`"
    )]
    NotPinned { plugin: String, source_text: String },
    #[error("cannot fetch plugin '{plugin}' from {source_text}: {message}")]
    Fetch {
        plugin: String,
        source_text: String,
        message: String,
    },
    #[error(
        "plugin '{plugin}' from {source_text}: {what} does not match its digest\n  expected: {expected}\n  actual:   {actual}\nThe registry (or something between it and this machine) served other content than it names; nothing was loaded."
    )]
    DigestMismatch {
        plugin: String,
        source_text: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
}

/// Where to load a plugin from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A built-in plugin, by name.
    Embedded(String),
    /// A third-party plugin file, pinned by its sha256 (64 hex digits).
    File { path: PathBuf, sha256: String },
    /// A file loaded without a pin: only for `engine plugins inspect`, which shows the hash to
    /// pin, and `engine plugins lock`, which pins it.
    Unpinned(PathBuf),
    /// A component in an OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or `@sha256:…`).
    Registry(registry::RegistrySource),
    /// A component at an `https://` URL; None: not pinned yet (only `engine plugins lock`).
    Url { url: String, sha256: Option<String> },
}

/// A plugin's bytes, and for a registry source the manifest they came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Cow<'static, [u8]>,
    pub registry: Option<registry::Pulled>,
}

impl PluginSource {
    /// For people: `built-in`, the path or the URL.
    pub fn origin(&self) -> String {
        match self {
            PluginSource::Embedded(_) => "built-in".into(),
            PluginSource::File { path, .. } | PluginSource::Unpinned(path) => {
                path.display().to_string()
            }
            PluginSource::Registry(source) => source.to_string(),
            PluginSource::Url { url, .. } => url.clone(),
        }
    }

    /// The source as a pipeline (and engine.lock) writes it: a built-in's name, a path relative
    /// to the pipeline's directory `base` when it is under it, or the URL.
    pub fn lock_text(&self, base: &Path) -> String {
        match self {
            PluginSource::Embedded(name) => name.clone(),
            PluginSource::File { path, .. } | PluginSource::Unpinned(path) => {
                let relative = path.strip_prefix(base).unwrap_or(path);
                relative.to_string_lossy().replace('\\', "/")
            }
            PluginSource::Registry(source) => source.to_string(),
            PluginSource::Url { url, .. } => url.clone(),
        }
    }

    /// The plugin's bytes: read, or fetched (through `cache`, which keeps what was fetched by
    /// its sha256 so a pinned plugin loads while its registry is down).
    pub async fn fetch(&self, plugin: &str, cache: &DownloadCache) -> Result<Fetched, SourceError> {
        let bytes = match self {
            PluginSource::Embedded(name) => embedded_bytes(name)?,
            PluginSource::File { path, .. } | PluginSource::Unpinned(path) => {
                Cow::Owned(read_file(plugin, path)?)
            }
            PluginSource::Url { url, sha256 } => {
                Cow::Owned(download::fetch_url(plugin, url, sha256.as_deref(), cache).await?)
            }
            PluginSource::Registry(source) => {
                let (bytes, pulled) = registry::fetch(plugin, source, cache).await?;
                return Ok(Fetched {
                    bytes: Cow::Owned(bytes),
                    registry: Some(pulled),
                });
            }
        };
        Ok(Fetched {
            bytes,
            registry: None,
        })
    }

    /// The sha256 the bytes must have, if the source pins one.
    fn pin(&self) -> Option<&str> {
        match self {
            PluginSource::File { sha256, .. } => Some(sha256),
            PluginSource::Url { sha256, .. } => sha256.as_deref(),
            PluginSource::Registry(source) => source.sha256.as_deref(),
            PluginSource::Embedded(_) | PluginSource::Unpinned(_) => None,
        }
    }

    /// Refuses bytes whose sha256 is not the pinned one.
    pub fn verify(&self, plugin: &str, actual: &str) -> Result<(), SourceError> {
        let Some(pinned) = self.pin() else {
            return Ok(());
        };
        let expected = pinned.trim().to_ascii_lowercase();
        if !is_sha256_hex(&expected) {
            return Err(SourceError::BadPin {
                plugin: plugin.to_string(),
                value: pinned.to_string(),
            });
        }
        if expected != actual {
            return Err(SourceError::HashMismatch {
                plugin: plugin.to_string(),
                path: self.origin(),
                expected,
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

fn embedded_bytes(name: &str) -> Result<Cow<'static, [u8]>, SourceError> {
    find_embedded(name)
        .map(|p| Cow::Borrowed(p.bytes))
        .ok_or_else(|| SourceError::UnknownEmbedded {
            name: name.to_string(),
            available: EMBEDDED
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn read_file(plugin: &str, path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|e| SourceError::Read {
        plugin: plugin.to_string(),
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Whether a registry or URL host is this machine, the only place plugins are fetched from over
/// plain HTTP (a development or test server).
pub fn is_this_machine(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// 64 lowercase or uppercase hexadecimal digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}
