//! `engine.lock`: what each plugin of a pipeline is (its source, the sha256 of its code, its WIT
//! version) and what it may do (the capabilities it declared and those the pipeline granted),
//! as they were when `engine plugins lock` wrote it. Checked in beside pipeline.toml, it pins
//! plugin files (their `sha256` becomes optional) and lets `--locked` refuse an upgrade that
//! changes the code or asks for more than was accepted.

use crate::runtime::LoadedPlugin;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The lock file's name, beside the pipeline file.
pub const FILE_NAME: &str = "engine.lock";

/// The format this engine writes and reads.
const FORMAT_VERSION: u32 = 1;

const HEADER: &str = "# engine.lock: the plugins this pipeline runs, their code and what they may do.\n\
# Written by `engine plugins lock`; check it in. `engine run --locked` refuses a plugin whose\n\
# code or capabilities differ from what is recorded here; `engine plugins lock --update` accepts\n\
# a change after showing it.\n";

/// The whole file: the plugins of the pipeline without `--env`, and of each environment locked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, LockedPlugin>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, EnvironmentLock>,
}

/// The plugins locked for one environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentLock {
    #[serde(default)]
    pub plugins: BTreeMap<String, LockedPlugin>,
}

/// One plugin as locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPlugin {
    /// The source as the pipeline writes it: a built-in's name, a path relative to the
    /// pipeline's directory, or a URL.
    pub source: String,
    /// The sha256 of the component's bytes.
    pub sha256: String,
    /// For a registry source: the digest of the manifest its tag pointed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `provider`, `strategy` or `health`.
    pub kind: String,
    /// The WIT version the plugin was built against.
    pub wit: String,
    /// The plugin's own version (what its `info` says; not checked).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// What the plugin declared it needs.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub declared: Capabilities,
    /// What the pipeline granted it, of what it declared: what it actually gets.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub granted: Capabilities,
}

/// Capabilities in a comparable form: every list sorted, secrets with the destinations their
/// values may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Directories by path inside the sandbox, `true` when writable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dirs: BTreeMap<String, bool>,
    /// Secrets by name; for granted ones, the destinations their values may be sent to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Vec<String>>,
}

/// Why a lock file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "{path} is not a lock file this engine understands: {message}\nIt is written by `engine plugins lock`; delete it and run that again to recreate it."
    )]
    Malformed { path: String, message: String },
    #[error(
        "{path} has format version {found}; this engine reads version {FORMAT_VERSION}\nUpgrade the engine, or recreate the lock with `engine plugins lock --update`."
    )]
    Version { path: String, found: u32 },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

impl LockFile {
    /// The lock file beside a pipeline whose directory is `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads the lock beside the pipeline, if there is one.
    pub fn read(dir: &Path) -> Result<Option<LockFile>, LockFileError> {
        let path = Self::path_in(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LockFileError::Read {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        Self::parse(&path.display().to_string(), &text).map(Some)
    }

    /// Parses a lock file's text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<LockFile, LockFileError> {
        let lock: LockFile = toml::from_str(text).map_err(|e| LockFileError::Malformed {
            path: path.to_string(),
            message: e.message().to_string(),
        })?;
        if lock.version != FORMAT_VERSION {
            return Err(LockFileError::Version {
                path: path.to_string(),
                found: lock.version,
            });
        }
        Ok(lock)
    }

    /// An empty lock of this engine's format.
    pub fn new() -> LockFile {
        LockFile {
            version: FORMAT_VERSION,
            ..LockFile::default()
        }
    }

    /// The plugins locked for an environment (`None`: the pipeline without `--env`).
    pub fn section(&self, environment: Option<&str>) -> Option<&BTreeMap<String, LockedPlugin>> {
        match environment {
            None => Some(&self.plugins),
            Some(env) => self.environments.get(env).map(|e| &e.plugins),
        }
    }

    /// Replaces the plugins locked for an environment.
    pub fn set_section(
        &mut self,
        environment: Option<&str>,
        plugins: BTreeMap<String, LockedPlugin>,
    ) {
        match environment {
            None => self.plugins = plugins,
            Some(env) => {
                self.environments
                    .insert(env.to_string(), EnvironmentLock { plugins });
            }
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let body = toml::to_string_pretty(self).expect("a lock file serializes");
        format!("{HEADER}\n{body}")
    }

    /// Writes the lock beside the pipeline, atomically (a crash leaves the old file or the new).
    pub fn write(&self, dir: &Path) -> Result<PathBuf, LockFileError> {
        let path = Self::path_in(dir);
        let error = |e: std::io::Error| LockFileError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
        std::io::Write::write_all(&mut file, self.to_text().as_bytes()).map_err(error)?;
        file.persist(&path).map_err(|e| error(e.error))?;
        Ok(path)
    }
}

impl LockedPlugin {
    /// What a loaded plugin is and may do, with its source as the pipeline writes it.
    pub fn of(plugin: &LoadedPlugin, source: String, digest: Option<String>) -> LockedPlugin {
        LockedPlugin {
            source,
            sha256: plugin.sha256().to_string(),
            digest,
            kind: plugin.kind().as_str().to_string(),
            wit: plugin.wit_version().to_string(),
            version: plugin.info().version.clone(),
            declared: Capabilities::declared(&plugin.info().capabilities),
            granted: plugin.granted().clone(),
        }
    }

    /// How `now` differs from what was locked; empty when it does not.
    pub fn differences(&self, now: &LockedPlugin) -> Vec<Difference> {
        let mut found = Vec::new();
        if self.source != now.source {
            found.push(Difference::Source {
                locked: self.source.clone(),
                now: now.source.clone(),
            });
        }
        if let (Some(locked), Some(now)) = (&self.digest, &now.digest)
            && locked != now
        {
            found.push(Difference::Digest {
                locked: locked.clone(),
                now: now.clone(),
            });
        }
        if self.sha256 != now.sha256 {
            found.push(Difference::Code {
                locked: self.sha256.clone(),
                now: now.sha256.clone(),
            });
        }
        if self.wit != now.wit || self.kind != now.kind {
            found.push(Difference::Contract {
                locked: format!("{} @{}", self.kind, self.wit),
                now: format!("{} @{}", now.kind, now.wit),
            });
        }
        found.extend(capability_changes(
            "declares",
            &self.declared,
            &now.declared,
        ));
        found.extend(capability_changes(
            "is granted",
            &self.granted,
            &now.granted,
        ));
        found
    }
}

impl Capabilities {
    /// What a plugin's `info` declares.
    pub fn declared(c: &crate::runtime::info::Capabilities) -> Capabilities {
        let (tcp, http): (Vec<String>, Vec<String>) = c
            .http
            .iter()
            .cloned()
            .partition(|p| p.starts_with("tcp://"));
        Capabilities {
            http: sorted(http),
            tcp: sorted(tcp),
            env: sorted(c.env.clone()),
            dirs: c
                .dirs
                .iter()
                .map(|d| (d.path.clone(), d.writable))
                .collect(),
            secrets: c.secrets.iter().map(|s| (s.clone(), Vec::new())).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &Capabilities::default()
    }

    /// Each capability as one line, sorted, for people.
    pub fn lines(&self) -> Vec<String> {
        self.items().into_iter().collect()
    }

    /// Each capability as one line (`http https://api.example.com`, `dir /out (writable)`,
    /// `secret token → https://api.example.com`), for comparing and showing.
    fn items(&self) -> BTreeSet<String> {
        let mut items = BTreeSet::new();
        items.extend(self.http.iter().map(|p| format!("http {p}")));
        items.extend(self.tcp.iter().map(|p| format!("tcp {p}")));
        items.extend(self.env.iter().map(|v| format!("env {v}")));
        items.extend(self.dirs.iter().map(|(path, writable)| {
            let access = if *writable { "writable" } else { "read-only" };
            format!("dir {path} ({access})")
        }));
        items.extend(self.secrets.iter().map(|(name, hosts)| {
            if hosts.is_empty() {
                format!("secret {name}")
            } else {
                format!("secret {name} → {}", hosts.join(", "))
            }
        }));
        items
    }
}

/// The items sorted, each once: the comparable form of a capability list.
pub(crate) fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items.dedup();
    items
}

fn capability_changes(
    verb: &'static str,
    locked: &Capabilities,
    now: &Capabilities,
) -> Vec<Difference> {
    let (locked, now) = (locked.items(), now.items());
    let added: Vec<String> = now.difference(&locked).cloned().collect();
    let removed: Vec<String> = locked.difference(&now).cloned().collect();
    let mut found = Vec::new();
    if !added.is_empty() {
        found.push(Difference::Added { verb, items: added });
    }
    if !removed.is_empty() {
        found.push(Difference::Removed {
            verb,
            items: removed,
        });
    }
    found
}

/// One way a plugin differs from its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Source {
        locked: String,
        now: String,
    },
    Digest {
        locked: String,
        now: String,
    },
    Code {
        locked: String,
        now: String,
    },
    Contract {
        locked: String,
        now: String,
    },
    /// Capabilities it declares (or is granted) now that the lock does not record.
    Added {
        verb: &'static str,
        items: Vec<String>,
    },
    /// Capabilities the lock records that it no longer declares (or is granted).
    Removed {
        verb: &'static str,
        items: Vec<String>,
    },
}

impl Difference {
    /// Whether this difference widens what the plugin may do (new code counts: it may use
    /// what it has differently).
    pub fn widens(&self) -> bool {
        !matches!(self, Difference::Removed { .. } | Difference::Source { .. })
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Source { locked, now } => {
                write!(f, "source: locked {locked}, now {now}")
            }
            Difference::Digest { locked, now } => write!(
                f,
                "the registry's tag now points at another manifest: locked {locked}, now {now}"
            ),
            Difference::Code { locked, now } => {
                write!(f, "code (sha256): locked {locked}, now {now}")
            }
            Difference::Contract { locked, now } => {
                write!(f, "kind and WIT version: locked {locked}, now {now}")
            }
            Difference::Added { verb, items } => {
                write!(f, "now {verb} what the lock does not record:")?;
                items.iter().try_for_each(|i| write!(f, "\n  + {i}"))
            }
            Difference::Removed { verb, items } => {
                write!(f, "no longer {verb}:")?;
                items.iter().try_for_each(|i| write!(f, "\n  - {i}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> LockedPlugin {
        LockedPlugin {
            source: "plugins/check.wasm".into(),
            sha256: "a".repeat(64),
            digest: None,
            kind: "health".into(),
            wit: "0.1.1".into(),
            version: "1.0.0".into(),
            declared: Capabilities {
                http: vec!["https://*".into()],
                dirs: BTreeMap::from([("/out".into(), true)]),
                secrets: BTreeMap::from([("token".into(), vec![])]),
                ..Capabilities::default()
            },
            granted: Capabilities {
                http: vec!["https://api.example.com".into()],
                secrets: BTreeMap::from([("token".into(), vec!["https://api.example.com".into()])]),
                ..Capabilities::default()
            },
        }
    }

    #[test]
    fn the_text_reads_back_as_written() {
        let mut lock = LockFile::new();
        lock.plugins.insert("check".into(), plugin());
        lock.set_section(
            Some("production"),
            BTreeMap::from([("check".into(), plugin())]),
        );
        let text = lock.to_text();
        assert_eq!(LockFile::parse("engine.lock", &text).unwrap(), lock);
        assert!(text.contains("[plugins.check.granted.secrets]"), "{text}");
    }

    #[test]
    fn a_new_capability_is_shown_as_added() {
        let locked = plugin();
        let mut now = plugin();
        now.sha256 = "b".repeat(64);
        now.declared.env.push("HOME".into());
        now.granted.dirs.insert("/out".into(), true);
        let found = locked.differences(&now);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("code (sha256)"));
        assert_eq!(
            text[1],
            "now declares what the lock does not record:\n  + env HOME"
        );
        assert_eq!(
            text[2],
            "now is granted what the lock does not record:\n  + dir /out (writable)"
        );
        assert!(found.iter().all(Difference::widens));
        assert!(locked.differences(&locked).is_empty());
    }

    #[test]
    fn a_newer_format_or_unknown_key_is_refused_with_the_fix() {
        let err = LockFile::parse("engine.lock", "version = 2\n").unwrap_err();
        assert!(err.to_string().contains("format version 2"), "{err}");
        let err = LockFile::parse("engine.lock", "version = 1\nfoo = 1\n").unwrap_err();
        assert!(err.to_string().contains("engine plugins lock"), "{err}");
    }
}
