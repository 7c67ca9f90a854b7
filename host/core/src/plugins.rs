//! Where plugins come from: built into the `engine` binary, or a `.wasm` file pinned by sha256.

use std::borrow::Cow;
use std::path::PathBuf;

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
}

/// Where to load a plugin from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A built-in plugin, by name.
    Embedded(String),
    /// A third-party plugin file, pinned by its sha256 (64 hex digits).
    File { path: PathBuf, sha256: String },
    /// A file loaded without a pin: only for `engine plugins inspect`, which shows the hash to pin.
    Unpinned(PathBuf),
}

impl PluginSource {
    /// For people: `built-in` or the path.
    pub fn origin(&self) -> String {
        match self {
            PluginSource::Embedded(_) => "built-in".into(),
            PluginSource::File { path, .. } | PluginSource::Unpinned(path) => {
                path.display().to_string()
            }
        }
    }

    /// The source as a pipeline (and engine.lock) writes it: a built-in's name, or a path
    /// relative to the pipeline's directory `base` when it is under it.
    pub fn lock_text(&self, base: &std::path::Path) -> String {
        match self {
            PluginSource::Embedded(name) => name.clone(),
            PluginSource::File { path, .. } | PluginSource::Unpinned(path) => {
                let relative = path.strip_prefix(base).unwrap_or(path);
                relative.to_string_lossy().replace('\\', "/")
            }
        }
    }

    /// The plugin's bytes.
    pub fn read(&self, plugin: &str) -> Result<Cow<'static, [u8]>, SourceError> {
        match self {
            PluginSource::Embedded(name) => find_embedded(name)
                .map(|p| Cow::Borrowed(p.bytes))
                .ok_or_else(|| SourceError::UnknownEmbedded {
                    name: name.clone(),
                    available: EMBEDDED
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            PluginSource::File { path, .. } | PluginSource::Unpinned(path) => std::fs::read(path)
                .map(Cow::Owned)
                .map_err(|e| SourceError::Read {
                    plugin: plugin.to_string(),
                    path: path.display().to_string(),
                    message: e.to_string(),
                }),
        }
    }

    /// Refuses a file whose sha256 is not the pinned one.
    pub fn verify(&self, plugin: &str, actual: &str) -> Result<(), SourceError> {
        let PluginSource::File { path, sha256 } = self else {
            return Ok(());
        };
        let expected = sha256.trim().to_ascii_lowercase();
        if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SourceError::BadPin {
                plugin: plugin.to_string(),
                value: sha256.clone(),
            });
        }
        if expected != actual {
            return Err(SourceError::HashMismatch {
                plugin: plugin.to_string(),
                path: path.display().to_string(),
                expected,
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}
