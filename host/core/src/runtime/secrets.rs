//! Secrets: where their values come from, the handles plugins hold, and redaction.
//!
//! A plugin never sees a value. `secrets.open` gives it a handle whose placeholder it writes into
//! a request header; the egress hook swaps the placeholder for the value only when the request
//! goes to a destination the secret is granted for. Every value the engine resolves is also
//! registered with the process-wide [`crate::redact::Redactor`], which every log line, event and
//! stored record passes through. Google tokens ([`super::google`]) are secrets whose value the host obtains
//! and renews itself; each new token is registered with the redactor as it is minted.

use super::aws::AwsCredentials;
use super::google::{Credential, GoogleTokens};
use super::kubernetes::KubeCluster;
use crate::grants::source::SecretSource;
use crate::grants::source::TokenKind;
use crate::grants::{GrantsConfig, HttpPattern, SecretGrant};
use crate::redact::redactor;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Values shorter than this could not be redacted without mangling ordinary text.
pub const MIN_SECRET_LEN: usize = 4;

/// Reads the value of `source` now (for Google tokens: finds the credential; tokens come per
/// request).
pub fn resolve(source: &SecretSource) -> Result<SecretValue, String> {
    let value = match source {
        SecretSource::LocalPlatform => return Ok(SecretValue::LocalPlatform),
        SecretSource::Google { kind, key } => {
            let credential = match key {
                Some(path) => Credential::from_file(path)?,
                None => Credential::discover()?,
            };
            return Ok(SecretValue::Google(Arc::new(GoogleTokens::new(
                credential, *kind,
            )?)));
        }
        SecretSource::Aws(source) => {
            return Ok(SecretValue::Aws(Arc::new(AwsCredentials::new(
                source.clone(),
            )?)));
        }
        SecretSource::Kubernetes(source) => {
            return Ok(SecretValue::Kubernetes(Arc::new(KubeCluster::new(source)?)));
        }
        SecretSource::Env(name) => {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
        }
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
    };
    if value.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the value is shorter than {MIN_SECRET_LEN} characters, too short to redact from logs safely"
        ));
    }
    Ok(SecretValue::Fixed(value))
}

/// A secret's value: fixed, or a Google token the host mints for each destination.
#[derive(Debug, Clone)]
pub enum SecretValue {
    Fixed(String),
    Google(Arc<GoogleTokens>),
    /// AWS credentials: never a header's value; the host signs the requests that name them
    /// (egress, `x-engine-aws-sigv4`).
    Aws(Arc<AwsCredentials>),
    /// A Kubernetes cluster: never a header's value; a request naming it goes to its API
    /// server with its credentials (egress, `x-engine-kubernetes`).
    Kubernetes(Arc<KubeCluster>),
    /// The access token of the local platform on the destination's port, read from its token
    /// file when a request goes out (the platform may have restarted with a new one).
    LocalPlatform,
}

impl SecretValue {
    /// The value to send to `origin` (`scheme://host[:port]`, the audience of identity tokens).
    pub async fn for_destination(&self, origin: &str) -> Result<String, String> {
        match self {
            SecretValue::Fixed(v) => Ok(v.clone()),
            SecretValue::Google(tokens) => tokens.token(origin).await,
            SecretValue::Aws(_) => Err(format!(
                "it holds AWS credentials, which go in no header: name it in the {} header and the host signs the request to {origin}",
                super::aws::SIGN_HEADER
            )),
            SecretValue::Kubernetes(cluster) => Err(format!(
                "it names the Kubernetes cluster of {}, which goes in no header: name it in the {} header of a request to https://{} and the host sends it there",
                cluster.described(),
                super::kubernetes::CLUSTER_HEADER,
                super::kubernetes::API_HOST
            )),
            SecretValue::LocalPlatform => {
                let port = reqwest::Url::parse(origin)
                    .ok()
                    .and_then(|u| u.port_or_known_default())
                    .ok_or_else(|| format!("{origin} has no port"))?;
                let token = local_platform::token::read(port).map_err(|e| e.to_string())?;
                redactor().register(&token);
                Ok(token)
            }
        }
    }

    /// The cloud whose APIs alone a credential goes to unless the grant lists other hosts:
    /// Google's for an access token, AWS's for AWS credentials.
    pub fn own_apis_only(&self) -> Option<CloudApis> {
        match self {
            SecretValue::Google(t) if t.kind() == TokenKind::Access => Some(CloudApis::Google),
            SecretValue::Aws(_) => Some(CloudApis::Aws),
            _ => None,
        }
    }
}

/// The API domains of a cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudApis {
    Google,
    Aws,
}

impl CloudApis {
    pub fn contains(self, host: &str) -> bool {
        let domains: &[&str] = match self {
            CloudApis::Google => &["googleapis.com"],
            // AWS's partitions: the commercial regions and China's.
            CloudApis::Aws => &["amazonaws.com", "amazonaws.com.cn"],
        };
        domains.iter().any(|domain| {
            host == *domain || host.strip_suffix(domain).is_some_and(|h| h.ends_with('.'))
        })
    }
}

/// A secret resolved for one loaded plugin.
#[derive(Debug)]
pub struct ResolvedSecret {
    pub name: String,
    pub value: SecretValue,
    /// Unique per load, so a placeholder cannot be guessed or reused across plugins.
    pub placeholder: String,
    /// None: any destination the plugin may reach.
    pub hosts: Option<Vec<HttpPattern>>,
    /// Whether it may be sent during `engine plan`.
    pub in_plan: bool,
}

/// The secrets of one loaded plugin, by name.
#[derive(Debug, Default)]
pub struct PluginSecrets {
    by_name: BTreeMap<String, Arc<ResolvedSecret>>,
}

/// The prefix of every placeholder; the egress hook scans headers for it.
pub const PLACEHOLDER_PREFIX: &str = "engine-secret-";

impl PluginSecrets {
    /// Resolves every granted secret, registering each value with the redactor.
    pub fn resolve(
        grants: &BTreeMap<String, SecretGrant>,
    ) -> Result<PluginSecrets, UnreadableSecret> {
        let by_name = grants
            .iter()
            .map(|(name, grant)| Ok((name.clone(), Arc::new(resolve_one(name, grant)?))))
            .collect::<Result<_, UnreadableSecret>>()?;
        Ok(PluginSecrets { by_name })
    }

    /// Resolves the secrets that can be read now and says why each other one cannot: for
    /// loading a plugin only to check it.
    pub fn resolve_available(
        grants: &BTreeMap<String, SecretGrant>,
    ) -> (PluginSecrets, Vec<UnreadableSecret>) {
        let mut secrets = PluginSecrets::default();
        let mut unreadable = Vec::new();
        for (name, grant) in grants {
            match resolve_one(name, grant) {
                Ok(secret) => {
                    secrets.by_name.insert(name.clone(), Arc::new(secret));
                }
                Err(e) => unreadable.push(e),
            }
        }
        (secrets, unreadable)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ResolvedSecret>> {
        self.by_name.values()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ResolvedSecret>> {
        self.by_name.get(name)
    }

    /// The secrets whose placeholder occurs in `text`.
    pub fn placeholders_in<'a>(
        &'a self,
        text: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResolvedSecret>> + 'a {
        self.by_name
            .values()
            .filter(move |s| text.contains(&s.placeholder))
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Registers the values of every secret `grants` grant that can be read now (from the
/// environment or a file), so a command that loads no plugin still redacts them from the state
/// it prints. Unreadable ones are skipped: a real run reports them.
pub fn register_readable_secrets<'g>(grants: impl IntoIterator<Item = &'g GrantsConfig>) {
    for grants in grants {
        let Ok(grants) = grants.parse() else {
            continue;
        };
        for grant in grants.secrets.values() {
            if let Ok(SecretValue::Fixed(value)) = resolve(&grant.source) {
                redactor().register(&value);
            }
        }
    }
}

/// Reads one granted secret (registering a fixed value with the redactor) and gives it a
/// placeholder of its own.
fn resolve_one(name: &str, grant: &SecretGrant) -> Result<ResolvedSecret, UnreadableSecret> {
    let value = resolve(&grant.source).map_err(|message| UnreadableSecret {
        secret: name.to_string(),
        message,
        hint: unreadable_hint(&grant.source),
    })?;
    if let SecretValue::Fixed(v) = &value {
        redactor().register(v);
    }
    Ok(ResolvedSecret {
        name: name.to_string(),
        value,
        placeholder: format!("{PLACEHOLDER_PREFIX}{name}-{:016x}", rand::random::<u64>()),
        hosts: grant.hosts.clone(),
        in_plan: grant.in_plan,
    })
}

/// A granted secret that cannot be read on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret '{secret}': {message}")]
pub struct UnreadableSecret {
    pub secret: String,
    pub message: String,
    /// How to make it readable.
    pub hint: String,
}

/// How to make a secret from `source` readable where the engine runs.
fn unreadable_hint(source: &SecretSource) -> String {
    match source {
        SecretSource::Env(var) => format!(
            "set {var} in the engine's environment (in CI, from the CI's secret store), or change `from` to where the value is"
        ),
        SecretSource::File(path) => format!(
            "{} must exist and be readable by the engine's user (in CI, write it from the CI's secret store before the engine runs), or change `from` to where the value is",
            path.display()
        ),
        SecretSource::Google { .. } => "docs/cloudrun.md#credentials says where the engine looks for Google credentials and how to name a key file".into(),
        SecretSource::Aws(_) => "docs/pipeline-reference.md#aws-credentials says where the engine looks for AWS credentials and how to name them".into(),
        SecretSource::Kubernetes(_) => "docs/kubernetes.md#credentials says which kubeconfig the engine reads and what it accepts".into(),
        SecretSource::LocalPlatform => "the local platform's token is the engine's own: run `engine local up` again".into(),
    }
}

/// What a plugin holds in its resource table for an open secret.
#[derive(Debug)]
pub struct SecretHandle(pub Arc<ResolvedSecret>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_resolve() {
        assert_eq!(
            SecretSource::parse("env:TOKEN").unwrap(),
            SecretSource::Env("TOKEN".into())
        );
        assert!(
            SecretSource::parse("vault:x")
                .unwrap_err()
                .contains("env:VARIABLE")
        );
        assert!(SecretSource::parse("env:").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        assert!(
            matches!(resolve(&SecretSource::File(path)).unwrap(), SecretValue::Fixed(v) if v == "s3cr3t-value")
        );
        assert_eq!(
            SecretSource::parse("google-id-token:/k.json").unwrap(),
            SecretSource::Google {
                kind: TokenKind::Identity,
                key: Some("/k.json".into())
            }
        );
        assert_eq!(
            SecretSource::parse("google").unwrap(),
            SecretSource::Google {
                kind: TokenKind::Access,
                key: None
            }
        );
        assert!(
            resolve(&SecretSource::Env("ENGINE_TEST_SURELY_UNSET".into()))
                .unwrap_err()
                .contains("is not set")
        );
    }

    #[test]
    fn cloud_credentials_go_to_their_own_apis() {
        assert!(CloudApis::Aws.contains("ecs.eu-west-1.amazonaws.com"));
        assert!(CloudApis::Aws.contains("ecs.cn-north-1.amazonaws.com.cn"));
        assert!(!CloudApis::Aws.contains("evilamazonaws.com"));
        assert!(!CloudApis::Aws.contains("amazonaws.com.evil.example"));
        assert!(CloudApis::Google.contains("run.googleapis.com"));
        assert!(!CloudApis::Google.contains("run.amazonaws.com"));
    }

    #[test]
    fn kubernetes_sources_parse() {
        use crate::grants::source::KubeSource;
        let kube = |text| match SecretSource::parse(text) {
            Ok(SecretSource::Kubernetes(source)) => source,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            kube("kubeconfig"),
            KubeSource::Kubeconfig {
                context: None,
                file: None
            }
        );
        assert_eq!(
            kube("kubeconfig:prod"),
            KubeSource::Kubeconfig {
                context: Some("prod".into()),
                file: None
            }
        );
        assert_eq!(
            kube("kubeconfig-file:/k"),
            KubeSource::Kubeconfig {
                context: None,
                file: Some("/k".into())
            }
        );
        assert_eq!(kube("in-cluster"), KubeSource::InCluster);
        let missing = SecretSource::Kubernetes(KubeSource::Kubeconfig {
            context: None,
            file: Some("/nonexistent/kubeconfig".into()),
        });
        assert!(
            resolve(&missing)
                .unwrap_err()
                .contains("/nonexistent/kubeconfig")
        );
    }

    #[test]
    fn aws_sources_parse() {
        use crate::grants::source::AwsSource;
        let aws = |text| {
            SecretSource::parse(text).map(|s| match s {
                SecretSource::Aws(source) => source,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(aws("aws").unwrap(), AwsSource::Chain);
        assert_eq!(
            aws("aws:deploy").unwrap(),
            AwsSource::Profile("deploy".into())
        );
        assert_eq!(
            aws("aws-env:PROD_AWS").unwrap(),
            AwsSource::Env("PROD_AWS".into())
        );
        assert_eq!(aws("aws-file:/k").unwrap(), AwsSource::File("/k".into()));
        for bad in ["aws:", "aws-env:", "aws-env:PROD AWS", "aws-file:"] {
            let error = SecretSource::parse(bad).unwrap_err();
            assert!(error.contains("\"aws:PROFILE\""), "{bad}: {error}");
        }
        // A file that is not there is named when the plugin loads.
        let missing = SecretSource::Aws(AwsSource::File("/nonexistent/aws".into()));
        assert!(resolve(&missing).unwrap_err().contains("/nonexistent/aws"));
    }

    #[test]
    fn short_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, "abc").unwrap();
        assert!(
            resolve(&SecretSource::File(path))
                .unwrap_err()
                .contains("too short")
        );
    }
}
