//! Google credentials brokered by the host: a real RSA key (made with openssl), a token
//! endpoint on loopback that verifies the signed JWT with the public key, and a plugin that only
//! ever holds a handle. Also the metadata server's protocol, and the default that access tokens
//! go to Google's APIs only.

mod support;

use engine::runtime::LoadedPlugin;
use engine::runtime::bindings::types::ServiceRef;
use engine::runtime::google::{Credential, GoogleTokens, TokenKind};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use support::*;

const EMAIL: &str = "deployer@shop.iam.gserviceaccount.com";

/// A token endpoint that checks every assertion's signature against the public key and
/// answers with a numbered token; it records the verified claims.
struct TokenEndpoint {
    url: String,
    claims: Arc<Mutex<Vec<Value>>>,
    server: Arc<tiny_http::Server>,
}

impl TokenEndpoint {
    fn start(public_pem: Vec<u8>, refuse: bool) -> TokenEndpoint {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!(
            "http://127.0.0.1:{}/token",
            server.server_addr().to_ip().unwrap().port()
        );
        let claims = Arc::new(Mutex::new(Vec::new()));
        let (srv, log, audience) = (server.clone(), claims.clone(), url.clone());
        std::thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = String::new();
                request.as_reader().read_to_string(&mut body).unwrap();
                let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                let field = |k: &str| {
                    form.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                assert_eq!(
                    field("grant_type"),
                    "urn:ietf:params:oauth:grant-type:jwt-bearer"
                );
                let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem).unwrap();
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
                validation.set_audience(&[&audience]);
                validation.set_issuer(&[EMAIL]);
                let verified =
                    jsonwebtoken::decode::<Value>(&field("assertion"), &key, &validation)
                        .expect("the assertion is signed by the service account's key");
                assert_eq!(verified.header.kid.as_deref(), Some("key-1"));
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(verified.claims.clone());
                    log.len()
                };
                let answer = if refuse {
                    tiny_http::Response::from_string(
                        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
                    )
                    .with_status_code(400)
                } else if verified.claims.get("target_audience").is_some() {
                    use base64::Engine;
                    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                        json!({ "aud": verified.claims["target_audience"], "exp": 4_000_000_000u64 }).to_string(),
                    );
                    tiny_http::Response::from_string(
                        json!({ "id_token": format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig-{n}") })
                            .to_string(),
                    )
                } else {
                    tiny_http::Response::from_string(json!({ "access_token": format!("ya29.minted-{n}"), "expires_in": 3599, "token_type": "Bearer" }).to_string())
                };
                let _ = request.respond(answer);
            }
        });
        TokenEndpoint {
            url,
            claims,
            server,
        }
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// A service-account key file with a fresh RSA key; returns it and the public key (PEM).
fn service_account_key(dir: &Path, token_uri: &str) -> (std::path::PathBuf, Vec<u8>) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl makes the test key");
    let key = json!({
        "type": "service_account",
        "project_id": "shop",
        "private_key_id": "key-1",
        "private_key": std::fs::read_to_string(&private).unwrap(),
        "client_email": EMAIL,
        "token_uri": token_uri,
    });
    let path = dir.join("key.json");
    std::fs::write(&path, key.to_string()).unwrap();
    (path, std::fs::read(&public).unwrap())
}

async fn leak(plugin: &LoadedPlugin, url: &str) -> String {
    let status = plugin
        .provider()
        .unwrap()
        .read(&ServiceRef {
            name: "svc".into(),
            config: json!({"mode": "leak-secret", "secret": "token", "url": url}).to_string(),
        })
        .await;
    format!("{status:?}")
}

/// The hostile test plugin, granted `server` and the secret `token` (the name it declares)
/// from `from`, limited to `hosts` when given.
async fn hostile_with(
    server: &TestServer,
    from: String,
    hosts: Option<Vec<String>>,
) -> (LoadedPlugin, engine::runtime::MemorySink) {
    let (runtime, sink) = runtime();
    let grants = token_grants(server, from, hosts);
    (load_hostile(&runtime, grants).await, sink)
}

/// The key and the token endpoint, made once per test (2048-bit keys take a moment).
fn setup(refuse: bool) -> (tempfile::TempDir, std::path::PathBuf, TokenEndpoint) {
    let dir = tempfile::tempdir().unwrap();
    // The public key goes into the endpoint, then the endpoint's URL into the key file.
    let (key, public) = service_account_key(dir.path(), "http://placeholder/token");
    let endpoint = TokenEndpoint::start(public, refuse);
    let mut file: Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    file["token_uri"] = json!(endpoint.url);
    std::fs::write(&key, file.to_string()).unwrap();
    (dir, key, endpoint)
}

#[tokio::test]
async fn an_access_token_is_minted_with_a_signed_jwt_cached_and_never_seen_by_the_plugin() {
    let (_dir, key, endpoint) = setup(false);
    let server = TestServer::start();
    let api = format!("http://127.0.0.1:{}", server.port);
    let (plugin, sink) = hostile_with(
        &server,
        format!("google:{}", key.display()),
        Some(vec![api.clone()]),
    )
    .await;
    let first = leak(&plugin, &format!("{api}/echo")).await;
    leak(&plugin, &format!("{api}/echo")).await;

    let sent: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        sent,
        [
            Some("Bearer ya29.minted-1".to_string()),
            Some("Bearer ya29.minted-1".to_string())
        ],
        "one token, reused"
    );
    let claims = endpoint.claims.lock().unwrap().clone();
    assert_eq!(claims.len(), 1, "cached: one exchange for two requests");
    assert_eq!(
        claims[0]["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(
        claims[0]["exp"].as_u64().unwrap() - claims[0]["iat"].as_u64().unwrap(),
        3600
    );
    // The plugin echoed what it got back; the token was redacted from it and from its logs.
    assert!(!first.contains("ya29.minted"), "{first}");
    assert!(
        sink.events()
            .iter()
            .all(|e| !format!("{e:?}").contains("ya29.minted"))
    );
}

#[tokio::test]
async fn an_access_token_goes_to_google_apis_only_unless_its_grant_names_the_host() {
    let (_dir, key, endpoint) = setup(false);
    let server = TestServer::start();
    let (plugin, sink) = hostile_with(&server, format!("google:{}", key.display()), None).await;
    leak(&plugin, &format!("http://127.0.0.1:{}/echo", server.port)).await;
    assert!(server.requests().is_empty(), "nothing was sent");
    assert!(
        endpoint.claims.lock().unwrap().is_empty(),
        "no token was even minted"
    );
    let denial = &sink.denials()[0];
    assert!(denial.hint.contains("to secrets.token.hosts"), "{denial:?}");
}

#[tokio::test]
async fn an_identity_token_is_minted_for_the_destination_as_its_audience() {
    let (_dir, key, endpoint) = setup(false);
    let server = TestServer::start();
    let (plugin, _sink) =
        hostile_with(&server, format!("google-id-token:{}", key.display()), None).await;
    leak(&plugin, &format!("http://127.0.0.1:{}/echo", server.port)).await;
    let claims = endpoint.claims.lock().unwrap().clone();
    assert_eq!(
        claims[0]["target_audience"],
        format!("http://127.0.0.1:{}", server.port)
    );
    assert!(claims[0].get("scope").is_none());
    let sent = server.requests()[0].authorization.clone().unwrap();
    assert!(
        sent.starts_with("Bearer eyJhbGciOiJSUzI1NiJ9.") && sent.ends_with(".sig-1"),
        "{sent}"
    );
}

#[tokio::test]
async fn a_refused_token_request_fails_the_call_with_the_endpoints_reason() {
    let (_dir, key, _endpoint) = setup(true);
    let server = TestServer::start();
    let api = format!("http://127.0.0.1:{}", server.port);
    let (plugin, sink) = hostile_with(
        &server,
        format!("google:{}", key.display()),
        Some(vec![api.clone()]),
    )
    .await;
    leak(&plugin, &format!("{api}/echo")).await;
    assert!(server.requests().is_empty());
    let logged: Vec<String> = sink.events().iter().map(|e| format!("{e:?}")).collect();
    assert!(
        logged.iter().any(|l| l.contains(
            "refused the token request (HTTP 400 Bad Request): invalid_grant Invalid JWT Signature."
        )),
        "{logged:#?}"
    );
}

#[tokio::test]
async fn the_metadata_server_protocol() {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let base = format!(
        "http://127.0.0.1:{}",
        server.server_addr().to_ip().unwrap().port()
    );
    let srv = server.clone();
    std::thread::spawn(move || {
        for request in srv.incoming_requests() {
            let flavored = request
                .headers()
                .iter()
                .any(|h| h.field.equiv("metadata-flavor") && h.value == "Google");
            let url = request.url().to_string();
            let answer = if !flavored {
                tiny_http::Response::from_string("missing Metadata-Flavor").with_status_code(403)
            } else if url.ends_with("/service-accounts/default/token") {
                tiny_http::Response::from_string(r#"{"access_token":"ya29.from-metadata","expires_in":3000,"token_type":"Bearer"}"#)
            } else if url.contains("/service-accounts/default/identity?audience=https%3A%2F%2Fapi-xyz.a.run.app&format=full") {
                tiny_http::Response::from_string("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjQwMDAwMDAwMDB9.sig")
            } else {
                tiny_http::Response::from_string(format!("unexpected {url}")).with_status_code(404)
            };
            let _ = request.respond(answer);
        }
    });
    let access = GoogleTokens::new(
        Credential::Metadata { base: base.clone() },
        TokenKind::Access,
    )
    .unwrap();
    assert_eq!(access.token("").await.unwrap(), "ya29.from-metadata");
    let identity = GoogleTokens::new(Credential::Metadata { base }, TokenKind::Identity).unwrap();
    assert_eq!(
        identity.token("https://api-xyz.a.run.app").await.unwrap(),
        "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjQwMDAwMDAwMDB9.sig"
    );
    server.unblock();
}

#[tokio::test]
async fn user_credentials_are_exchanged_with_their_refresh_token() {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let token_uri = format!(
        "http://127.0.0.1:{}/token",
        server.server_addr().to_ip().unwrap().port()
    );
    let srv = server.clone();
    std::thread::spawn(move || {
        for mut request in srv.incoming_requests() {
            let mut body = String::new();
            request.as_reader().read_to_string(&mut body).unwrap();
            let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            let expected = [
                ("grant_type", "refresh_token"),
                ("client_id", "client-1.apps.googleusercontent.com"),
                ("client_secret", "client-secret-1"),
                ("refresh_token", "1//refresh-token"),
            ];
            let ok = expected
                .iter()
                .all(|(k, v)| form.iter().any(|(n, x)| n == k && x == v));
            let answer = if ok {
                tiny_http::Response::from_string(
                    r#"{"access_token":"ya29.user-token","expires_in":3599}"#,
                )
            } else {
                tiny_http::Response::from_string(format!("unexpected form {form:?}"))
                    .with_status_code(400)
            };
            let _ = request.respond(answer);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let adc = dir.path().join("application_default_credentials.json");
    std::fs::write(
        &adc,
        json!({
            "type": "authorized_user",
            "client_id": "client-1.apps.googleusercontent.com",
            "client_secret": "client-secret-1",
            "refresh_token": "1//refresh-token",
            "token_uri": token_uri,
        })
        .to_string(),
    )
    .unwrap();
    let tokens =
        GoogleTokens::new(Credential::from_file(&adc).unwrap(), TokenKind::Access).unwrap();
    assert_eq!(tokens.token("").await.unwrap(), "ya29.user-token");
    server.unblock();
}

/// Google's STS and IAM Credentials API, and a CI's OIDC token endpoint, on loopback: each
/// verifies what it is sent (the CI's request token, the exchange's form, the federated token
/// and the request body) and refuses anything else, as the real ones would.
struct Federation {
    base: String,
    server: Arc<tiny_http::Server>,
}

const CI_REQUEST_TOKEN: &str = "ci-request-token";
const CI_OIDC_TOKEN: &str = "eyJci.oidc.token";
const POOL: &str =
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/github";
const DEPLOYER: &str = "deployer@shop.iam.gserviceaccount.com";

impl Federation {
    fn start() -> Federation {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let base = format!(
            "http://127.0.0.1:{}",
            server.server_addr().to_ip().unwrap().port()
        );
        let srv = server.clone();
        std::thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = String::new();
                request.as_reader().read_to_string(&mut body).unwrap();
                let bearer = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("authorization"))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default();
                let answer = Federation::answer(request.url(), &bearer, &body);
                let response = match answer {
                    Ok(text) => tiny_http::Response::from_string(text),
                    Err((code, text)) => {
                        tiny_http::Response::from_string(text).with_status_code(code)
                    }
                };
                let _ = request.respond(response);
            }
        });
        Federation { base, server }
    }

    fn answer(url: &str, bearer: &str, body: &str) -> Result<String, (u16, String)> {
        let iam = format!("/v1/projects/-/serviceAccounts/{DEPLOYER}");
        if url.starts_with("/oidc?audience=") {
            // The CI's endpoint (GitHub Actions' ACTIONS_ID_TOKEN_REQUEST_URL).
            if bearer != format!("Bearer {CI_REQUEST_TOKEN}") {
                return Err((401, "bad request token".into()));
            }
            return Ok(json!({ "value": CI_OIDC_TOKEN }).to_string());
        }
        if url == "/v1/token" {
            let form: std::collections::BTreeMap<String, String> =
                form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
            let expected = [
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("audience", POOL),
                ("scope", "https://www.googleapis.com/auth/cloud-platform"),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("subject_token", CI_OIDC_TOKEN),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ];
            for (k, v) in expected {
                if form.get(k).map(String::as_str) != Some(v) {
                    let error = json!({"error": "invalid_request", "error_description": format!("{k} is {:?}", form.get(k))});
                    return Err((400, error.to_string()));
                }
            }
            return Ok(json!({"access_token": "federated-token", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}).to_string());
        }
        if bearer != "Bearer federated-token" {
            let error = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}});
            return Err((401, error.to_string()));
        }
        let body: Value = serde_json::from_str(body).unwrap_or_default();
        if url == format!("{iam}:generateAccessToken") {
            assert_eq!(
                body["scope"],
                json!(["https://www.googleapis.com/auth/cloud-platform"])
            );
            assert_eq!(body["lifetime"], "1800s");
            return Ok(
                json!({"accessToken": "ya29.impersonated", "expireTime": "2099-01-01T00:00:00Z"})
                    .to_string(),
            );
        }
        if url == format!("{iam}:generateIdToken") {
            let audience = body["audience"].as_str().unwrap_or_default();
            assert_eq!(body["includeEmail"], true);
            return Ok(json!({ "token": format!("id-token-for-{audience}") }).to_string());
        }
        let error = json!({"error": {"code": 403, "message": format!("Permission 'iam.serviceAccounts.getAccessToken' denied on {url}"), "status": "PERMISSION_DENIED"}});
        Err((403, error.to_string()))
    }

    /// An `external_account` file, as google-github-actions/auth writes one, with `source`.
    fn file(&self, dir: &Path, source: Value, account: &str) -> std::path::PathBuf {
        let path = dir.join("wif.json");
        let file = json!({
            "type": "external_account",
            "audience": POOL,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", self.base),
            "service_account_impersonation_url": format!("{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken", self.base),
            "service_account_impersonation": { "token_lifetime_seconds": 1800 },
            "credential_source": source,
        });
        std::fs::write(&path, file.to_string()).unwrap();
        path
    }
}

#[tokio::test]
async fn a_ci_oidc_token_is_exchanged_for_access_and_identity_tokens_without_a_key() {
    let federation = Federation::start();
    let dir = tempfile::tempdir().unwrap();
    // GitHub Actions' form: the OIDC token from a URL, with the job's request token.
    let from_url = json!({
        "url": format!("{}/oidc?audience={POOL}", federation.base),
        "headers": { "Authorization": format!("Bearer {CI_REQUEST_TOKEN}") },
        "format": { "type": "json", "subject_token_field_name": "value" },
    });
    let file = federation.file(dir.path(), from_url, DEPLOYER);
    let credential = Credential::from_file(&file).unwrap();
    let access = GoogleTokens::new(credential.clone(), TokenKind::Access).unwrap();
    assert_eq!(access.token("").await.unwrap(), "ya29.impersonated");
    let identity = GoogleTokens::new(credential, TokenKind::Identity).unwrap();
    assert_eq!(
        identity.token("https://api-xyz.a.run.app").await.unwrap(),
        "id-token-for-https://api-xyz.a.run.app"
    );
    // Every token the exchange touched is redacted from what plugins print.
    let said = engine::redact::redactor().redact(&format!("{CI_OIDC_TOKEN} federated-token"));
    assert!(
        !said.contains(CI_OIDC_TOKEN) && !said.contains("federated-token"),
        "{said}"
    );

    // The same from a file the CI wrote.
    std::fs::write(dir.path().join("oidc.jwt"), format!("{CI_OIDC_TOKEN}\n")).unwrap();
    let file = federation.file(
        dir.path(),
        json!({ "file": dir.path().join("oidc.jwt") }),
        DEPLOYER,
    );
    let tokens = GoogleTokens::new(Credential::from_file(&file).unwrap(), TokenKind::Access);
    assert_eq!(
        tokens.unwrap().token("").await.unwrap(),
        "ya29.impersonated"
    );
    federation.server.unblock();
}

#[tokio::test]
async fn a_refused_federation_step_says_which_and_why() {
    let federation = Federation::start();
    let dir = tempfile::tempdir().unwrap();
    // A subject token STS does not accept.
    std::fs::write(dir.path().join("oidc.jwt"), "someone-elses-token").unwrap();
    let source = json!({ "file": dir.path().join("oidc.jwt") });
    let file = federation.file(dir.path(), source.clone(), DEPLOYER);
    let tokens = GoogleTokens::new(Credential::from_file(&file).unwrap(), TokenKind::Access);
    let error = tokens.unwrap().token("").await.unwrap_err();
    assert!(
        error.contains("/v1/token refused the token request (HTTP 400")
            && error.contains("subject_token"),
        "{error}"
    );
    // A service account the pool may not impersonate.
    std::fs::write(dir.path().join("oidc.jwt"), CI_OIDC_TOKEN).unwrap();
    let file = federation.file(dir.path(), source, "other@shop.iam.gserviceaccount.com");
    let tokens = GoogleTokens::new(Credential::from_file(&file).unwrap(), TokenKind::Access);
    let error = tokens.unwrap().token("").await.unwrap_err();
    assert!(
        error.contains("refused to impersonate the service account (HTTP 403")
            && error.contains("roles/iam.workloadIdentityUser"),
        "{error}"
    );
    // An executable source runs only when the user allows executables, as Google's libraries do.
    if std::env::var_os("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES").is_some() {
        return; // allowed in this environment: nothing to refuse
    }
    let script = dir.path().join("token.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho '{{\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"id_token\":\"{CI_OIDC_TOKEN}\"}}'\n"),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    let file = federation.file(
        dir.path(),
        json!({ "executable": { "command": script.display().to_string(), "timeout_millis": 5000 } }),
        DEPLOYER,
    );
    let credential = Credential::from_file(&file).unwrap();
    let error = GoogleTokens::new(credential, TokenKind::Access)
        .unwrap()
        .token("")
        .await
        .unwrap_err();
    assert!(
        error.contains("runs only when GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 is set"),
        "{error}"
    );
    federation.server.unblock();
}

/// An executable credential source, allowed: the test runs itself again as a child process
/// with `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1` (setting it here would race the other
/// tests' threads), and the child exchanges the token the executable prints.
#[tokio::test]
async fn an_allowed_credential_executable_gives_the_subject_token() {
    if std::env::var_os("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES").is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "an_allowed_credential_executable_gives_the_subject_token",
                "--nocapture",
            ])
            .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("1 passed"), "{said}");
        return;
    }
    let federation = Federation::start();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("token.sh");
    // Google's protocol: the audience comes in the environment, the answer is JSON on stdout.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE\" = '{POOL}' ] || exit 3\necho '{{\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"id_token\":\"{CI_OIDC_TOKEN}\"}}'\n"
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    let file = federation.file(
        dir.path(),
        json!({ "executable": { "command": script.display().to_string(), "timeout_millis": 5000 } }),
        DEPLOYER,
    );
    let tokens = GoogleTokens::new(Credential::from_file(&file).unwrap(), TokenKind::Access);
    assert_eq!(
        tokens.unwrap().token("").await.unwrap(),
        "ya29.impersonated"
    );
    federation.server.unblock();
}
