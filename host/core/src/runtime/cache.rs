//! Compiled plugins cached on disk, so only the first run of a plugin compiles it.
//!
//! The key is the plugin's sha256 plus a hash of the engine's compatibility hash (wasmtime
//! version, target and every code-generation setting), so an upgrade or a config change misses
//! the cache instead of loading code compiled for something else.
//!
//! An entry is native code that is loaded as is, so it is authenticated, not just checksummed:
//! each carries an HMAC-SHA256, under a key of this user's kept outside the cache
//! ([`CompileCache::key_path`]), of the engine key, the plugin's sha256 and the code. An entry
//! someone altered, truncated or copied from another plugin's name fails the check and is
//! recompiled from the plugin's own (pinned) bytes, never run. Grants that cover the cache or
//! the key are refused when a plugin loads.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled plugins are kept.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
    /// The authentication key; None (no key could be read or made) turns the cache off.
    key: Option<[u8; 32]>,
}

/// How a component was obtained, for `plugins list` and the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// Compiled and stored.
    Compiled,
    /// Compiled; the cache is off or could not be written.
    CompiledUncached,
}

const MAGIC: &[u8; 8] = b"ENGCWSM2";
const TAG_LEN: usize = 32;

impl CompileCache {
    /// `dir: None` turns caching off.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> CompileCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let key = dir
            .as_ref()
            .and_then(|_| match load_or_create_key(&Self::key_path()) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(
                        "compile cache off: cannot read or create its key {}: {e}",
                        Self::key_path().display()
                    );
                    None
                }
            });
        CompileCache {
            dir: dir.filter(|_| key.is_some()),
            engine_key: format!("{:016x}", hasher.finish()),
            key,
        }
    }

    /// The cache's key: `$ENGINE_CACHE_KEY_FILE`, else `engine/compile-cache.key` in the user's
    /// local data directory (not the cache directory, so whoever can write the cache cannot
    /// forge an entry).
    pub fn key_path() -> PathBuf {
        std::env::var_os("ENGINE_CACHE_KEY_FILE")
            .map(PathBuf::from)
            .or_else(|| dirs::data_local_dir().map(|d| d.join("engine").join("compile-cache.key")))
            .unwrap_or_else(|| std::env::temp_dir().join("engine-compile-cache.key"))
    }

    /// The tag that authenticates `code` as this engine's compilation of plugin `sha256`.
    fn tag(&self, sha256: &str, code: &[u8]) -> Option<[u8; TAG_LEN]> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_ref()?).ok()?;
        mac.update(self.engine_key.as_bytes());
        mac.update(sha256.as_bytes());
        mac.update(code);
        Some(mac.finalize().into_bytes().into())
    }

    /// The default location: `$ENGINE_CACHE_DIR`, else the user's cache directory.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("ENGINE_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("engine").join("compiled")))
    }

    /// What no grant may expose: the entries and the key.
    pub fn protected_paths(&self) -> Vec<crate::grants::ProtectedPath> {
        let protect = |path: PathBuf, what: &str| crate::grants::ProtectedPath {
            path,
            what: what.to_string(),
            unreadable: true,
        };
        let mut paths = vec![protect(Self::key_path(), "the compile cache's key")];
        paths.extend(self.dir.clone().map(|d| protect(d, "the compile cache")));
        paths
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry_path(&self, sha256: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{sha256}-{}.cwasm", self.engine_key)))
    }

    /// The compiled component for `bytes` (whose sha256 is `sha256`), from the cache or freshly
    /// compiled.
    pub fn load(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry_path(sha256) else {
            return Ok((
                Component::new(engine, bytes)?,
                CacheOutcome::CompiledUncached,
            ));
        };
        if let Some(component) = self.read_entry(engine, sha256, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let compiled = engine.precompile_component(bytes)?;
        // SAFETY: these bytes come from `precompile_component` of this very engine, just now.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        let tag = self
            .tag(sha256, &compiled)
            .expect("a cache with a directory has a key");
        let outcome = match write_entry(&path, &tag, &compiled) {
            Ok(()) => CacheOutcome::Compiled,
            Err(e) => {
                tracing::warn!("cannot write the compile cache at {}: {e}", path.display());
                CacheOutcome::CompiledUncached
            }
        };
        Ok((component, outcome))
    }

    fn read_entry(&self, engine: &Engine, sha256: &str, path: &Path) -> Option<Component> {
        let data = std::fs::read(path).ok()?;
        let (header, code) = data.split_at_checked(MAGIC.len() + TAG_LEN)?;
        let (magic, tag) = header.split_at(MAGIC.len());
        let authentic = self.tag(sha256, code).is_some_and(|expected| {
            use subtle::ConstantTimeEq;
            bool::from(expected.ct_eq(tag))
        });
        if magic != MAGIC || !authentic {
            tracing::warn!(
                "discarding compile cache entry {}: it was not written by this engine for this plugin (damaged or altered); recompiling",
                path.display()
            );
            return None;
        }
        // SAFETY: the entry's tag is an HMAC, under a key only this user's engine holds, of
        // `precompile_component` output of an engine with the same compatibility hash for this
        // very plugin, so these are the bytes this engine produced.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "discarding unusable compile cache entry {}: {e}",
                    path.display()
                );
                None
            }
        }
    }
}

/// Writes atomically: a temporary file in the same directory, then a rename, so a crash or a
/// concurrent engine never leaves a half-written entry.
fn write_entry(path: &Path, tag: &[u8; TAG_LEN], compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(MAGIC)?;
    file.write_all(tag)?;
    file.write_all(compiled)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Reads the key, or makes one (32 random bytes, mode 0600) if there is none yet.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path) {
        return bytes.try_into().map_err(|_| {
            std::io::Error::other("the key file is not 32 bytes; delete it to make a new one")
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key: [u8; 32] = rand::random();
    let mut file = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(Path::new(".")))?;
    file.write_all(&key)?;
    file.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // Another engine may have made one meanwhile: keep whichever is there first.
    match file.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(_) => std::fs::read(path)?
            .try_into()
            .map_err(|_| std::io::Error::other("the key file is not 32 bytes")),
    }
}

/// The sha256 of plugin bytes, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
