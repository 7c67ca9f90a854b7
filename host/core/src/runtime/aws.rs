//! AWS credentials, brokered by the host: a plugin holds a secret handle and asks the host to
//! sign a request with it; the host finds the credentials, keeps them fresh and signs with
//! Signature Version 4, so no key, secret or session token ever enters the sandbox.
//!
//! Where the credentials come from (the `from` of the secret's grant):
//! - `aws`: the standard chain, in AWS's own order: the `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` variables; the shared config and credentials
//!   files (`AWS_PROFILE`, `role_arn` with `source_profile`, `credential_process`); web identity
//!   (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged at STS, how CI deploys without a
//!   key); the ECS container credentials endpoint; the EC2 instance metadata (IMDSv2);
//! - `aws:PROFILE`: one named profile of the shared files;
//! - `aws-env:PREFIX`: `PREFIX_ACCESS_KEY_ID`, `PREFIX_SECRET_ACCESS_KEY` and, if set,
//!   `PREFIX_SESSION_TOKEN` (one CI job deploying to two accounts);
//! - `aws-file:PATH`: the `default` profile of a credentials file at PATH.
//!
//! The chain and the signing are AWS's own crates (`aws-config`, `aws-sigv4`); this module only
//! chooses the source, caches, redacts and applies the signature.

use crate::grants::source::AwsSource;
use crate::redact::redactor;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::{HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime};

/// Credentials are renewed when less than this is left of them (AWS's SDKs use 5 minutes).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The region of STS when neither the environment nor a profile names one.
const FALLBACK_REGION: &str = "us-east-1";

/// The credentials of one secret grant: where they come from, and the last ones obtained.
pub struct AwsCredentials {
    source: AwsSource,
    /// Built on first use: the standard chain reads files and picks its providers then.
    provider: tokio::sync::OnceCell<SharedCredentialsProvider>,
    /// The latest credentials; the lock also makes concurrent requests wait for one renewal.
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(f, "AWS credentials from {}", self.source)
    }
}

impl AwsCredentials {
    /// Checks what can be checked before any request: the variables `aws-env:` names, the file
    /// `aws-file:` names. The chain is only searched when a request needs it.
    pub fn new(source: AwsSource) -> Result<AwsCredentials, String> {
        let fixed = match &source {
            AwsSource::Env(prefix) => Some(from_prefixed_env(prefix)?),
            AwsSource::File(path) if !path.is_file() => {
                return Err(format!("{} is not a readable file", path.display()));
            }
            _ => None,
        };
        if let Some(credentials) = &fixed {
            register(credentials);
        }
        Ok(AwsCredentials {
            source,
            provider: tokio::sync::OnceCell::new(),
            cached: tokio::sync::Mutex::new(fixed),
        })
    }

    /// Credentials valid for a while yet, renewed first if they are about to expire; every new
    /// secret key and session token is registered with the redactor before it is used.
    pub async fn current(&self) -> Result<Credentials, String> {
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = cached.as_ref()
            && fresh(credentials)
        {
            return Ok(credentials.clone());
        }
        let provider = self
            .provider
            .get_or_try_init(|| provider_for(&self.source))
            .await?;
        let credentials = provider.provide_credentials().await.map_err(|e| {
            format!(
                "no AWS credentials from {}: {} (docs/pipeline-reference.md#aws-credentials says where the engine looks)",
                self.source,
                aws_error_chain(&e)
            )
        })?;
        register(&credentials);
        *cached = Some(credentials.clone());
        Ok(credentials)
    }
}

/// Whether credentials are still good for [`REFRESH_MARGIN`] (credentials without an expiry,
/// long-term keys, always are).
fn fresh(credentials: &Credentials) -> bool {
    credentials
        .expiry()
        .is_none_or(|expiry| expiry > SystemTime::now() + REFRESH_MARGIN)
}

fn register(credentials: &Credentials) {
    redactor().register(credentials.secret_access_key());
    if let Some(token) = credentials.session_token() {
        redactor().register(token);
    }
}

/// `PREFIX_ACCESS_KEY_ID`, `PREFIX_SECRET_ACCESS_KEY` and the optional `PREFIX_SESSION_TOKEN`.
fn from_prefixed_env(prefix: &str) -> Result<Credentials, String> {
    let var = |suffix: &str| std::env::var(format!("{prefix}_{suffix}")).ok();
    let missing = |suffix: &str| format!("environment variable {prefix}_{suffix} is not set");
    let key_id = var("ACCESS_KEY_ID").ok_or_else(|| missing("ACCESS_KEY_ID"))?;
    let secret = var("SECRET_ACCESS_KEY").ok_or_else(|| missing("SECRET_ACCESS_KEY"))?;
    let token = var("SESSION_TOKEN").filter(|t| !t.is_empty());
    Ok(Credentials::new(
        key_id,
        secret,
        token,
        None,
        "engine-aws-env",
    ))
}

async fn provider_for(source: &AwsSource) -> Result<SharedCredentialsProvider, String> {
    let config = provider_config().await;
    Ok(match source {
        AwsSource::Chain => SharedCredentialsProvider::new(
            DefaultCredentialsChain::builder()
                .configure(config)
                .build()
                .await,
        ),
        AwsSource::Profile(name) => SharedCredentialsProvider::new(
            ProfileFileCredentialsProvider::builder()
                .configure(&config)
                .profile_name(name)
                .build(),
        ),
        AwsSource::File(path) => {
            let files = aws_runtime::env_config::file::EnvConfigFiles::builder()
                .with_file(
                    aws_runtime::env_config::file::EnvConfigFileKind::Credentials,
                    path,
                )
                .build();
            SharedCredentialsProvider::new(
                ProfileFileCredentialsProvider::builder()
                    .configure(&config)
                    .profile_files(files)
                    .profile_name("default")
                    .build(),
            )
        }
        // Long-term keys: cached for good once read, so this runs once at most.
        AwsSource::Env(prefix) => SharedCredentialsProvider::new(from_prefixed_env(prefix)?),
    })
}

/// The environment and files as the process sees them, an HTTPS client on ring (as the rest of
/// the engine's), and the region for STS: from `AWS_REGION` or the profile, else
/// [`FALLBACK_REGION`] (not from the instance metadata, whose probe would delay every first
/// call off AWS).
async fn provider_config() -> ProviderConfig {
    use aws_config::environment::EnvironmentVariableRegionProvider;
    use aws_config::profile::ProfileFileRegionProvider;
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = ProviderConfig::without_region().with_http_client(http);
    let region = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(
            ProfileFileRegionProvider::builder()
                .configure(&config)
                .build(),
        )
        .or_else(FALLBACK_REGION)
        .region()
        .await;
    config.with_region(region)
}

/// An AWS error with its causes, which say which provider failed and why.
fn aws_error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    redactor().redact(&text)
}

/// The request header in which a plugin asks the host to sign: `PLACEHOLDER; service=ecs;
/// region=us-east-1`, the placeholder being an AWS secret's. The host removes it, signs the
/// request as it goes out and adds the signature's headers.
pub const SIGN_HEADER: &str = "x-engine-aws-sigv4";

/// Reads a [`SIGN_HEADER`] value: the placeholder of the secret to sign with, and the scope.
pub fn parse_sign_header(value: &str) -> Result<(&str, SigningScope), String> {
    let mut parts = value.split(';').map(str::trim);
    let placeholder = parts.next().unwrap_or_default();
    let (mut service, mut region) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("service", v)) if service.is_none() => service = Some(v),
            Some(("region", v)) if region.is_none() => region = Some(v),
            _ => {
                return Err(format!(
                    "{part:?} is neither service=NAME nor region=NAME, or is given twice"
                ));
            }
        }
    }
    let valid = |v: &str| {
        !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    match (service, region) {
        (Some(service), Some(region)) if valid(service) && valid(region) => Ok((
            placeholder,
            SigningScope {
                service: service.to_string(),
                region: region.to_string(),
            },
        )),
        _ => Err(
            "it needs service=NAME and region=NAME, each lowercase letters, digits and dashes"
                .into(),
        ),
    }
}

/// Whether a request is an AWS read that a dry run (`engine plan`) may send although it is a
/// POST: it asks to be signed, and its JSON-protocol operation (`X-Amz-Target:
/// Service.Operation`) is a `Describe…`, `List…` or `Get…`. (Query-protocol reads are sent as
/// GET, which a dry run allows anyway.)
pub fn is_signed_read(headers: &HeaderMap) -> bool {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default();
    headers.contains_key(SIGN_HEADER)
        && ["Describe", "List", "Get"].iter().any(|verb| {
            operation
                .strip_prefix(verb)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
}

/// Where a request is signed for: the service's signing name (`ecs`, `elasticloadbalancing`,
/// `monitoring`…) and the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningScope {
    pub service: String,
    pub region: String,
}

/// Signs a request about to be sent: adds `Authorization`, `X-Amz-Date` and, for temporary
/// credentials, `X-Amz-Security-Token` to `headers`. `url` and `headers` are exactly what goes
/// out (the client adds only `Host`, from the URL, and `Content-Length`, which are not signed
/// differently: `Host` is signed from the URL).
pub fn sign_request(
    credentials: &Credentials,
    scope: &SigningScope,
    time: SystemTime,
    (method, url): (&http::Method, &url::Url),
    headers: &mut HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&scope.region)
        .name(&scope.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot sign for {scope:?}: {e}"))?;
    let signed_headers: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let request = SignableRequest::new(
        method.as_str(),
        url.as_str(),
        signed_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("cannot sign {method} {url}: {e}"))?;
    let (instructions, _signature) = sign(request, &params.into())
        .map_err(|e| format!("cannot sign {method} {url}: {e}"))?
        .into_parts();
    let (added, _query) = instructions.into_parts();
    for header in added {
        let mut value = HeaderValue::from_str(header.value())
            .map_err(|_| format!("the signature's {} is not a header value", header.name()))?;
        // The signature is no secret, but kept out of debug output with the token.
        value.set_sensitive(header.sensitive() || header.name() == "authorization");
        headers.insert(header.name(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials() -> Credentials {
        // The example key of AWS's Signature Version 4 documentation and test suite.
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "example",
        )
    }

    fn example_time() -> SystemTime {
        // 2015-08-30T12:36:00Z, the examples' X-Amz-Date.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn signed(
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        scope: (&str, &str),
    ) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let scope = SigningScope {
            service: scope.0.into(),
            region: scope.1.into(),
        };
        let url = url::Url::parse(url).unwrap();
        sign_request(
            &example_credentials(),
            &scope,
            example_time(),
            (&method, &url),
            &mut map,
            b"",
        )
        .unwrap();
        map
    }

    #[test]
    fn the_signature_is_that_of_aws_published_examples() {
        // "get-vanilla" of AWS's Signature Version 4 test suite.
        let headers = signed(
            http::Method::GET,
            "https://example.amazonaws.com/",
            &[],
            ("service", "us-east-1"),
        );
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
        assert_eq!(
            headers["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // The IAM ListUsers request of AWS's "Create a signed AWS API request" page.
        let headers = signed(
            http::Method::GET,
            "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
            &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            ("iam", "us-east-1"),
        );
        assert_eq!(
            headers["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert!(headers["authorization"].is_sensitive());
    }

    #[test]
    fn temporary_credentials_send_their_session_token_signed() {
        let credentials = Credentials::new(
            "ASIAEXAMPLE",
            "secret-key-value",
            Some("session-token-value".into()),
            None,
            "test",
        );
        let mut headers = HeaderMap::new();
        let url = url::Url::parse("https://ecs.eu-west-1.amazonaws.com/").unwrap();
        let scope = SigningScope {
            service: "ecs".into(),
            region: "eu-west-1".into(),
        };
        sign_request(
            &credentials,
            &scope,
            example_time(),
            (&http::Method::POST, &url),
            &mut headers,
            b"{}",
        )
        .unwrap();
        assert_eq!(headers["x-amz-security-token"], "session-token-value");
        let authorization = headers["authorization"].to_str().unwrap();
        assert!(
            authorization.contains("/20150830/eu-west-1/ecs/aws4_request")
                && authorization.contains("x-amz-security-token"),
            "{authorization}"
        );
    }

    #[test]
    fn the_sign_header_names_a_secret_a_service_and_a_region() {
        let (placeholder, scope) =
            parse_sign_header("engine-secret-aws-0a; service=ecs; region=eu-west-1").unwrap();
        assert_eq!(placeholder, "engine-secret-aws-0a");
        assert_eq!(
            scope,
            SigningScope {
                service: "ecs".into(),
                region: "eu-west-1".into()
            }
        );
        for bad in [
            "engine-secret-aws-0a",
            "engine-secret-aws-0a; service=ecs",
            "engine-secret-aws-0a; service=ecs; region=EU",
            "engine-secret-aws-0a; service=ecs; region=a; region=b",
            "engine-secret-aws-0a; service=ecs; region=eu-west-1; host=x",
        ] {
            assert!(parse_sign_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signed_describe_list_or_get_is_a_read() {
        let headers = |target: &str, signed: bool| {
            let mut map = HeaderMap::new();
            map.insert("x-amz-target", HeaderValue::from_str(target).unwrap());
            if signed {
                map.insert(
                    SIGN_HEADER,
                    HeaderValue::from_static("p; service=ecs; region=x"),
                );
            }
            map
        };
        let ecs = "AmazonEC2ContainerServiceV20141113";
        assert!(is_signed_read(&headers(
            &format!("{ecs}.DescribeServices"),
            true
        )));
        assert!(is_signed_read(&headers(
            &format!("{ecs}.ListTaskDefinitions"),
            true
        )));
        assert!(is_signed_read(&headers(
            "GraniteServiceVersion20100801.GetMetricData",
            true
        )));
        assert!(!is_signed_read(&headers(
            &format!("{ecs}.DescribeServices"),
            false
        )));
        assert!(!is_signed_read(&headers(
            &format!("{ecs}.UpdateService"),
            true
        )));
        assert!(!is_signed_read(&headers(&format!("{ecs}.Getaway"), true)));
        assert!(!is_signed_read(&HeaderMap::new()));
    }

    #[test]
    fn prefixed_variables_are_read_and_their_absence_named() {
        let error = from_prefixed_env("ENGINE_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            error,
            "environment variable ENGINE_TEST_SURELY_UNSET_ACCESS_KEY_ID is not set"
        );
    }

    #[test]
    fn credentials_are_renewed_before_they_expire() {
        let expiring = |in_secs| {
            Credentials::new(
                "id",
                "secret",
                None,
                Some(SystemTime::now() + Duration::from_secs(in_secs)),
                "test",
            )
        };
        assert!(fresh(&expiring(3600)));
        assert!(!fresh(&expiring(60)));
        assert!(fresh(&example_credentials()));
    }
}
