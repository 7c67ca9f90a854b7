//! Compiled plugins cached on disk, so only the first run of a plugin compiles it.
//!
//! The key is the plugin's sha256 plus a hash of the engine's compatibility hash (wasmtime
//! version, target and every code-generation setting), so an upgrade or a config change misses
//! the cache instead of loading code compiled for something else. Each entry carries the sha256
//! of its own bytes, checked before loading: a truncated or altered file is recompiled, never
//! run.

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

const MAGIC: &[u8; 8] = b"ENGCWSM1";

impl CompileCache {
    /// `dir: None` turns caching off.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> CompileCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        CompileCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// The default location: `$ENGINE_CACHE_DIR`, else the user's cache directory.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("ENGINE_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("engine").join("compiled")))
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
        if let Some(component) = self.read_entry(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let compiled = engine.precompile_component(bytes)?;
        // SAFETY: these bytes come from `precompile_component` of this very engine, just now.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        let outcome = match write_entry(&path, &compiled) {
            Ok(()) => CacheOutcome::Compiled,
            Err(e) => {
                tracing::warn!("cannot write the compile cache at {}: {e}", path.display());
                CacheOutcome::CompiledUncached
            }
        };
        Ok((component, outcome))
    }

    fn read_entry(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let data = std::fs::read(path).ok()?;
        let (header, code) = data.split_at_checked(MAGIC.len() + 32)?;
        if &header[..MAGIC.len()] != MAGIC || header[MAGIC.len()..] != Sha256::digest(code)[..] {
            tracing::warn!("discarding damaged compile cache entry {}", path.display());
            return None;
        }
        // SAFETY: the entry was written by `write_entry` from `precompile_component` output of an
        // engine with the same compatibility hash (it is in the file name), and its checksum
        // matches, so these are the bytes this engine produced.
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
fn write_entry(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(MAGIC)?;
    file.write_all(&Sha256::digest(compiled))?;
    file.write_all(compiled)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The sha256 of plugin bytes, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
