//! pipeline.toml validation, through the library and through `engine validate`: every class of
//! problem is reported at file:line:col with the line and a hint, all of them in one run, with
//! exit code 2.

mod support;

use engine::config::{self, Artifact, Ingress};
use std::path::Path;
use std::process::Command;

const VALID: &str = r#"
name = "shop"

[variables]
registry = "europe-docker.pkg.dev/shop/images"
version = "1.4.2"

[environments.staging.variables]
version = "1.5.0-rc1"

[environments.staging.services.api]
max_instances = 2

[defaults]
provider = "hostile"
cpu = 1
memory = "512Mi"

[plugins.hostile]
source = "plugins/hostile.wasm"
sha256 = "00000000000000000000000000000000000000000000000000000000000000ff"
allow_http = ["https://api.example.com"]
dirs = [{ host = "data", guest = "/data", writable = true }]
timeout = "10s"

[services.db-migrate]
image = "${registry}/migrate:${version}"
provider_config = { region = "europe-west1", note = "price is $5 and $${literal}" }

[services.api]
image = "${registry}/api:${version}"
depends_on = ["db-migrate"]
port = 8080
cpu = "500m"
max_instances = 10
env = { LOG_LEVEL = "info" }
secrets = { DB_PASSWORD = "projects/shop/secrets/db/versions/latest" }
ingress = "internal"
hooks = { pre = ["./migrate.sh"] }

[services.web]
image = "${registry}/web:${version}"
depends_on = ["api"]
"#;

fn parse(text: &str, env: Option<&str>) -> Result<config::Pipeline, config::ConfigError> {
    config::parse("pipeline.toml", text, Path::new("/srv/shop"), env)
}

#[test]
fn a_valid_pipeline_applies_defaults_overrides_and_variables() {
    let p = parse(VALID, Some("staging")).unwrap();
    assert_eq!(p.name, "shop");
    assert_eq!(
        p.services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["db-migrate", "api", "web"]
    );
    let api = &p.services[1];
    assert_eq!(api.provider, "hostile");
    assert_eq!(
        api.artifact,
        Artifact::Image("europe-docker.pkg.dev/shop/images/api:1.5.0-rc1".into())
    );
    assert_eq!(
        api.cpu_millis,
        Some(500),
        "the service overrides the default"
    );
    assert_eq!(api.memory_mib, Some(512), "inherited from [defaults]");
    assert_eq!(api.max_instances, Some(2), "the staging override wins");
    assert_eq!(api.ingress, Ingress::Internal);
    assert_eq!(api.strategy, "all-at-once");
    assert_eq!(api.pre_hooks, ["./migrate.sh"]);
    assert_eq!(
        api.secrets["DB_PASSWORD"],
        "projects/shop/secrets/db/versions/latest"
    );
    assert_eq!(
        p.services[0].provider_config["note"],
        "price is $5 and ${literal}"
    );
    assert_eq!(p.services[2].cpu_millis, Some(1000));
    assert!(
        p.plugins.contains_key("all-at-once"),
        "built-in plugins in use are added"
    );
    let hostile = &p.plugins["hostile"];
    assert_eq!(
        hostile.source,
        engine::plugins::PluginSource::File {
            path: "/srv/shop/plugins/hostile.wasm".into(),
            sha256: "00000000000000000000000000000000000000000000000000000000000000ff".into()
        }
    );
    assert_eq!(hostile.grants.timeout.as_deref(), Some("10s"));

    let production = parse(VALID, None).unwrap();
    assert_eq!(production.services[1].max_instances, Some(10));
    assert_eq!(
        production.services[1].artifact,
        Artifact::Image("europe-docker.pkg.dev/shop/images/api:1.4.2".into())
    );
}

/// Replaces `from` by `to` in the valid pipeline and returns the rendered problems.
fn problems(from: &str, to: &str, env: Option<&str>) -> String {
    assert!(VALID.contains(from), "{from}");
    parse(&VALID.replacen(from, to, 1), env)
        .unwrap_err()
        .to_string()
}

#[test]
fn an_unknown_key_is_located_and_the_nearest_name_suggested() {
    let out = problems("port = 8080", "prot = 8080", None);
    assert!(
        out.starts_with("error: unknown key `prot` in [services.api]\n  --> pipeline.toml:33:1\n   |\n33 | prot = 8080\n   | ^^^^\n   = help: did you mean `port`?"),
        "{out}"
    );
}

#[test]
fn undefined_plugins_services_and_variables_are_each_reported() {
    let text = VALID
        .replacen("provider = \"hostile\"", "provider = \"hostle\"", 1)
        .replacen("depends_on = [\"api\"]", "depends_on = [\"apii\"]", 1)
        .replacen(
            "${version}\"\ndepends_on = [\"db",
            "${versoin}\"\ndepends_on = [\"db",
            1,
        );
    let out = parse(&text, None).unwrap_err().to_string();
    // Set in [defaults], it is every service's provider: one problem, at its line.
    assert!(out.contains("error: the provider set in [defaults] is `hostle`, which is not a declared or built-in plugin\n  --> pipeline.toml:15:12"), "{out}");
    assert_eq!(out.matches("is `hostle`").count(), 1, "{out}");
    assert!(out.contains("= help: did you mean `hostile`?"), "{out}");
    assert!(out.contains("error: undefined variable `versoin`"), "{out}");
    assert!(out.contains("= help: did you mean `${version}`?"), "{out}");
    assert!(
        out.contains("error: service `web` depends on `apii`, which the pipeline does not define"),
        "{out}"
    );
    assert!(out.contains("= help: did you mean `api`?"), "{out}");
    assert!(out.ends_with("problems in pipeline.toml"), "{out}");
}

#[test]
fn variables_may_use_other_variables_but_not_in_a_cycle() {
    let text = VALID.replacen(
        "registry = \"europe-docker.pkg.dev/shop/images\"",
        "project = \"shop\"\nregistry = \"europe-docker.pkg.dev/${project}/images\"\nliteral = \"$${project}\"",
        1,
    );
    let pipeline = parse(&text, Some("staging")).unwrap();
    let api = pipeline.services.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(
        api.artifact,
        Artifact::Image("europe-docker.pkg.dev/shop/images/api:1.5.0-rc1".into())
    );
    let cyclic = text.replacen("project = \"shop\"", "project = \"${registry}\"", 1);
    let out = parse(&cyclic, None).unwrap_err().to_string();
    assert!(
        out.contains(
            "error: variables refer to each other in a cycle: project → registry → project"
        ),
        "{out}"
    );
}

#[test]
fn a_dependency_cycle_is_printed() {
    let out = problems(
        "[services.db-migrate]\n",
        "[services.db-migrate]\ndepends_on = [\"web\"]\n",
        None,
    );
    assert!(
        out.contains(
            "error: services depend on each other in a cycle: db-migrate → web → api → db-migrate"
        ),
        "{out}"
    );
}

#[test]
fn bad_types_sizes_and_grants_are_reported() {
    let out = problems("memory = \"512Mi\"", "memory = \"lots\"", None);
    assert!(out.contains("error: `memory` must be a size such as \"512MiB\", \"2GiB\" or \"512Mi\"\n  --> pipeline.toml:17:10"), "{out}");
    let out = problems("timeout = \"10s\"", "timeout = \"ten seconds\"", None);
    assert!(
        out.contains("error: [plugins.hostile] timeout: \"ten seconds\" is not a duration"),
        "{out}"
    );
    let out = problems("port = 8080", "port = \"8080\"", None);
    assert!(
        out.contains("error: `port` must be an integer, not a string"),
        "{out}"
    );
    let out = problems("sha256 = \"0000", "sha256 = \"zz00", None);
    assert!(
        out.contains("error: `sha256` must be 64 hexadecimal characters"),
        "{out}"
    );
}

#[test]
fn an_unknown_environment_is_reported_with_the_ones_that_exist() {
    let out = problems("name = \"shop\"", "name = \"shop\"", Some("stagin"));
    assert!(
        out.contains("error: there is no environment `stagin`"),
        "{out}"
    );
    assert!(out.contains("= help: did you mean `staging`?"), "{out}");
}

#[test]
fn an_environment_may_only_override_services_the_pipeline_defines() {
    let out = problems(
        "[environments.staging.services.api]",
        "[environments.staging.services.apu]",
        Some("staging"),
    );
    assert!(
        out.contains("error: the environment overrides service `apu`, which the pipeline does not define\n  --> pipeline.toml:11:32"),
        "{out}"
    );
    assert!(out.contains("= help: did you mean `api`?"), "{out}");
}

#[test]
fn a_plugin_of_the_wrong_kind_is_refused() {
    let out = problems(
        "[services.web]\n",
        "[services.web]\nstrategy = \"hostile\"\nprovider = \"all-at-once\"\n",
        None,
    );
    assert!(out.contains("error: the provider of service `web` is `all-at-once`, a strategy plugin, not a provider plugin"), "{out}");
}

#[test]
fn invalid_toml_is_reported_at_its_place() {
    let out = parse("name = \"shop\"\n[services.api\n", None)
        .unwrap_err()
        .to_string();
    assert!(out.starts_with("error: invalid TOML: "), "{out}");
    assert!(out.contains("--> pipeline.toml:2:"), "{out}");
}

#[test]
fn engine_validate_prints_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let broken = VALID.replacen("port = 8080", "prot = 8080", 1).replacen(
        "ingress = \"internal\"",
        "ingress = \"everyone\"",
        1,
    );
    std::fs::write(&file, broken).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: unknown key `prot` in [services.api]\n  --> {}:33:1",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: `ingress` is `everyone`"),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with(&format!("2 problems in {}", file.display())),
        "{stderr}"
    );

    std::fs::write(&file, VALID).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["validate", "--skip-plugins", "--env", "staging"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pipeline `shop` (environment `staging`) is valid: 3 services in 3 waves"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  1. db-migrate\n  2. api\n  3. web"),
        "{stdout}"
    );
}

/// The JSON Schema `engine schema` prints is a valid schema, accepts the example pipeline, and
/// rejects what validation rejects structurally.
#[test]
fn engine_schema_describes_the_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("schema")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let as_json = |text: &str| serde_json::to_value(text.parse::<toml::Table>().unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&as_json(VALID))
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!validator.is_valid(&as_json(&VALID.replacen("port = 8080", "prot = 8080", 1))));
    assert!(!validator.is_valid(&as_json(&VALID.replacen("port = 8080", "port = 70000", 1))));
    assert!(!validator.is_valid(&as_json(&VALID.replacen(
        "ingress = \"internal\"",
        "ingress = \"everyone\"",
        1
    ))));
    // Every secret source and per-plugin limit the engine accepts, the schema accepts.
    let plugin = r#"
[plugins.cloudrun]
disk = "2GiB"

[plugins.cloudrun.secrets]
google = { from = "google", in_plan = false }
id = { from = "google-id-token:/keys/sa.json" }
token = { from = "env:TOKEN", hosts = ["https://api.example.com"] }
"#;
    let errors: Vec<String> = validator
        .iter_errors(&as_json(&format!("{VALID}{plugin}")))
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!validator.is_valid(&as_json(&format!(
        "{VALID}{}",
        plugin.replace("google-id-token:", "vault:")
    ))));
}

/// A pipeline directory with the hostile test plugin copied in as plugins/hostile.wasm.
fn with_plugin(pipeline: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let bytes = std::fs::read(support::testing_plugin("testing-hostile")).unwrap();
    std::fs::write(dir.path().join("plugins/hostile.wasm"), &bytes).unwrap();
    let sha = engine::runtime::cache::sha256_hex(&bytes);
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        pipeline.replace(
            "00000000000000000000000000000000000000000000000000000000000000ff",
            &sha,
        ),
    )
    .unwrap();
    (dir, file, sha)
}

fn validate(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("validate")
        .arg(file)
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_configuration_is_checked_against_the_plugins_own_schema() {
    let (_dir, file, _) = with_plugin(VALID);
    let (code, stdout, stderr) = validate(&file);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("is valid: 3 services"), "{stdout}");

    let broken = VALID.replacen(
        "ingress = \"internal\"",
        "ingress = \"internal\"\nstrategy_config = { skip_analysis = \"yes\", retire_previos = true }",
        1,
    );
    let (_dir, file, _) = with_plugin(&broken);
    let (code, _, stderr) = validate(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: `strategy_config` of service `api`: \"yes\" is not of type \"boolean\"\n  --> {}:39:37",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("= help: see its schema with `engine plugins inspect all-at-once`"),
        "{stderr}"
    );
    // An unknown key points at itself, with the nearest key the plugin's schema knows.
    let column = broken
        .lines()
        .nth(38)
        .and_then(|l| l.find("retire_previos"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!(
            "error: `strategy_config` of service `api`: unknown key `retire_previos`\n  --> {}:39:{column}",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("= help: did you mean `retire_previous`?"),
        "{stderr}"
    );
}

#[test]
fn a_plugin_that_does_not_match_its_pin_is_reported_at_its_table() {
    let (dir, file, sha) = with_plugin(VALID);
    std::fs::write(dir.path().join("plugins/hostile.wasm"), b"tampered").unwrap();
    let (code, _, stderr) = validate(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("does not match its pinned sha256"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("expected: {sha}")), "{stderr}");
    assert!(
        stderr.contains(&format!("--> {}:19:10", file.display())),
        "{stderr}"
    );
}

#[test]
fn engine_validate_checks_a_pipeline_whose_secrets_this_machine_cannot_read() {
    // The data pipeline example needs Google credentials (and the admin key, given here): a
    // pull-request job without them can still validate it, with a warning; a run cannot.
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/cloudrun-data-pipeline/pipeline.toml");
    let home = tempfile::tempdir().unwrap();
    let engine = |command: &str| {
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args([command, example.to_str().unwrap(), "--env", "production"])
            .env("ENGINE_CACHE_DIR", support::cache_dir())
            .env("ENGINE_STATE", home.path().join("state.db"))
            .env("HOME", home.path())
            .env("ADMIN_API_KEY", "not-a-real-key")
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("CLOUDSDK_CONFIG")
            .env_remove("GCE_METADATA_HOST")
            .output()
            .unwrap()
    };
    let out = engine("validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("secret 'google': no Google credentials found")
            && stderr.contains("a real run will need it"),
        "{stderr}"
    );
    // Each at the line that grants the secret, with where to look.
    let at = |stderr: &str, line: &str| {
        assert!(
            stderr.contains(&format!("pipeline.toml:{line}:1")),
            "{stderr}"
        );
        assert!(
            stderr.contains("= help: docs/cloudrun.md#credentials"),
            "{stderr}"
        );
    };
    let text = std::fs::read_to_string(&example).unwrap();
    let line_of = |start: &str| {
        let i = text.lines().position(|l| l.starts_with(start)).unwrap();
        (i + 1).to_string()
    };
    at(&stderr, &line_of("google = { from"));
    at(&stderr, &line_of("monitoring = { from"));
    let out = engine("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Google credentials found"), "{stderr}");
    at(&stderr, &line_of("google = { from"));
}

#[test]
fn a_release_digest_names_what_the_provider_is_given_and_nothing_else() {
    let base = parse(VALID, None).unwrap();
    let digest = |p: &config::Pipeline, name: &str| p.service(name).unwrap().release_digest();
    let api = digest(&base, "api");
    assert!(api.starts_with("sha256:") && api.len() == 7 + 64, "{api}");
    assert_eq!(api, digest(&parse(VALID, None).unwrap(), "api"));
    assert_ne!(api, digest(&base, "web"));

    // Key order in the provider's configuration is not part of the release.
    let reordered = VALID.replace(
        r#"{ region = "europe-west1", note = "price is $5 and $${literal}" }"#,
        r#"{ note = "price is $5 and $${literal}", region = "europe-west1" }"#,
    );
    assert_ne!(reordered, VALID);
    let reordered = parse(&reordered, None).unwrap();
    assert_eq!(
        digest(&base, "db-migrate"),
        digest(&reordered, "db-migrate")
    );

    // How it is rolled out is not either; what it runs is.
    let rollout = VALID.replace(
        "hooks = { pre = [\"./migrate.sh\"] }",
        "hooks = { pre = [\"./other.sh\"] }\nstrategy = \"canary\"",
    );
    assert_eq!(api, digest(&parse(&rollout, None).unwrap(), "api"));
    let env = VALID.replace("LOG_LEVEL = \"info\"", "LOG_LEVEL = \"debug\"");
    assert_ne!(api, digest(&parse(&env, None).unwrap(), "api"));
    assert_ne!(api, digest(&parse(VALID, Some("staging")).unwrap(), "api"));
}

#[test]
fn services_without_a_provider_are_one_problem_not_one_each() {
    let text = "name = \"shop\"\n\n[services.api]\nimage = \"api:1\"\n\n[services.web]\nimage = \"web:1\"\n\n[services.worker]\nimage = \"worker:1\"\n";
    let err = parse(text, None).unwrap_err();
    let missing: Vec<_> = err
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("`provider`"))
        .collect();
    assert_eq!(missing.len(), 1, "{err}");
    assert_eq!(
        missing[0].message,
        "services `api`, `web` and `worker` have no `provider`"
    );
    assert_eq!(
        missing[0].help.as_deref(),
        Some("set `provider` in [defaults] for all of them, or in each service")
    );
    assert_eq!(&text[missing[0].span.clone()], "api");

    let one = parse(
        "name = \"shop\"\n\n[services.api]\nimage = \"api:1\"\n",
        None,
    )
    .unwrap_err();
    assert!(
        one.to_string()
            .contains("error: service `api` has no `provider`"),
        "{one}"
    );
}

#[test]
fn a_mistake_in_defaults_is_one_problem_for_every_service_it_reaches() {
    // The ATP example's two services share [defaults.provider_config]; a typo there is one
    // error at its own line naming both, not one per service.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloudrun-atp");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(example.join("pipeline.toml")).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("vpc_egress"))
        .unwrap();
    std::fs::write(&file, text.replace("\nvpc_egress =", "\nvpc_egres =")).unwrap();
    let (code, _, stderr) = validate(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: `provider_config` of services `atp-router` and `atp-memory-gateway`: unknown key `vpc_egres`\n  --> {}:{line}:1",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("= help: did you mean `vpc_egress`?"),
        "{stderr}"
    );
    assert!(stderr.contains("error: 1 problem in"), "{stderr}");
}

#[test]
fn a_check_delay_is_a_duration_of_at_most_an_hour() {
    let with = |delay: &str| {
        format!("{VALID}\n[[services.web.checks]]\nplugin = \"http\"\ndelay = {delay}\n")
    };
    let p = parse(&with("\"30s\""), None).unwrap();
    let web = p.service("web").unwrap();
    assert_eq!(web.checks[0].delay, std::time::Duration::from_secs(30));

    let out = parse(&with("\"soon\""), None).unwrap_err().to_string();
    assert!(
        out.contains("error: a check's `delay` is not a duration"),
        "{out}"
    );
    assert!(
        out.contains("= help: a duration such as \"30s\" or \"2m\", at most 1h"),
        "{out}"
    );
    let out = parse(&with("\"2h\""), None).unwrap_err().to_string();
    assert!(
        out.contains("error: a check's `delay` of 2h is longer than 1h"),
        "{out}"
    );
    assert!(out.contains("strategy's pause"), "{out}");
    let out = parse(&with("30"), None).unwrap_err().to_string();
    assert!(out.contains("a check's `delay`"), "{out}");
}

#[test]
fn an_environment_can_move_a_service_to_another_provider_with_its_own_grants() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/cloudrun-data-pipeline/pipeline.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let dir = example.parent().unwrap();
    let dev = config::parse("pipeline.toml", &text, dir, Some("development")).unwrap();
    let api = dev.service("convergence-api").unwrap();
    assert_eq!(api.provider, "local");
    // The artifact replaces the image; the Cloud Run settings stay with Cloud Run.
    assert_eq!(api.artifact, Artifact::Path("python3".into()));
    assert_eq!(api.provider_config, serde_json::json!({ "port": 8000 }));
    assert_eq!(api.env["LOG_LEVEL"], "DEBUG");
    assert_eq!(api.env["ENVIRONMENT"], "development");
    // The environment's grant replaces the pipeline's for the check plugin; plugins no
    // service of the environment uses are not loaded at all.
    assert_eq!(
        dev.plugins["http"].grants.allow_http,
        ["http://localhost:*"]
    );
    assert!(!dev.plugins.contains_key("cloudrun") && !dev.plugins.contains_key("metrics"));

    let production = config::parse("pipeline.toml", &text, dir, Some("production")).unwrap();
    let api = production.service("convergence-api").unwrap();
    assert_eq!(api.provider, "cloudrun");
    assert!(matches!(&api.artifact, Artifact::Image(i) if i.ends_with("api:v1.1.0")));
    assert_eq!(
        production.plugins["http"].grants.allow_http,
        ["https://*.run.app"]
    );
    assert!(production.plugins.contains_key("metrics"));
}

const WITH_RESOURCES: &str = r#"
name = "shop"

[defaults]
provider = "local"
provider_config = { port = 9000 }

[services.api]
image = "api:1"

[services.web]
image = "web:1"
env = { API = "${services.api.url}", JOB = "${resources.nightly.outputs.name}" }

[resources.nightly]
provider = "local"
kind = "job"
environments = ["production"]
spec = { uri = "${services.api.url}/nightly" }

[environments.production.resources.nightly]
spec = { uri = "${services.api.url}/nightly", schedule = "0 0 * * *" }
"#;

fn resource_problems(from: &str, to: &str, env: Option<&str>) -> String {
    assert!(WITH_RESOURCES.contains(from), "{from}");
    match parse(&WITH_RESOURCES.replacen(from, to, 1), env) {
        Ok(_) => panic!("{to} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn resources_join_the_graph_through_their_references_and_exist_in_their_environments() {
    let production = parse(WITH_RESOURCES, Some("production")).unwrap();
    let nightly = production.resource("nightly").unwrap();
    assert_eq!(nightly.depends_on, ["api"]);
    assert_eq!(
        nightly.spec["schedule"], "0 0 * * *",
        "the environment's override"
    );
    assert_eq!(
        nightly.provider_config["port"], 9000,
        "[defaults]' config, same provider"
    );
    let web = production.service("web").unwrap();
    assert_eq!(web.depends_on, ["api", "nightly"]);
    assert_eq!(
        web.env["API"], "${services.api.url}",
        "filled in at run time"
    );
    assert_eq!(production.unit_waves().len(), 3);

    // Elsewhere the resource does not exist, so nothing may refer to it.
    let out = parse(WITH_RESOURCES, None).unwrap_err().to_string();
    assert!(
        out.contains("${resources.nightly.outputs.name} names no resource of the pipeline"),
        "{out}"
    );
}

#[test]
fn wrong_references_are_reported_where_they_are_written() {
    let env = Some("production");
    let out = resource_problems(
        "${services.api.url}\", JOB",
        "${services.apu.url}\", JOB",
        env,
    );
    assert!(
        out.contains("error: ${services.apu.url} names no service of the pipeline"),
        "{out}"
    );
    assert!(out.contains("did you mean `api`?"), "{out}");
    assert!(
        out.contains("--> pipeline.toml:13:15"),
        "at the env line: {out}"
    );

    let out = resource_problems(
        "${services.api.url}\", JOB",
        "${services.api.uri}\", JOB",
        env,
    );
    assert!(
        out.contains("a service's reference is `${services.api.url}`"),
        "{out}"
    );

    let out = resource_problems(
        "image = \"web:1\"",
        "image = \"${services.api.url}/web:1\"",
        env,
    );
    assert!(out.contains("in `image` is never filled in"), "{out}");

    // A cycle through a resource: api waits on the job, which calls api.
    let out = resource_problems(
        "image = \"api:1\"",
        "image = \"api:1\"\ndepends_on = [\"nightly\"]",
        env,
    );
    assert!(
        out.contains("services and resources depend on each other in a cycle: api → nightly → api"),
        "{out}"
    );

    let out = resource_problems("[resources.nightly]", "[resources.api]", env);
    assert!(out.contains("has the name of a service"), "{out}");

    let out = resource_problems("kind = \"job\"\n", "", env);
    assert!(out.contains("resource `nightly` has no `kind`"), "{out}");

    let out = resource_problems(
        "[environments.production.resources.nightly]",
        "[environments.production.resources.nigthly]",
        env,
    );
    assert!(
        out.contains(
            "the environment overrides resource `nigthly`, which the pipeline does not define"
        ),
        "{out}"
    );
}

/// What only the provider knows is checked when it loads: that it manages resources, has the
/// kind, and the spec passes the kind's schema (a reference standing in as a URL).
#[test]
fn a_resources_kind_and_spec_are_checked_against_its_provider() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let pipeline = r#"
name = "shop"

[plugins.cloudrun]
allow_http = ["https://run.googleapis.com"]

[services.api]
provider = "cloudrun"
image = "api:1"
provider_config = { project = "shop", region = "europe-west1" }

[resources.nightly]
provider = "cloudrun"
kind = "scheduler-jobs"
provider_config = { project = "shop", region = "europe-west1" }
spec = { schedule = "0 0 * * *", uri = "${services.api.url}/nightly" }

[resources.hourly]
provider = "cloudrun"
kind = "scheduler-job"
provider_config = { project = "shop", region = "europe-west1" }
spec = { schedule = "0 * * * *", uri = "${services.api.url}/hourly", retry = { count = 9 } }

[resources.local]
provider = "local"
kind = "job"
"#;
    std::fs::write(&file, pipeline).unwrap();
    let (code, _, stderr) = validate(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("resource `nightly`: provider `cloudrun` has no kind `scheduler-jobs`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `scheduler-job`?"), "{stderr}");
    assert!(
        stderr.contains("`spec` of resource `hourly`: 9 is greater than the maximum of 5"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the provider of resource `local` is `local`, which manages no resources"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("^https?://"),
        "the reference stands in as a URL: {stderr}"
    );
}
