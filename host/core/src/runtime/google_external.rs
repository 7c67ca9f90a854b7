//! Workload identity federation: Google credentials for a CI job without a key.
//!
//! An `external_account` file holds no secret, only where to find one: the CI's own OIDC token
//! (the *subject token*) in a file, at a URL, or printed by an executable. The token is
//! exchanged at Google's Security Token Service for a federated access token (RFC 8693), which
//! then impersonates the service account the file names, through the IAM Credentials API, for
//! an access token or an identity token with any audience. Every token is registered with the
//! redactor as soon as it is read.
//!
//! Google's own Rust auth crate reads these files too, but mints no identity tokens from them,
//! and the engine needs both kinds from the same credential: the exchange is a few documented
//! HTTP calls, made here with the broker's client.

use super::google::{SCOPE, TokenAnswer, TokenKind, exchange, unix_now};
use crate::redact::redactor;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_STS: &str = "https://sts.googleapis.com/v1/token";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Google's libraries run a credential executable only when this is set to 1: the file alone
/// must not be able to make the engine run a program.
const ALLOW_EXECUTABLES: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";
/// The longest a credential executable may run (Google's limit).
const MAX_EXECUTABLE_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_EXECUTABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `external_account` file.
#[derive(Clone)]
pub struct ExternalAccount {
    file: PathBuf,
    audience: String,
    subject_token_type: String,
    token_url: String,
    source: SubjectSource,
    /// `https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`
    impersonation_url: Option<String>,
    /// The access token's lifetime asked of IAM (the file's `token_lifetime_seconds`).
    lifetime_seconds: u64,
}

impl std::fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the external account of {}", self.file.display())
    }
}

/// Where the subject token comes from.
#[derive(Debug, Clone)]
enum SubjectSource {
    File {
        path: PathBuf,
        format: Format,
    },
    Url {
        url: String,
        headers: Vec<(String, String)>,
        format: Format,
    },
    Executable {
        command: Vec<String>,
        timeout: Duration,
    },
}

/// How the token is written: the whole text, or one field of a JSON object.
#[derive(Debug, Clone)]
enum Format {
    Text,
    Json { field: String },
}

#[derive(Deserialize)]
struct File {
    audience: String,
    subject_token_type: String,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<Impersonation>,
    credential_source: Source,
}

#[derive(Deserialize)]
struct Impersonation {
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Source {
    file: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    format: Option<SourceFormat>,
    executable: Option<Executable>,
    environment_id: Option<String>,
}

#[derive(Deserialize)]
struct SourceFormat {
    #[serde(rename = "type")]
    kind: String,
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct Executable {
    command: String,
    timeout_millis: Option<u64>,
}

impl ExternalAccount {
    /// Reads an `external_account` file; every problem names the file and the field.
    pub fn parse(path: &Path, text: &str) -> Result<ExternalAccount, String> {
        let at = path.display();
        let file: File = serde_json::from_str(text)
            .map_err(|e| format!("{at} is not a valid external account file: {e}"))?;
        let source = SubjectSource::parse(path, file.credential_source)?;
        let lifetime_seconds = file
            .service_account_impersonation
            .and_then(|i| i.token_lifetime_seconds)
            .unwrap_or(3600);
        Ok(ExternalAccount {
            file: path.to_path_buf(),
            audience: file.audience,
            subject_token_type: file.subject_token_type,
            token_url: file.token_url.unwrap_or_else(|| DEFAULT_STS.into()),
            source,
            impersonation_url: file.service_account_impersonation_url,
            lifetime_seconds,
        })
    }

    /// A token of `kind`: the subject token exchanged at STS, then, through the service account
    /// the file names, the access or identity token the plugin's request needs.
    pub(super) async fn mint(
        &self,
        http: &reqwest::Client,
        kind: TokenKind,
        audience: &str,
    ) -> Result<TokenAnswer, String> {
        let subject = self.source.read(http, self).await?;
        redactor().register(&subject);
        let federated = exchange(
            http,
            &self.token_url,
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("audience", &self.audience),
                ("scope", SCOPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("subject_token", &subject),
                ("subject_token_type", &self.subject_token_type),
            ],
        )
        .await?;
        let federated_token = federated
            .access_token
            .clone()
            .ok_or_else(|| format!("{} answered without an access token", self.token_url))?;
        redactor().register(&federated_token);
        match (kind, &self.impersonation_url) {
            (TokenKind::Access, None) => Ok(federated),
            (TokenKind::Identity, None) => Err(format!(
                "{}: an identity token needs a service account to impersonate; create the file with `gcloud iam workload-identity-pools create-cred-config … --service-account=EMAIL` (or `service_account` in google-github-actions/auth)",
                self.file.display()
            )),
            (TokenKind::Access, Some(url)) => self.access_token(http, url, &federated_token).await,
            (TokenKind::Identity, Some(url)) => {
                self.identity_token(http, url, &federated_token, audience)
                    .await
            }
        }
    }

    async fn access_token(
        &self,
        http: &reqwest::Client,
        url: &str,
        federated: &str,
    ) -> Result<TokenAnswer, String> {
        let body = serde_json::json!({
            "scope": [SCOPE],
            "lifetime": format!("{}s", self.lifetime_seconds),
        });
        let answer = iam_call(http, url, federated, &body).await?;
        let token = answer["accessToken"].as_str().map(String::from);
        let expires_in = answer["expireTime"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|t| t.as_secs().saturating_sub(unix_now()));
        Ok(TokenAnswer {
            access_token: token,
            id_token: None,
            expires_in,
        })
    }

    async fn identity_token(
        &self,
        http: &reqwest::Client,
        url: &str,
        federated: &str,
        audience: &str,
    ) -> Result<TokenAnswer, String> {
        let Some(account) = url.strip_suffix(":generateAccessToken") else {
            return Err(format!(
                "{}: service_account_impersonation_url should end in `:generateAccessToken`, not {url:?}",
                self.file.display()
            ));
        };
        let body = serde_json::json!({ "audience": audience, "includeEmail": true });
        let answer = iam_call(
            http,
            &format!("{account}:generateIdToken"),
            federated,
            &body,
        )
        .await?;
        Ok(TokenAnswer {
            access_token: None,
            id_token: answer["token"].as_str().map(String::from),
            expires_in: None,
        })
    }
}

/// A call to the IAM Credentials API with the federated token; its errors are Google's JSON
/// errors, whose message says which permission is missing.
async fn iam_call(
    http: &reqwest::Client,
    url: &str,
    federated: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let response = http
        .post(url)
        .bearer_auth(federated)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("the IAM Credentials API at {url} does not answer: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !status.is_success() {
        let message = value["error"]["message"].as_str().unwrap_or(text.trim());
        let hint = if status == reqwest::StatusCode::FORBIDDEN {
            "; the workload identity pool's principal needs roles/iam.workloadIdentityUser (and, for identity tokens, roles/iam.serviceAccountOpenIdTokenCreator) on the service account"
        } else {
            ""
        };
        return Err(format!(
            "{url} refused to impersonate the service account (HTTP {status}): {message}{hint}"
        ));
    }
    Ok(value)
}

impl SubjectSource {
    fn parse(file: &Path, source: Source) -> Result<SubjectSource, String> {
        let at = file.display();
        if source.environment_id.is_some() {
            return Err(format!(
                "{at}: AWS- and Azure-sourced external accounts are not supported; use a file, URL or executable credential source"
            ));
        }
        let format = match source.format {
            None => Format::Text,
            Some(f) if f.kind == "text" => Format::Text,
            Some(f) if f.kind == "json" => Format::Json {
                field: f.subject_token_field_name.ok_or_else(|| {
                    format!("{at}: a json credential_source.format needs subject_token_field_name")
                })?,
            },
            Some(f) => {
                return Err(format!(
                    "{at}: credential_source.format.type is {:?}; it is \"text\" or \"json\"",
                    f.kind
                ));
            }
        };
        match (source.file, source.url, source.executable) {
            (Some(path), None, None) => Ok(SubjectSource::File { path, format }),
            (None, Some(url), None) => Ok(SubjectSource::Url {
                url,
                headers: source.headers.into_iter().collect(),
                format,
            }),
            (None, None, Some(exe)) => {
                let command: Vec<String> =
                    exe.command.split_whitespace().map(String::from).collect();
                if command.is_empty() {
                    return Err(format!(
                        "{at}: credential_source.executable.command is empty"
                    ));
                }
                let timeout = exe
                    .timeout_millis
                    .map_or(DEFAULT_EXECUTABLE_TIMEOUT, Duration::from_millis)
                    .min(MAX_EXECUTABLE_TIMEOUT);
                Ok(SubjectSource::Executable { command, timeout })
            }
            _ => Err(format!(
                "{at}: credential_source names exactly one of `file`, `url` and `executable`"
            )),
        }
    }

    /// The subject token, as the source gives it now (CI tokens are short-lived: read anew for
    /// every exchange).
    async fn read(
        &self,
        http: &reqwest::Client,
        account: &ExternalAccount,
    ) -> Result<String, String> {
        match self {
            SubjectSource::File { path, format } => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    format!("cannot read the subject token file {}: {e}", path.display())
                })?;
                format.token(&text, &path.display().to_string())
            }
            SubjectSource::Url {
                url,
                headers,
                format,
            } => {
                let mut request = http.get(url);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| format!("the subject token URL {url} does not answer: {e}"))?;
                let status = response.status();
                let text = response.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "the subject token URL {url} refused (HTTP {status}): {}",
                        text.trim()
                    ));
                }
                format.token(&text, url)
            }
            SubjectSource::Executable { command, timeout } => {
                run_executable(command, *timeout, account).await
            }
        }
    }
}

impl Format {
    fn token(&self, text: &str, from: &str) -> Result<String, String> {
        let token = match self {
            Format::Text => Some(text.trim().to_string()),
            Format::Json { field } => serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v[field].as_str().map(String::from)),
        };
        match token {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(match self {
                Format::Text => format!("the subject token from {from} is empty"),
                Format::Json { field } => {
                    format!("the subject token from {from} is not JSON with a `{field}` string")
                }
            }),
        }
    }
}

/// Runs a credential executable as Google's executable-sourced credentials specify: only when
/// `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`, with the audience and token type in its
/// environment, and its answer a JSON object on stdout.
async fn run_executable(
    command: &[String],
    timeout: Duration,
    account: &ExternalAccount,
) -> Result<String, String> {
    if std::env::var(ALLOW_EXECUTABLES).as_deref() != Ok("1") {
        return Err(format!(
            "{} gets its subject token from the executable `{}`, which runs only when {ALLOW_EXECUTABLES}=1 is set",
            account.file.display(),
            command.join(" ")
        ));
    }
    let mut child = tokio::process::Command::new(&command[0]);
    child
        .args(&command[1..])
        .env("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", &account.audience)
        .env(
            "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE",
            &account.subject_token_type,
        )
        .env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, child.output())
        .await
        .map_err(|_| format!("`{}` did not answer within {timeout:?}", command[0]))?
        .map_err(|e| format!("`{}` could not run: {e}", command[0]))?;
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "`{}` (exit {}) did not print a JSON answer: {e}",
            command[0],
            output.status.code().unwrap_or(-1)
        )
    })?;
    if answer["success"] != true {
        return Err(format!(
            "`{}` failed to get a token: {} {}",
            command[0],
            answer["code"].as_str().unwrap_or(""),
            answer["message"].as_str().unwrap_or("")
        ));
    }
    if let Some(expiry) = answer["expiration_time"].as_u64()
        && expiry <= unix_now()
    {
        return Err(format!("`{}` answered with an expired token", command[0]));
    }
    answer["id_token"]
        .as_str()
        .or_else(|| answer["saml_response"].as_str())
        .map(String::from)
        .ok_or_else(|| format!("`{}` answered without an id_token", command[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_names_exactly_one_source_and_a_known_format() {
        let parse = |source: &str| {
            let text = format!(
                r#"{{"type":"external_account","audience":"//iam.googleapis.com/x","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","credential_source":{source}}}"#
            );
            ExternalAccount::parse(Path::new("wif.json"), &text)
        };
        assert!(parse(r#"{"file":"/tmp/t"}"#).is_ok());
        let both = parse(r#"{"file":"/tmp/t","url":"http://x"}"#).unwrap_err();
        assert!(
            both.contains("exactly one of `file`, `url` and `executable`"),
            "{both}"
        );
        let json = parse(r#"{"url":"http://x","format":{"type":"json"}}"#).unwrap_err();
        assert!(json.contains("subject_token_field_name"), "{json}");
        let aws = parse(r#"{"environment_id":"aws1","url":"http://x"}"#).unwrap_err();
        assert!(aws.contains("AWS- and Azure-sourced"), "{aws}");
    }

    #[test]
    fn a_json_subject_token_is_read_from_its_field() {
        let json = Format::Json {
            field: "value".into(),
        };
        assert_eq!(
            json.token(r#"{"value":"eyJ.a.b"}"#, "u").unwrap(),
            "eyJ.a.b"
        );
        assert!(
            json.token(r#"{"count":1}"#, "u")
                .unwrap_err()
                .contains("`value`")
        );
        assert_eq!(Format::Text.token("tok\n", "f").unwrap(), "tok");
        assert!(Format::Text.token("  ", "f").is_err());
    }
}
