//! Google credentials brokered by the host: a real RSA key (made with openssl), a token
//! endpoint on loopback that verifies the signed JWT with the public key, and a plugin that only
//! ever holds a handle. Also the metadata server's protocol, and the default that access tokens
//! go to Google's APIs only.

mod support;

use engine::grants::{GrantsConfig, SecretGrantConfig};
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
    let grants = GrantsConfig {
        allow_http: vec![format!("http://127.0.0.1:{}", server.port)],
        secrets: [(
            "token".to_string(),
            SecretGrantConfig {
                from,
                hosts,
                in_plan: None,
            },
        )]
        .into(),
        ..Default::default()
    };
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
