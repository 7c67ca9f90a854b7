//! AWS credentials brokered by the host: a plugin asks for a request to be signed with a secret
//! handle, and the host signs it (Signature Version 4, `aws-sigv4`) with credentials the plugin
//! never sees. Each signature is checked against botocore's own signer on the same request;
//! web identity is exchanged at a real STS implementation (moto); AWS's published examples are
//! checked in the unit tests of `runtime::aws`.

mod support;

use engine::runtime::LoadedPlugin;
use engine::runtime::bindings::types::ServiceRef;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use support::*;

/// The hostile test plugin, granted the test server and the secret `token` from `from`.
async fn plugin_with(
    server: &TestServer,
    from: String,
    hosts: Option<Vec<String>>,
) -> (LoadedPlugin, engine::runtime::MemorySink) {
    plugin_in(runtime(), server, from, hosts).await
}

async fn plugin_in(
    (runtime, sink): (engine::runtime::Runtime, engine::runtime::MemorySink),
    server: &TestServer,
    from: String,
    hosts: Option<Vec<String>>,
) -> (LoadedPlugin, engine::runtime::MemorySink) {
    let grants = token_grants(server, from, hosts);
    (load_hostile(&runtime, grants).await, sink)
}

/// The plugin's ECS `DescribeClusters` to the test server's `/keep`, asking the host to sign
/// it (`extra` adds to or overrides the mode's config); its outcome and detail.
async fn signed_call(plugin: &LoadedPlugin, server: &TestServer, extra: Value) -> (String, String) {
    let mut config = json!({
        "mode": "aws-signed",
        "secret": "token",
        "url": format!("http://127.0.0.1:{}/keep", server.port),
        "service": "ecs",
        "region": "eu-west-1",
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let status = plugin
        .provider()
        .unwrap()
        .read(&ServiceRef {
            name: "svc".into(),
            config: config.to_string(),
        })
        .await;
    let deployed = match status {
        Ok(Some(s)) => s.deployed,
        other => panic!("{other:?}"),
    };
    let report: Value = serde_json::from_str(&deployed).unwrap();
    (
        report["outcome"].as_str().unwrap().to_string(),
        report["detail"].as_str().unwrap().to_string(),
    )
}

/// The request as the server received it, headers by lowercase name.
fn received(server: &TestServer) -> (BTreeMap<String, String>, String) {
    let requests = server.requests();
    let last = requests.last().expect("the server received the request");
    let headers = last
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    (headers, String::from_utf8(last.body.clone()).unwrap())
}

/// The signature botocore computes for the request the server received, with these keys.
fn botocore_signature(
    url: &str,
    headers: &BTreeMap<String, String>,
    body: &str,
    keys: (&str, &str, Option<&str>),
) -> String {
    const SCRIPT: &str = r#"
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
r = json.load(sys.stdin)
signed = r["headers"]["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
headers = {k: v for k, v in r["headers"].items() if k in signed and k != "host"}
request = AWSRequest(method="POST", url=r["url"], data=r["body"].encode(), headers=headers)
request.context["timestamp"] = r["headers"]["x-amz-date"]
auth = SigV4Auth(Credentials(r["key"], r["secret"], r["token"]), "ecs", "eu-west-1")
print(auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request))
"#;
    let python = python::venv(python::MOTO);
    let input = json!({
        "url": url, "headers": headers, "body": body,
        "key": keys.0, "secret": keys.1, "token": keys.2,
    });
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn signature_of(authorization: &str) -> &str {
    authorization.rsplit("Signature=").next().unwrap()
}

/// A credentials file with one `default` profile of temporary credentials.
fn credentials_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        "[default]\naws_access_key_id = ASIATESTKEYID\naws_secret_access_key = test-secret-access-key-value\naws_session_token = test-session-token-value\n",
    )
    .unwrap();
    path
}

#[tokio::test]
async fn the_host_signs_as_botocore_does_and_the_plugin_never_holds_a_key() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let from = format!("aws-file:{}", credentials_file(dir.path()).display());
    let url = format!("http://127.0.0.1:{}", server.port);
    let (plugin, sink) = plugin_with(&server, from, Some(vec![url.clone()])).await;

    let (outcome, detail) = signed_call(&plugin, &server, json!({})).await;
    assert_eq!(outcome, "ok", "{detail}");
    let (headers, body) = received(&server);
    assert_eq!(body, r#"{"clusters":["default"]}"#);
    assert!(!headers.contains_key("x-engine-aws-sigv4"), "{headers:?}");
    let authorization = &headers["authorization"];
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=ASIATESTKEYID/")
            && authorization.contains("/eu-west-1/ecs/aws4_request, SignedHeaders=")
            && authorization.contains("x-amz-target"),
        "{authorization}"
    );
    assert_eq!(headers["x-amz-security-token"], "test-session-token-value");
    let expected = botocore_signature(
        &format!("{url}/keep"),
        &headers,
        &body,
        (
            "ASIATESTKEYID",
            "test-secret-access-key-value",
            Some("test-session-token-value"),
        ),
    );
    assert_eq!(signature_of(authorization), expected);

    // Nothing the plugin or the engine reported holds the secret key or the token.
    let events = format!("{:?}", sink.events());
    for secret in ["test-secret-access-key-value", "test-session-token-value"] {
        assert!(!events.contains(secret), "{events}");
        assert!(!detail.contains(secret));
        assert_eq!(
            engine::redact::redactor().redact(secret),
            "[REDACTED]",
            "registered with the redactor"
        );
    }
}

#[tokio::test]
async fn aws_credentials_go_to_aws_apis_only_unless_the_grant_names_the_host() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let from = format!("aws-file:{}", credentials_file(dir.path()).display());
    let (plugin, sink) = plugin_with(&server, from, None).await;
    let (outcome, _) = signed_call(&plugin, &server, json!({})).await;
    assert_eq!(outcome, "err");
    assert!(server.requests().is_empty(), "nothing was sent");
    let denial = sink.denials().pop().expect("a denial");
    assert!(
        denial
            .attempted
            .contains("secret 'token' in the signature of POST"),
        "{denial:?}"
    );
    assert!(denial.hint.contains("to secrets.token.hosts"), "{denial:?}");
}

#[tokio::test]
async fn a_malformed_or_borrowed_sign_header_is_refused_with_the_form_it_needs() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let from = format!("aws-file:{}", credentials_file(dir.path()).display());
    let url = format!("http://127.0.0.1:{}", server.port);
    let (plugin, sink) = plugin_with(&server, from, Some(vec![url])).await;
    for (header, why) in [
        (
            "PLACEHOLDER; service=ecs",
            "needs service=NAME and region=NAME",
        ),
        (
            "PLACEHOLDER; service=ecs; region=eu-west-1; host=evil",
            "neither service=NAME",
        ),
        (
            "engine-secret-token-0000000000000000; service=ecs; region=eu-west-1",
            "not the placeholder of an AWS secret",
        ),
    ] {
        let (outcome, _) = signed_call(&plugin, &server, json!({ "sign_header": header })).await;
        assert_eq!(outcome, "err", "{header}");
        let denial = sink.denials().pop().expect("a denial");
        assert!(denial.hint.contains(why), "{header}: {denial:?}");
        assert!(
            denial
                .hint
                .contains("PLACEHOLDER; service=NAME; region=NAME"),
            "{denial:?}"
        );
    }
    assert!(server.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn aws_credentials_fill_no_ordinary_header() {
    let server = TestServer::start();
    let url = format!("http://127.0.0.1:{}", server.port);
    // An AWS secret's placeholder in an ordinary header gets no value: the call fails.
    let dir = tempfile::tempdir().unwrap();
    let from = format!("aws-file:{}", credentials_file(dir.path()).display());
    let (plugin, _sink) = plugin_with(&server, from, Some(vec![url.clone()])).await;
    let status = plugin
        .provider()
        .unwrap()
        .read(&ServiceRef {
            name: "svc".into(),
            config: json!({"mode": "leak-secret", "secret": "token", "url": format!("{url}/echo")})
                .to_string(),
        })
        .await;
    let status = format!("{status:?}");
    assert!(!status.contains("test-secret-access-key-value"), "{status}");
    assert!(
        server.requests().iter().all(|r| r
            .authorization
            .as_deref()
            .is_none_or(|a| !a.contains("secret"))),
        "no key went out"
    );
}

#[tokio::test]
async fn a_plan_may_send_signed_aws_reads_but_no_writes() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let from = format!("aws-file:{}", credentials_file(dir.path()).display());
    let url = format!("http://127.0.0.1:{}", server.port);
    let sink = engine::runtime::MemorySink::default();
    let runtime = engine::runtime::Runtime::new(engine::runtime::RuntimeOptions {
        cache_dir: Some(cache_dir()),
        sink: std::sync::Arc::new(sink.clone()),
        dry_run: true,
        ..Default::default()
    })
    .unwrap();
    let (plugin, sink) = plugin_in((runtime, sink), &server, from, Some(vec![url])).await;
    // AWS's JSON APIs read with POST: a signed Describe goes out during plan…
    let (outcome, detail) = signed_call(&plugin, &server, json!({})).await;
    assert_eq!(outcome, "ok", "{detail}");
    assert_eq!(server.requests().len(), 1);
    // …a write does not, and the plan says what it would have called.
    let target = json!({ "target": "AmazonEC2ContainerServiceV20141113.UpdateService" });
    let (outcome, _) = signed_call(&plugin, &server, target).await;
    assert_eq!(outcome, "err");
    assert_eq!(server.requests().len(), 1, "the write was not sent");
    assert!(
        sink.events().iter().any(|e| matches!(
            e,
            engine::runtime::PluginEvent::WouldCall { method, .. } if method == "POST"
        )),
        "{:?}",
        sink.events()
    );
}

/// Run by the tests below in a process of its own, whose environment holds the settings under
/// test (the chain reads the process's): a signed call with the secret from
/// `ENGINE_TEST_AWS_FROM` (default `aws`), its outcome and what was sent printed.
#[tokio::test]
#[ignore = "run in a child process by the credential chain tests"]
async fn web_identity_child() {
    let server = TestServer::start();
    let url = format!("http://127.0.0.1:{}", server.port);
    let from = std::env::var("ENGINE_TEST_AWS_FROM").unwrap_or_else(|_| "aws".into());
    let (plugin, _sink) = plugin_with(&server, from, Some(vec![url])).await;
    let (outcome, detail) = signed_call(&plugin, &server, json!({})).await;
    println!("outcome={outcome} detail={detail}");
    if outcome == "ok" {
        let (headers, _) = received(&server);
        println!("authorization={}", headers["authorization"]);
        println!(
            "token-sent={}",
            headers.contains_key("x-amz-security-token")
        );
    }
}

fn child(env: &[(&str, &str)]) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "web_identity_child", "--ignored", "--nocapture"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            command.env_remove(k);
        }
    }
    let home = tempfile::tempdir().unwrap();
    command
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied());
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn web_identity_is_exchanged_at_sts_for_temporary_credentials() {
    let moto = moto::Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("oidc-token");
    // A CI's OIDC token (GitHub's, say); moto's STS does not verify it, AWS's does.
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOnNob3AifQ.c2ln",
    )
    .unwrap();
    let out = child(&[
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/deployer"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", &moto.url),
        ("AWS_REGION", "eu-west-1"),
    ]);
    assert!(out.contains("outcome=ok"), "{out}");
    // Temporary credentials from STS (moto's start with ASIA, as AWS's do), with their token.
    assert!(
        out.contains("authorization=AWS4-HMAC-SHA256 Credential=ASIA"),
        "{out}"
    );
    assert!(out.contains("token-sent=true"), "{out}");

    // With nothing to find, the call fails and says where the engine looked.
    let out = child(&[]);
    assert!(out.contains("outcome=err"), "{out}");
    assert!(
        out.contains("no AWS credentials from the standard chain"),
        "{out}"
    );
}

#[tokio::test]
async fn a_profile_assumes_its_role_arn_with_the_keys_of_its_source_profile() {
    let moto = moto::Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        "[profile deploy]\nrole_arn = arn:aws:iam::123456789012:role/deployer\nsource_profile = base\nregion = eu-west-1\n",
    )
    .unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[base]\naws_access_key_id = AKIABASEKEYID\naws_secret_access_key = base-secret-key-value\n",
    )
    .unwrap();
    let files = [
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", moto.url.as_str()),
    ];
    // `aws:deploy` names the profile; `aws` with AWS_PROFILE finds it the same way.
    for (from, profile) in [("aws:deploy", None), ("aws", Some("deploy"))] {
        let mut env = files.to_vec();
        env.push(("ENGINE_TEST_AWS_FROM", from));
        env.extend(profile.map(|p| ("AWS_PROFILE", p)));
        let out = child(&env);
        assert!(out.contains("outcome=ok"), "{from}: {out}");
        // The role's temporary credentials sign, not the source profile's keys.
        assert!(
            out.contains("authorization=AWS4-HMAC-SHA256 Credential=ASIA"),
            "{from}: {out}"
        );
        assert!(out.contains("token-sent=true"), "{from}: {out}");
    }
}

#[tokio::test]
async fn keys_come_from_the_standard_variables_or_from_variables_the_grant_names() {
    let out = child(&[
        ("AWS_ACCESS_KEY_ID", "AKIASTANDARDKEY"),
        ("AWS_SECRET_ACCESS_KEY", "standard-secret-value"),
    ]);
    assert!(out.contains("Credential=AKIASTANDARDKEY/"), "{out}");
    assert!(out.contains("token-sent=false"), "{out}");
    // One job, two accounts: the grant names the variables' prefix.
    let out = child(&[
        ("ENGINE_TEST_AWS_FROM", "aws-env:PROD_AWS"),
        ("AWS_ACCESS_KEY_ID", "AKIASTANDARDKEY"),
        ("AWS_SECRET_ACCESS_KEY", "standard-secret-value"),
        ("PROD_AWS_ACCESS_KEY_ID", "AKIAPRODKEY"),
        ("PROD_AWS_SECRET_ACCESS_KEY", "prod-secret-value"),
        ("PROD_AWS_SESSION_TOKEN", "prod-session-token"),
    ]);
    assert!(out.contains("Credential=AKIAPRODKEY/"), "{out}");
    assert!(out.contains("token-sent=true"), "{out}");
}

/// The ECS task credentials endpoint, on loopback: answers with temporary credentials when
/// the request carries the container's authorization token.
fn container_endpoint() -> (String, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let srv = server.clone();
    std::thread::spawn(move || {
        for request in srv.incoming_requests() {
            let authorized = request
                .headers()
                .iter()
                .any(|h| h.field.equiv("authorization") && h.value == "container-auth-token");
            let response = if authorized {
                tiny_http::Response::from_string(
                    json!({
                        "AccessKeyId": "ASIACONTAINERKEY",
                        "SecretAccessKey": "container-secret-value",
                        "Token": "container-session-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                    })
                    .to_string(),
                )
            } else {
                tiny_http::Response::from_string("forbidden").with_status_code(403)
            };
            let _ = request.respond(response);
        }
    });
    (format!("http://127.0.0.1:{port}/v2/credentials"), server)
}

#[tokio::test]
async fn a_task_on_ecs_uses_its_container_credentials() {
    let (url, server) = container_endpoint();
    let out = child(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth-token"),
    ]);
    server.unblock();
    assert!(out.contains("Credential=ASIACONTAINERKEY/"), "{out}");
    assert!(out.contains("token-sent=true"), "{out}");
}

/// The EC2 instance metadata service, version 2, on loopback: a session token from a PUT,
/// then the role and its credentials, each only with that token.
fn instance_metadata() -> (String, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let srv = server.clone();
    std::thread::spawn(move || {
        for request in srv.incoming_requests() {
            let header = |name: &'static str| {
                request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv(name))
                    .map(|h| h.value.to_string())
            };
            let with_token = header("x-aws-ec2-metadata-token").as_deref() == Some("imds-session");
            let (status, body) = match (request.method(), request.url()) {
                (tiny_http::Method::Put, "/latest/api/token")
                    if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                {
                    (200, "imds-session".to_string())
                }
                (_, _) if !with_token => (401, String::new()),
                (_, "/latest/meta-data/iam/security-credentials/") => (200, "deployer".into()),
                (_, "/latest/meta-data/iam/security-credentials/deployer") => (
                    200,
                    json!({
                        "Code": "Success",
                        "Type": "AWS-HMAC",
                        "AccessKeyId": "ASIAINSTANCEKEY",
                        "SecretAccessKey": "instance-secret-value",
                        "Token": "instance-session-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                        "LastUpdated": "2026-12-01T00:00:00Z",
                    })
                    .to_string(),
                ),
                _ => (404, String::new()),
            };
            // The token's answer states its lifetime, as IMDS does.
            let ttl =
                tiny_http::Header::from_bytes("x-aws-ec2-metadata-token-ttl-seconds", "21600");
            let response = tiny_http::Response::from_string(body)
                .with_status_code(status)
                .with_header(ttl.unwrap());
            let _ = request.respond(response);
        }
    });
    (format!("http://127.0.0.1:{port}"), server)
}

#[tokio::test]
async fn an_instance_uses_its_role_through_imdsv2() {
    let (url, server) = instance_metadata();
    let out = child(&[
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", url.as_str()),
    ]);
    server.unblock();
    assert!(out.contains("Credential=ASIAINSTANCEKEY/"), "{out}");
    assert!(out.contains("token-sent=true"), "{out}");
}
