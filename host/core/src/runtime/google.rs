//! Google credentials, brokered by the host: OAuth2 access tokens for the Cloud APIs and
//! identity tokens for calling Cloud Run services, obtained, cached and refreshed here, so a
//! plugin only ever holds a secret handle and never a key or a token.
//!
//! Where the credentials come from, in order, unless the pipeline names a key file:
//! 1. `GOOGLE_APPLICATION_CREDENTIALS`: a service-account key (a JWT signed with its private key
//!    is exchanged at the key's `token_uri`) or user credentials (a refresh token);
//! 2. the application default credentials gcloud writes
//!    (`~/.config/gcloud/application_default_credentials.json`);
//! 3. the metadata server, when the engine runs on Google Cloud (`GCE_METADATA_HOST` overrides
//!    its address).
//!
//! A credentials file may also be an `external_account` (workload identity federation, as
//! `google-github-actions/auth` or `gcloud iam workload-identity-pools create-cred-config`
//! write it): the CI's own OIDC token (from a file, a URL or an executable, as the file says) is
//! exchanged at Google's STS for a federated token, which impersonates the service account the
//! file names for access and identity tokens ([`super::google_external`]).
//!
//! (An access token obtained elsewhere needs none of this: grant it as an ordinary secret,
//! `from = "env:VARIABLE"`.)

pub use crate::grants::source::TokenKind;
use crate::redact::redactor;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The scope of access tokens: the whole Cloud API surface, narrowed by IAM.
pub(super) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// A token is renewed when less than this is left of it.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A credential that can mint tokens.
#[derive(Clone)]
pub enum Credential {
    ServiceAccount {
        email: String,
        key_id: String,
        private_key: jsonwebtoken::EncodingKey,
        token_uri: String,
    },
    User {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    Metadata {
        base: String,
    },
    External(Box<super::google_external::ExternalAccount>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the refresh token.
        match self {
            Credential::ServiceAccount { email, .. } => write!(f, "service account {email}"),
            Credential::User { client_id, .. } => {
                write!(f, "user credentials (client {client_id})")
            }
            Credential::Metadata { base } => write!(f, "the metadata server at {base}"),
            Credential::External(account) => write!(f, "{account:?}"),
        }
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

impl Credential {
    /// Reads a credentials file: a service-account key, gcloud's user credentials, or an
    /// external account (workload identity federation).
    pub fn from_file(path: &Path) -> Result<Credential, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read Google credentials {}: {e}", path.display()))?;
        let key: KeyFile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a Google credentials file: {e}", path.display()))?;
        let need = |v: Option<String>, field: &str| {
            v.ok_or_else(|| format!("{} has no `{field}`", path.display()))
        };
        match key.kind.as_str() {
            "service_account" => {
                let pem = need(key.private_key, "private_key")?;
                Ok(Credential::ServiceAccount {
                    email: need(key.client_email, "client_email")?,
                    key_id: key.private_key_id.unwrap_or_default(),
                    private_key: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(
                        |e| format!("the private key in {} does not parse: {e}", path.display()),
                    )?,
                    token_uri: key.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
                })
            }
            "authorized_user" => Ok(Credential::User {
                client_id: need(key.client_id, "client_id")?,
                client_secret: need(key.client_secret, "client_secret")?,
                refresh_token: need(key.refresh_token, "refresh_token")?,
                token_uri: key.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
            }),
            "external_account" => super::google_external::ExternalAccount::parse(path, &text)
                .map(|account| Credential::External(Box::new(account))),
            other => Err(format!(
                "{}: credentials of type {other:?} are not supported; use a service-account key, an external account (workload identity federation) or `gcloud auth application-default login`",
                path.display()
            )),
        }
    }

    /// The first source of the chain that has credentials.
    pub fn discover() -> Result<Credential, String> {
        if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            return Credential::from_file(Path::new(&path));
        }
        let adc = std::env::var_os("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud")))
            .map(|dir| dir.join("application_default_credentials.json"));
        if let Some(path) = adc.filter(|p| p.exists()) {
            return Credential::from_file(&path);
        }
        if let Ok(host) = std::env::var("GCE_METADATA_HOST") {
            return Ok(Credential::Metadata {
                base: format!("http://{host}"),
            });
        }
        // On Google Cloud the metadata server's name resolves; elsewhere it does not.
        use std::net::ToSocketAddrs;
        if ("metadata.google.internal", 80)
            .to_socket_addrs()
            .is_ok_and(|mut a| a.next().is_some())
        {
            return Ok(Credential::Metadata {
                base: "http://metadata.google.internal".into(),
            });
        }
        Err("no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run `gcloud auth application-default login`, or run on Google Cloud; or name a key file with from = \"google:/path/to/key.json\"".into())
    }
}

#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub expires_in: Option<u64>,
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `exp` claim of a JWT (identity tokens carry their expiry inside).
fn jwt_expiry(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_u64()
}

/// Tokens of one kind from one credential, cached per audience and renewed before they expire.
pub struct GoogleTokens {
    credential: Credential,
    kind: TokenKind,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for GoogleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} tokens from {:?}", self.kind, self.credential)
    }
}

impl GoogleTokens {
    pub fn new(credential: Credential, kind: TokenKind) -> Result<GoogleTokens, String> {
        if kind == TokenKind::Identity && matches!(credential, Credential::User { .. }) {
            return Err("user credentials cannot mint identity tokens for a service; use a service-account key (GOOGLE_APPLICATION_CREDENTIALS or from = \"google-id-token:/path/key.json\") or run on Google Cloud".into());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(GoogleTokens {
            credential,
            kind,
            http,
            cache: tokio::sync::Mutex::default(),
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// A token valid for at least a few more minutes. `audience` matters for identity tokens
    /// only (the origin of the service called, such as `https://api-xyz.a.run.app`).
    pub async fn token(&self, audience: &str) -> Result<String, String> {
        let key = match self.kind {
            TokenKind::Access => String::new(),
            TokenKind::Identity => audience.to_string(),
        };
        let mut cache = self.cache.lock().await;
        if let Some((token, expires)) = cache.get(&key)
            && expires.saturating_duration_since(Instant::now()) > REFRESH_MARGIN
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.mint(audience).await?;
        redactor().register(&token);
        cache.insert(key, (token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    async fn mint(&self, audience: &str) -> Result<(String, Duration), String> {
        let answer = match &self.credential {
            Credential::ServiceAccount {
                email,
                key_id,
                private_key,
                token_uri,
            } => {
                let now = unix_now();
                let mut claims = serde_json::json!({
                    "iss": email, "aud": token_uri, "iat": now, "exp": now + 3600,
                });
                match self.kind {
                    TokenKind::Access => claims["scope"] = SCOPE.into(),
                    TokenKind::Identity => claims["target_audience"] = audience.into(),
                }
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid = (!key_id.is_empty()).then(|| key_id.clone());
                let assertion = jsonwebtoken::encode(&header, &claims, private_key)
                    .map_err(|e| format!("cannot sign the token request for {email}: {e}"))?;
                exchange(
                    &self.http,
                    token_uri,
                    &[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", &assertion),
                    ],
                )
                .await?
            }
            Credential::User {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                exchange(
                    &self.http,
                    token_uri,
                    &[
                        ("grant_type", "refresh_token"),
                        ("client_id", client_id),
                        ("client_secret", client_secret),
                        ("refresh_token", refresh_token),
                    ],
                )
                .await?
            }
            Credential::External(account) => account.mint(&self.http, self.kind, audience).await?,
            Credential::Metadata { base } => {
                let account =
                    format!("{base}/computeMetadata/v1/instance/service-accounts/default");
                let request = match self.kind {
                    TokenKind::Access => self.http.get(format!("{account}/token")),
                    TokenKind::Identity => self
                        .http
                        .get(format!("{account}/identity"))
                        .query(&[("audience", audience), ("format", "full")]),
                };
                let response = request
                    .header("Metadata-Flavor", "Google")
                    .send()
                    .await
                    .map_err(|e| format!("the metadata server at {base} does not answer: {e}"))?;
                let status = response.status();
                let text = response.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "the metadata server refused a token (HTTP {status}): {}",
                        text.trim()
                    ));
                }
                match self.kind {
                    TokenKind::Access => serde_json::from_str(&text).map_err(|e| {
                        format!("the metadata server's token answer does not parse: {e}")
                    })?,
                    TokenKind::Identity => TokenAnswer {
                        access_token: None,
                        id_token: Some(text.trim().to_string()),
                        expires_in: None,
                    },
                }
            }
        };
        let token = match self.kind {
            TokenKind::Access => answer.access_token,
            TokenKind::Identity => answer.id_token,
        }
        .ok_or_else(|| {
            let kind = match self.kind {
                TokenKind::Access => "access",
                TokenKind::Identity => "identity",
            };
            format!("the token endpoint answered without an {kind} token")
        })?;
        let lifetime = answer
            .expires_in
            .or_else(|| jwt_expiry(&token).map(|exp| exp.saturating_sub(unix_now())))
            .unwrap_or(3600);
        Ok((token, Duration::from_secs(lifetime)))
    }
}

/// An OAuth2 token request (a form POST) and its answer, with the endpoint's reason when it
/// refuses.
pub(super) async fn exchange(
    http: &reqwest::Client,
    token_uri: &str,
    form: &[(&str, &str)],
) -> Result<TokenAnswer, String> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http
        .post(token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("the token endpoint {token_uri} does not answer: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        // OAuth2 errors: {"error": "invalid_grant", "error_description": "..."}.
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|v| {
                format!(
                    "{} {}",
                    v["error"].as_str().unwrap_or(""),
                    v["error_description"].as_str().unwrap_or("")
                )
            })
            .unwrap_or(text);
        return Err(format!(
            "{token_uri} refused the token request (HTTP {status}): {}",
            reason.trim()
        ));
    }
    serde_json::from_str(&text)
        .map_err(|e| format!("the answer of {token_uri} does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_token_expiry_comes_from_the_jwt() {
        use base64::Engine;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1900000000}"#);
        assert_eq!(jwt_expiry(&format!("h.{payload}.s")), Some(1_900_000_000));
        assert_eq!(jwt_expiry("garbage"), None);
    }

    #[test]
    fn credential_files_are_checked_and_user_credentials_cannot_mint_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("adc.json");
        std::fs::write(
            &user,
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}"#,
        )
        .unwrap();
        let credential = Credential::from_file(&user).unwrap();
        assert!(format!("{credential:?}").contains("user credentials"));
        let e = GoogleTokens::new(credential, TokenKind::Identity).unwrap_err();
        assert!(e.contains("cannot mint identity tokens"), "{e}");
        let other = dir.path().join("other.json");
        std::fs::write(&other, r#"{"type":"impersonated_service_account"}"#).unwrap();
        assert!(
            Credential::from_file(&other)
                .unwrap_err()
                .contains("not supported")
        );
        // An external account file without what it needs names the file and the field.
        std::fs::write(&other, r#"{"type":"external_account"}"#).unwrap();
        let e = Credential::from_file(&other).unwrap_err();
        assert!(
            e.contains("is not a valid external account file") && e.contains("audience"),
            "{e}"
        );
        let broken = dir.path().join("broken.json");
        std::fs::write(
            &broken,
            r#"{"type":"service_account","client_email":"a@b","private_key":"nope"}"#,
        )
        .unwrap();
        assert!(
            Credential::from_file(&broken)
                .unwrap_err()
                .contains("does not parse")
        );
    }
}
