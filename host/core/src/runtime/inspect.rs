//! What a compiled component exports and imports, read before it is instantiated: the plugin's
//! kind, the WIT version it was built against, and whether this engine can link it.

use super::error::LoadError;
use wasmtime::Engine;
use wasmtime::component::{Component, types::ComponentItem};

/// The WIT package this engine implements.
pub const WIT_PACKAGE: &str = "engine:plugin";
/// Its version.
pub const WIT_VERSION: &str = "0.1.1";

/// The three kinds of plugin, one per world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    Provider,
    Strategy,
    Health,
}

impl PluginKind {
    pub const ALL: [PluginKind; 3] = [
        PluginKind::Provider,
        PluginKind::Strategy,
        PluginKind::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Provider => "provider",
            PluginKind::Strategy => "strategy",
            PluginKind::Health => "health",
        }
    }

    /// The interface the plugin exports, without version.
    pub fn interface(self) -> &'static str {
        self.as_str()
    }

    /// Whether this kind of plugin may import an interface (`wasi:http/types@0.2.12`, ...).
    /// Strategies are pure: no HTTP, no clock of the host, no secrets.
    pub fn may_import(self, package: &str, interface: &str) -> bool {
        match (self, package) {
            (
                _,
                "wasi:cli" | "wasi:clocks" | "wasi:filesystem" | "wasi:random" | "wasi:io"
                | "wasi:sockets",
            ) => true,
            (PluginKind::Provider | PluginKind::Health, "wasi:http") => true,
            (PluginKind::Provider, WIT_PACKAGE) => {
                matches!(interface, "types" | "log" | "clock" | "secrets")
            }
            (PluginKind::Health, WIT_PACKAGE) => {
                matches!(interface, "types" | "log" | "clock" | "secrets" | "tcp")
            }
            (PluginKind::Strategy, WIT_PACKAGE) => matches!(interface, "types" | "log"),
            _ => false,
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An interface name split up: `wasi:http/types@0.2.12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceName {
    pub package: String,
    pub interface: String,
    pub version: Option<semver::Version>,
}

impl InterfaceName {
    pub fn parse(name: &str) -> Option<InterfaceName> {
        let (path, version) = match name.split_once('@') {
            Some((p, v)) => (p, semver::Version::parse(v).ok()),
            None => (name, None),
        };
        let (package, interface) = path.split_once('/')?;
        Some(InterfaceName {
            package: package.to_string(),
            interface: interface.to_string(),
            version,
        })
    }
}

/// Whether a plugin built against `plugin` can be served by a host at `host`: the same major
/// version, or for 0.x the same minor (0.0.x must match exactly), and not newer than the host.
pub fn compatible(plugin: &semver::Version, host: &semver::Version) -> bool {
    let same_range = if host.major > 0 {
        plugin.major == host.major
    } else if host.minor > 0 {
        plugin.major == 0 && plugin.minor == host.minor
    } else {
        plugin == host
    };
    same_range && plugin <= host
}

/// What `inspect` found.
#[derive(Debug, Clone)]
pub struct Shape {
    pub kind: PluginKind,
    pub wit_version: semver::Version,
    /// Functions of the exported interface.
    pub functions: Vec<String>,
    /// Every import, with version.
    pub imports: Vec<String>,
}

pub fn host_version() -> semver::Version {
    semver::Version::parse(WIT_VERSION).expect("WIT_VERSION is semver")
}

/// Reads the component's kind and WIT version, and refuses imports the kind may not have and
/// WIT versions this engine cannot serve, with an error that names both versions.
pub fn shape(engine: &Engine, plugin: &str, component: &Component) -> Result<Shape, LoadError> {
    let ty = component.component_type();
    let host = host_version();
    let mut found = None;
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_string());
        let Some(parsed) = InterfaceName::parse(name) else {
            continue;
        };
        if parsed.package != WIT_PACKAGE {
            continue;
        }
        let Some(kind) = PluginKind::ALL
            .iter()
            .copied()
            .find(|k| k.interface() == parsed.interface)
        else {
            continue;
        };
        let functions = match &item.ty {
            ComponentItem::ComponentInstance(inst) => inst
                .exports(engine)
                .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                .map(|(n, _)| n.to_string())
                .collect(),
            _ => Vec::new(),
        };
        found = Some((kind, parsed.version, functions));
    }
    let Some((kind, version, functions)) = found else {
        return Err(LoadError::NotAPlugin {
            plugin: plugin.to_string(),
            exports: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        });
    };
    let Some(wit_version) = version else {
        return Err(incompatible(plugin, "unversioned".into(), &host));
    };
    if !compatible(&wit_version, &host) {
        return Err(incompatible(plugin, wit_version.to_string(), &host));
    }
    let mut imports = Vec::new();
    for (name, _) in ty.imports(engine) {
        imports.push(name.to_string());
        let Some(parsed) = InterfaceName::parse(name) else {
            return Err(LoadError::ForbiddenImport {
                plugin: plugin.to_string(),
                kind: kind.as_str(),
                import: name.to_string(),
                advice: String::new(),
            });
        };
        if parsed.package == WIT_PACKAGE
            && let Some(v) = &parsed.version
            && !compatible(v, &host)
        {
            return Err(incompatible(plugin, v.to_string(), &host));
        }
        if !kind.may_import(&parsed.package, &parsed.interface) {
            return Err(LoadError::ForbiddenImport {
                plugin: plugin.to_string(),
                kind: kind.as_str(),
                import: name.to_string(),
                advice: import_advice(kind, &parsed.package),
            });
        }
    }
    Ok(Shape {
        kind,
        wit_version,
        functions,
        imports,
    })
}

fn incompatible(plugin: &str, plugin_version: String, host: &semver::Version) -> LoadError {
    let advice = match semver::Version::parse(&plugin_version) {
        Ok(v) if v > *host => {
            "upgrade the engine, or rebuild the plugin against the engine's WIT version".to_string()
        }
        _ => "rebuild the plugin with an SDK for this WIT version".to_string(),
    };
    LoadError::IncompatibleWit {
        plugin: plugin.to_string(),
        package: WIT_PACKAGE.to_string(),
        plugin_version,
        host_version: host.to_string(),
        advice,
    }
}

/// How to leave a forbidden import out, where the toolchain that adds it is known: JavaScript
/// toolchains import `wasi:http` unless told not to, and strategies get no network.
fn import_advice(kind: PluginKind, package: &str) -> String {
    if kind == PluginKind::Strategy && package == "wasi:http" {
        "; strategies get no network: build it without HTTP (componentize-js: `componentize-js … -d http fetch-event`, or `jco componentize … -d http fetch-event`; Rust: no HTTP client in a strategy)".to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strategy_importing_http_is_told_the_flags_that_leave_it_out() {
        let advice = import_advice(PluginKind::Strategy, "wasi:http");
        assert!(advice.contains("-d http fetch-event"), "{advice}");
        assert_eq!(import_advice(PluginKind::Strategy, "wasi:sockets"), "");
        assert_eq!(import_advice(PluginKind::Health, "wasi:http"), "");
    }

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn compatibility_follows_semver_for_zero_versions() {
        assert!(compatible(&v("0.1.0"), &v("0.1.3")));
        assert!(
            !compatible(&v("0.1.4"), &v("0.1.3")),
            "newer plugin than host"
        );
        assert!(!compatible(&v("0.2.0"), &v("0.1.3")));
        assert!(!compatible(&v("1.1.0"), &v("0.1.0")));
        assert!(compatible(&v("1.0.0"), &v("1.2.0")));
        assert!(!compatible(&v("0.0.1"), &v("0.0.2")));
    }

    #[test]
    fn interface_names_split() {
        let n = InterfaceName::parse("wasi:http/types@0.2.12").unwrap();
        assert_eq!(n.package, "wasi:http");
        assert_eq!(n.interface, "types");
        assert_eq!(n.version, Some(v("0.2.12")));
        assert!(InterfaceName::parse("plain").is_none());
    }

    #[test]
    fn strategies_cannot_import_http_or_secrets() {
        assert!(!PluginKind::Strategy.may_import("wasi:http", "outgoing-handler"));
        assert!(!PluginKind::Strategy.may_import(WIT_PACKAGE, "secrets"));
        assert!(PluginKind::Provider.may_import("wasi:http", "outgoing-handler"));
        assert!(!PluginKind::Provider.may_import("acme:other", "thing"));
        assert!(PluginKind::Health.may_import(WIT_PACKAGE, "tcp"));
        assert!(!PluginKind::Provider.may_import(WIT_PACKAGE, "tcp"));
    }
}
