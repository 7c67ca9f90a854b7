//! Where a granted secret's value comes from, as pipeline.toml writes it (`env:NAME`,
//! `file:PATH`, `google[:KEY]`, `google-id-token[:KEY]`, `aws[:PROFILE]`…, `kubeconfig[:CONTEXT]`,
//! `kubeconfig-file:PATH`, `in-cluster`). Reading the value is the runtime's.

use std::path::PathBuf;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:NAME`: an environment variable of the engine's process.
    Env(String),
    /// `file:PATH`: a file's contents, without the trailing newline.
    File(PathBuf),
    /// The local platform's access token: given by the engine to its own `local` provider,
    /// never written in a pipeline.
    LocalPlatform,
    /// `google[:KEY]` (an access token) or `google-id-token[:KEY]` (an identity token for the
    /// destination), from a key file or the credential chain.
    Google {
        kind: TokenKind,
        key: Option<PathBuf>,
    },
    /// `aws`, `aws:PROFILE`, `aws-env:PREFIX` or `aws-file:PATH`: AWS credentials the host signs
    /// requests with (Signature Version 4); the plugin never holds them.
    Aws(AwsSource),
    /// `kubeconfig`, `kubeconfig:CONTEXT` or `in-cluster`: a Kubernetes cluster, its API
    /// server and the credentials to reach it, which the host attaches; the plugin never holds
    /// them.
    Kubernetes(KubeSource),
}

/// Where a Kubernetes cluster's connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// A context of the kubeconfig kubectl would read (`KUBECONFIG`, else `~/.kube/config`),
    /// or of the file named: the named context, or the current one.
    Kubeconfig {
        context: Option<String>,
        file: Option<PathBuf>,
    },
    /// The service account of the pod the engine runs in.
    InCluster,
}

impl std::fmt::Display for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeSource::Kubeconfig {
                context: Some(c), ..
            } => write!(f, "kubeconfig context {c}"),
            KubeSource::Kubeconfig {
                context: None,
                file: Some(path),
            } => write!(f, "the current context of {}", path.display()),
            KubeSource::Kubeconfig {
                context: None,
                file: None,
            } => write!(f, "the kubeconfig's current context"),
            KubeSource::InCluster => write!(f, "the pod's service account (in-cluster)"),
        }
    }
}

/// Where AWS credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsSource {
    /// The standard chain: environment, shared files, web identity, container, instance.
    Chain,
    /// One profile of the shared config and credentials files.
    Profile(String),
    /// `PREFIX_ACCESS_KEY_ID`, `PREFIX_SECRET_ACCESS_KEY`, `PREFIX_SESSION_TOKEN`.
    Env(String),
    /// The `default` profile of a credentials file.
    File(PathBuf),
}

impl std::fmt::Display for AwsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsSource::Chain => write!(
                f,
                "the standard chain (environment, shared files, web identity, container, instance)"
            ),
            AwsSource::Profile(name) => write!(f, "profile {name}"),
            AwsSource::Env(prefix) => write!(
                f,
                "the variables {prefix}_ACCESS_KEY_ID and {prefix}_SECRET_ACCESS_KEY"
            ),
            AwsSource::File(path) => write!(f, "the credentials file {}", path.display()),
        }
    }
}

/// Which kind of token a secret stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An OAuth2 access token for the Google Cloud APIs.
    Access,
    /// An OpenID Connect identity token whose audience is the destination's origin (how one
    /// Cloud Run service calls another that requires authentication).
    Identity,
}

impl SecretSource {
    pub fn parse(text: &str) -> Result<SecretSource, String> {
        let google = |kind, key: Option<&str>| SecretSource::Google {
            kind,
            key: key.map(PathBuf::from),
        };
        match text.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(SecretSource::Env(name.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(SecretSource::File(path.into())),
            Some(("google", key)) if !key.is_empty() => Ok(google(TokenKind::Access, Some(key))),
            Some(("google-id-token", key)) if !key.is_empty() => {
                Ok(google(TokenKind::Identity, Some(key)))
            }
            Some(("aws", profile)) if !profile.is_empty() => {
                Ok(SecretSource::Aws(AwsSource::Profile(profile.into())))
            }
            Some(("aws-env", prefix)) if valid_prefix(prefix) => {
                Ok(SecretSource::Aws(AwsSource::Env(prefix.into())))
            }
            Some(("aws-file", path)) if !path.is_empty() => {
                Ok(SecretSource::Aws(AwsSource::File(path.into())))
            }
            Some(("kubeconfig", context)) if !context.is_empty() => {
                Ok(SecretSource::Kubernetes(KubeSource::Kubeconfig {
                    context: Some(context.into()),
                    file: None,
                }))
            }
            Some(("kubeconfig-file", path)) if !path.is_empty() => {
                Ok(SecretSource::Kubernetes(KubeSource::Kubeconfig {
                    context: None,
                    file: Some(path.into()),
                }))
            }
            None if text == "kubeconfig" => Ok(SecretSource::Kubernetes(KubeSource::Kubeconfig {
                context: None,
                file: None,
            })),
            None if text == "in-cluster" => Ok(SecretSource::Kubernetes(KubeSource::InCluster)),
            None if text == "aws" => Ok(SecretSource::Aws(AwsSource::Chain)),
            None if text == "google" => Ok(google(TokenKind::Access, None)),
            None if text == "google-id-token" => Ok(google(TokenKind::Identity, None)),
            _ => Err(format!(
                "{text:?} is not a secret source; write \"env:VARIABLE\", \"file:/path/to/file\", \"google\" (an access token), \"google-id-token\" (an identity token), \"aws\" or \"aws:PROFILE\" (AWS credentials; also \"aws-env:PREFIX\", \"aws-file:PATH\"), \"kubeconfig\" or \"kubeconfig:CONTEXT\" (a Kubernetes cluster; also \"kubeconfig-file:PATH\", \"in-cluster\")"
            )),
        }
    }
}

/// An environment variable prefix: letters, digits and underscores (`PROD_AWS`).
fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}
