//! The sandbox a plugin gets is the intersection of what the pipeline grants it and what the
//! plugin declares it needs (its `info`): a grant the plugin never asked for is not given, and
//! a need nobody granted is not met. Every difference is a warning for the user, since either
//! side may be the mistake. Pure: no file is looked at, no secret read.

use super::info::Capabilities;
use crate::grants::Grants;

/// What a plugin gets, and what the user is told about the difference.
#[derive(Debug)]
pub struct Intersection {
    pub grants: Grants,
    pub warnings: Vec<String>,
}

/// Intersects plugin `name`'s `grants` with what it `declared`.
pub fn intersect(name: &str, grants: &Grants, declared: &Capabilities) -> Intersection {
    let mut warnings = network_warnings(name, grants, declared);
    let mut effective = Grants {
        http: grants.http.clone(),
        tcp: grants.tcp.clone(),
        limits: grants.limits,
        // How the plugin's granted requests travel, not something it declares.
        proxy: grants.proxy.clone(),
        ..Grants::default()
    };
    intersect_env(name, grants, declared, &mut effective, &mut warnings);
    intersect_dirs(name, grants, declared, &mut effective, &mut warnings);
    intersect_secrets(name, grants, declared, &mut effective, &mut warnings);
    Intersection {
        grants: effective,
        warnings,
    }
}

/// Network grants are kept as granted (each request is checked against the declared
/// destinations too, by the egress and TCP policies); only a side missing altogether is told.
fn network_warnings(name: &str, grants: &Grants, declared: &Capabilities) -> Vec<String> {
    let (tcp, http): (Vec<&String>, Vec<&String>) =
        declared.http.iter().partition(|p| p.starts_with("tcp://"));
    // A cluster is reached through its secret's grant (`from = "kubeconfig"`), not allow_http.
    let cluster = format!("https://{}", super::kubernetes::API_HOST);
    let http: Vec<&String> = http.into_iter().filter(|p| **p != cluster).collect();
    let list = |patterns: &[&String]| {
        let patterns: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
        patterns.join(", ")
    };
    let mut warnings = Vec::new();
    if grants.http.is_empty() && !http.is_empty() {
        warnings.push(format!(
            "declares outbound HTTP to {} but [plugins.{name}] grants none; add allow_http = [...] for the destinations it needs",
            list(&http)
        ));
    }
    if grants.tcp.is_empty() && !tcp.is_empty() {
        warnings.push(format!(
            "declares TCP connects to {} but [plugins.{name}] grants none; add allow_tcp = [\"host:port\", ...] for the destinations it checks",
            list(&tcp)
        ));
    }
    if !grants.tcp.is_empty() && tcp.is_empty() {
        warnings.push(format!(
            "[plugins.{name}] grants allow_tcp, but the plugin declares no TCP destination; it cannot use it"
        ));
    }
    warnings
}

fn intersect_env(
    name: &str,
    grants: &Grants,
    declared: &Capabilities,
    effective: &mut Grants,
    warnings: &mut Vec<String>,
) {
    for var in &grants.env {
        if declared.env.contains(var) {
            effective.env.push(var.clone());
        } else {
            warnings.push(format!(
                "[plugins.{name}] grants environment variable {var}, which the plugin does not declare; it is not passed"
            ));
        }
    }
    for var in declared.env.iter().filter(|v| !grants.env.contains(v)) {
        warnings.push(format!(
            "declares environment variable {var}; add \"{var}\" to allow_env in [plugins.{name}] if it should see it"
        ));
    }
}

/// A granted directory is opened only at a path the plugin declares, and writable only if
/// both sides say so.
fn intersect_dirs(
    name: &str,
    grants: &Grants,
    declared: &Capabilities,
    effective: &mut Grants,
    warnings: &mut Vec<String>,
) {
    for dir in &grants.dirs {
        match declared.dirs.iter().find(|d| d.path == dir.guest) {
            Some(need) => {
                let mut dir = dir.clone();
                dir.writable &= need.writable;
                effective.dirs.push(dir);
            }
            None => warnings.push(format!(
                "[plugins.{name}] grants directory {}, which the plugin does not declare; it is not opened",
                dir.guest
            )),
        }
    }
    // A declared directory nobody granted is a validation error (`dir_shortfalls`), unless the
    // plugin marks it optional.
}

fn intersect_secrets(
    name: &str,
    grants: &Grants,
    declared: &Capabilities,
    effective: &mut Grants,
    warnings: &mut Vec<String>,
) {
    // `*`: the plugin opens secrets its configuration names (an `http` check's
    // `bearer_secret`), so whatever the pipeline grants is available to it.
    let any_secret = declared.secrets.iter().any(|s| s == "*");
    for (secret, grant) in &grants.secrets {
        if any_secret || declared.secrets.contains(secret) {
            effective.secrets.insert(secret.clone(), grant.clone());
        } else {
            warnings.push(format!(
                "[plugins.{name}] grants secret '{secret}', which the plugin does not declare; it is not available"
            ));
        }
    }
    for secret in declared
        .secrets
        .iter()
        .filter(|s| *s != "*" && !grants.secrets.contains_key(*s))
    {
        warnings.push(format!(
            "declares secret '{secret}'; grant it under [plugins.{name}.secrets] if it should use it"
        ));
    }
}

/// What the effective `grants` (already intersected with what the plugin declares) come to, as
/// the lock file records them: network destinations as granted (each request is also held to
/// the declared ones), each secret with the destinations its value may go to.
pub fn granted(effective: &Grants) -> crate::lockfile::Capabilities {
    use crate::lockfile::sorted;
    let patterns = |list: &[crate::grants::HttpPattern]| {
        sorted(list.iter().map(|p| p.as_str().to_string()).collect())
    };
    let http = patterns(&effective.http);
    crate::lockfile::Capabilities {
        tcp: patterns(&effective.tcp),
        env: sorted(effective.env.clone()),
        dirs: effective
            .dirs
            .iter()
            .map(|d| (d.guest.clone(), d.writable))
            .collect(),
        secrets: effective
            .secrets
            .iter()
            .map(|(name, grant)| {
                let hosts = grant
                    .hosts
                    .as_deref()
                    .map_or_else(|| http.clone(), patterns);
                (name.clone(), hosts)
            })
            .collect(),
        http,
    }
}

/// What a directory need's `purpose` starts with when the plugin works without it (a provider
/// that reads manifest files only for one resource kind).
pub const OPTIONAL_DIR: &str = "(optional)";

/// The directories a plugin declares that the pipeline does not give it as asked: not granted
/// at all (unless its purpose says it is optional), or read-only where it asked to write. Each
/// is a validation error: the plugin would fail at its first use of it.
pub fn dir_shortfalls(
    name: &str,
    grants: &[crate::grants::DirGrant],
    declared: &Capabilities,
) -> Vec<String> {
    let mut found = Vec::new();
    for need in &declared.dirs {
        let access = if need.writable {
            "read-write"
        } else {
            "read-only"
        };
        match grants.iter().find(|g| g.guest == need.path) {
            None if need.purpose.trim_start().starts_with(OPTIONAL_DIR) => {}
            None => found.push(format!(
                "plugin `{name}` needs directory {} ({access}: {}), and [plugins.{name}] grants none; add dirs = [{{ host = \"DIR\", guest = \"{}\"{} }}]",
                need.path,
                need.purpose,
                need.path,
                if need.writable { ", writable = true" } else { "" }
            )),
            Some(grant) if need.writable && !grant.writable => found.push(format!(
                "plugin `{name}` writes to directory {} ({}), but [plugins.{name}] grants it read-only; add `writable = true` to its entry in `dirs`",
                need.path, need.purpose
            )),
            Some(_) => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::source::SecretSource;
    use crate::grants::{DirGrant, GrantsConfig};
    use crate::runtime::info::DirNeed;

    fn grants(toml: &str) -> Grants {
        let config: GrantsConfig = toml::from_str(toml).unwrap();
        config.parse().unwrap()
    }

    fn declared(
        http: &[&str],
        env: &[&str],
        dirs: &[(&str, bool)],
        secrets: &[&str],
    ) -> Capabilities {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Capabilities {
            http: strings(http),
            env: strings(env),
            dirs: dirs
                .iter()
                .map(|(path, writable)| DirNeed {
                    path: path.to_string(),
                    writable: *writable,
                    purpose: "artifacts".into(),
                })
                .collect(),
            secrets: strings(secrets),
        }
    }

    #[test]
    fn only_what_both_sides_name_is_given_and_every_difference_is_told() {
        let granted = grants(
            r#"
            allow_http = ["https://api.example.com"]
            allow_env = ["REGION", "HOME"]
            dirs = [{ host = "/srv/out", guest = "/out", writable = true },
                    { host = "/srv/cache", guest = "/cache" }]
            secrets = { token = { from = "env:TOKEN" }, extra = { from = "env:EXTRA" } }
            "#,
        );
        let wants = declared(
            &["https://api.example.com"],
            &["REGION", "PROJECT"],
            &[("/out", false), ("/work", true)],
            &["token", "missing"],
        );
        let Intersection { grants, warnings } = intersect("deploy", &granted, &wants);
        assert_eq!(grants.env, ["REGION"]);
        let dirs: Vec<&DirGrant> = grants.dirs.iter().collect();
        assert_eq!(dirs.len(), 1);
        assert_eq!(dirs[0].guest, "/out");
        assert!(!dirs[0].writable, "writable only if both sides say so");
        assert_eq!(grants.secrets.keys().collect::<Vec<_>>(), ["token"]);
        assert!(matches!(
            grants.secrets["token"].source,
            SecretSource::Env(_)
        ));
        assert_eq!(grants.http.len(), 1);
        let told = |needle: &str| warnings.iter().any(|w| w.contains(needle));
        assert!(told(
            "grants environment variable HOME, which the plugin does not declare"
        ));
        assert!(told("declares environment variable PROJECT"));
        assert!(told(
            "grants directory /cache, which the plugin does not declare"
        ));
        assert!(told(
            "grants secret 'extra', which the plugin does not declare"
        ));
        assert!(told("declares secret 'missing'"));
        assert_eq!(warnings.len(), 5, "{warnings:#?}");
    }

    #[test]
    fn a_needed_directory_missing_or_read_only_is_a_shortfall_unless_optional() {
        let granted = grants(r#"dirs = [{ host = "/srv/out", guest = "/out" }]"#);
        let mut wants = declared(
            &[],
            &[],
            &[("/out", true), ("/work", false), ("/extra", false)],
            &[],
        );
        wants.dirs[2].purpose = "(optional) manifests".into();
        let found = dir_shortfalls("build", &granted.dirs, &wants);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].contains("grants it read-only; add `writable = true`"),
            "{}",
            found[0]
        );
        assert!(
            found[1].contains("needs directory /work (read-only: artifacts)"),
            "{}",
            found[1]
        );
    }

    #[test]
    fn granted_lists_what_the_plugin_gets_with_each_secrets_destinations() {
        let granted_config = grants(
            r#"
            allow_http = ["https://b.example.com", "https://a.example.com"]
            dirs = [{ host = "/srv/out", guest = "/out", writable = true }]
            secrets = { token = { from = "env:T" }, narrow = { from = "env:N", hosts = ["https://a.example.com"] } }
            "#,
        );
        let wants = declared(
            &["https://*"],
            &[],
            &[("/out", false)],
            &["token", "narrow"],
        );
        let effective = intersect("p", &granted_config, &wants).grants;
        let locked = granted(&effective);
        assert_eq!(
            locked.http,
            ["https://a.example.com", "https://b.example.com"]
        );
        assert_eq!(locked.dirs.get("/out"), Some(&false));
        assert_eq!(locked.secrets["narrow"], ["https://a.example.com"]);
        assert_eq!(locked.secrets["token"], locked.http);
    }

    #[test]
    fn a_wildcard_secret_need_takes_every_granted_secret() {
        let granted = grants(r#"secrets = { a = { from = "env:A" }, b = { from = "env:B" } }"#);
        let result = intersect("http", &granted, &declared(&[], &[], &[], &["*"]));
        assert_eq!(result.grants.secrets.len(), 2);
        assert!(result.warnings.is_empty(), "{:?}", result.warnings);
    }

    #[test]
    fn a_network_side_missing_altogether_is_told() {
        let none = grants("");
        let wants = declared(
            &["https://*.googleapis.com", "tcp://db:5432"],
            &[],
            &[],
            &[],
        );
        let warnings = intersect("check", &none, &wants).warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("declares outbound HTTP to https://*.googleapis.com"));
        assert!(warnings[1].contains("declares TCP connects to tcp://db:5432"));

        let tcp_only = grants(r#"allow_tcp = ["db:5432"]"#);
        let warnings = intersect("check", &tcp_only, &declared(&[], &[], &[], &[])).warnings;
        assert_eq!(
            warnings,
            [
                "[plugins.check] grants allow_tcp, but the plugin declares no TCP destination; it cannot use it"
            ]
        );
    }
}
