//! The `ecs` provider end to end: `engine plan`, `run`, `rollback` and `destroy` against moto
//! (AWS's APIs in server mode, from PyPI), with boto3 as an independent client that sets up
//! the shared infrastructure (VPC, load balancer, listeners, cluster) and reads back what the
//! engine made. moto runs no containers and its load balancers serve nothing, so a data plane
//! beside it (tests/support/ecs_data_plane.py) starts a real demo-service process for each task
//! set, registers it in the task set's target group, routes requests by moto's listener rules
//! and weights, and publishes what it served to moto's CloudWatch: a canary's split, a check
//! through the test listener and a CloudWatch gate meet real traffic.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use support::moto::{DataPlane, DataPlaneOptions, Moto, TEST_KEYS};
use support::text;

/// The shared infrastructure the provider expects and never makes: a VPC with two subnets, a
/// security group, an internet-facing ALB with a production listener (80) and a test listener
/// (8080) whose default actions answer 404, and the cluster.
const INFRASTRUCTURE: &str = r#"
ec2 = boto3.client("ec2", **kw); elb = boto3.client("elbv2", **kw); ecs = boto3.client("ecs", **kw)
vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
# Fargate tasks in moto need the VPC's DNS hostnames (as a real VPC with private DNS does).
ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"eu-west-1{z}")["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
sg = ec2.create_security_group(GroupName="exchange", Description="exchange", VpcId=vpc)["GroupId"]
lb = elb.create_load_balancer(Name="exchange", Subnets=subnets, SecurityGroups=[sg], Scheme="internet-facing", Type="application")["LoadBalancers"][0]
def listener(port):
    return elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
        DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404", "ContentType": "text/plain", "MessageBody": "no route"}}])["Listeners"][0]["ListenerArn"]
ecs.create_cluster(clusterName="exchange")
print(json.dumps({"vpc": vpc, "subnets": subnets, "sg": sg, "dns": lb["DNSName"], "lb": lb["LoadBalancerArn"], "listener": listener(80), "test_listener": listener(8080)}))
"#;

/// What the engine made for one service, read with boto3: the service, its task sets, the
/// forward weights of the rules at priority 10 by target group name, the target groups, the
/// active task definitions of the family and the scalable target.
fn state(moto: &Moto, infra: &Value, service: &str) -> Value {
    moto.boto3(&format!(
        r#"
ecs = boto3.client("ecs", **kw); elb = boto3.client("elbv2", **kw); aas = boto3.client("application-autoscaling", **kw)
service, listener, test_listener = {service:?}, {listener:?}, {test:?}
found = [s for s in ecs.describe_services(cluster="exchange", services=[service])["services"] if s["status"] != "INACTIVE"]
sets = ecs.describe_task_sets(cluster="exchange", service=service)["taskSets"] if found else []
groups = {{g["TargetGroupArn"]: g["TargetGroupName"] for g in elb.describe_target_groups()["TargetGroups"]}}
def rule(arn):
    for r in elb.describe_rules(ListenerArn=arn)["Rules"]:
        if r["Priority"] == "10":
            return {{groups.get(t["TargetGroupArn"], t["TargetGroupArn"]): t["Weight"] for t in r["Actions"][0]["ForwardConfig"]["TargetGroups"]}}
definitions = ecs.list_task_definitions(familyPrefix=service, status="ACTIVE")["taskDefinitionArns"]
scaling = aas.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
print(json.dumps({{
    "service": found[0] if found else None,
    "task_sets": sets,
    "rule": rule(listener), "test_rule": rule(test_listener),
    "target_groups": sorted(groups.values()),
    "definitions": definitions,
    "last_definition": ecs.describe_task_definition(taskDefinition=definitions[-1])["taskDefinition"] if definitions else None,
    "scaling": scaling,
}}, default=str))
"#,
        listener = infra["listener"].as_str().unwrap(),
        test = infra["test_listener"].as_str().unwrap(),
    ))
}

fn pipeline(moto: &Moto, infra: &Value, services: &str) -> String {
    format!(
        r#"name = "exchange"

[plugins.ecs]
allow_http = ["{url}"]
[plugins.ecs.secrets]
aws = {{ from = "aws-env:TEST_AWS", hosts = ["{url}"] }}

[defaults]
provider = "ecs"
port = 8080
cpu = "0.5"
memory = "1Gi"

[defaults.provider_config]
region = "eu-west-1"
cluster = "exchange"
endpoint = "{url}"
vpc_id = "{vpc}"
subnets = {subnets}
security_groups = ["{sg}"]
listener_arn = "{listener}"
test_listener_arn = "{test}"
execution_role_arn = "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
poll_interval_ms = 10

{services}"#,
        url = moto.url,
        vpc = infra["vpc"].as_str().unwrap(),
        subnets = infra["subnets"],
        sg = infra["sg"].as_str().unwrap(),
        listener = infra["listener"].as_str().unwrap(),
        test = infra["test_listener"].as_str().unwrap(),
    )
}

/// The gateway goes dark first (0 %): its smoke check reaches it through the test listener
/// before any user does, then it takes 10 % and all.
const GATEWAY: &str = r#"
[services.gateway]
image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gateway:1"
min_instances = 2
strategy = "canary"
strategy_config = { steps = [0, 10, 100], pause = "3s" }
env = { LOG_LEVEL = "info" }
secrets = { DATABASE_URL = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:exchange/db" }
labels = { team = "exchange" }
provider_config.rule = { priority = 10, paths = ["/*"] }
provider_config.autoscaling = { min = 1, max = 10, cpu_target = 70 }

# The load balancer applies a rule change within moments (the data plane within a second), so
# a check through the test listener waits that long after each change.
[[services.gateway.checks]]
name = "smoke"
plugin = "http"
delay = "2s"
config = { path = "/", interval = "200ms" }
"#;

/// The `http` check reaches revisions through the data plane, a proxy as a check inside the VPC
/// would use (nothing resolves moto's load balancer names).
fn through(plane: &DataPlane, services: &str) -> String {
    format!(
        r#"{services}
[plugins.http]
allow_http = ["http://*.elb.amazonaws.com:8080"]
proxy = "{}"
"#,
        plane.proxy
    )
}

/// Requests in runs, for messages: `r1 200 ×120, r2 200 ×3, …`.
fn runs<T: PartialEq + std::fmt::Debug>(seen: &[T]) -> String {
    let mut out: Vec<(&T, usize)> = Vec::new();
    for s in seen {
        match out.last_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => out.push((s, 1)),
        }
    }
    let runs: Vec<String> = out.iter().map(|(s, n)| format!("{s:?} ×{n}")).collect();
    runs.join(", ")
}

/// The deployment each request on `port` was served by (the end of its target group's name),
/// in order.
fn served_by(plane: &DataPlane, port: u16) -> Vec<(String, u16)> {
    plane
        .served()
        .iter()
        .filter(|e| e["port"] == port)
        .map(|e| {
            let group = e["group"].as_str().unwrap_or_default();
            let deployment = group.rsplit('-').next().unwrap_or_default().to_string();
            (deployment, e["status"].as_u64().unwrap_or(0) as u16)
        })
        .collect()
}

fn engine(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
    command
        .args(args)
        .env("ENGINE_CACHE_DIR", support::cache_dir())
        .current_dir(dir);
    for (k, v) in TEST_KEYS {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The target group name of a revision ends with its deployment id.
fn weights(rule: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = rule
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, w)| {
            let deployment = name.rsplit('-').next().unwrap().to_string();
            (deployment, w.as_i64().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_deploy_canary_rollback_and_destroy_on_ecs_behind_an_alb() {
    let moto = Moto::start().await;
    let infra = moto.boto3(INFRASTRUCTURE);
    let users = format!("http://{}/", infra["dns"].as_str().unwrap());
    let bad = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/gateway:3";
    let plane = moto
        .data_plane(DataPlaneOptions {
            faults: &[(bad, 1.0)],
            load: &[(&users, 20)],
            ..Default::default()
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    let release = |image: &str| {
        let services = GATEWAY.replace("gateway:1", image);
        std::fs::write(&file, pipeline(&moto, &infra, &through(&plane, &services))).unwrap();
    };
    release("gateway:1");

    let out = engine(dir.path(), &["plan", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gateway: create") && stdout.contains("cpu: (none) → 512"),
        "{}",
        text(&out)
    );

    // The first deployment: an EXTERNAL service, one task set at full scale in its own target
    // group, all the traffic through the rule, the test rule on the same revision.
    let out = engine(dir.path(), &["run", "pipeline.toml"]);
    assert!(out.status.success(), "{}{}", text(&out), plane.errors());
    let s = state(&moto, &infra, "gateway");
    assert_eq!(s["service"]["deploymentController"]["type"], "EXTERNAL");
    assert_eq!(s["service"]["desiredCount"], 2);
    assert_eq!(weights(&s["rule"]), [("r1".to_string(), 100)]);
    assert_eq!(weights(&s["test_rule"]), [("r1".to_string(), 1)]);
    let sets = s["task_sets"].as_array().unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["externalId"], "gateway-r1");
    assert_eq!(
        sets[0]["scale"],
        json!({ "value": 100.0, "unit": "PERCENT" })
    );
    assert_eq!(sets[0]["launchType"], "FARGATE");
    let definition = &s["last_definition"];
    assert_eq!(
        (&definition["cpu"], &definition["memory"]),
        (&json!("512"), &json!("1024"))
    );
    assert_eq!(definition["networkMode"], "awsvpc");
    let container = &definition["containerDefinitions"][0];
    assert_eq!(
        container["secrets"][0]["valueFrom"],
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:exchange/db"
    );
    assert_eq!(
        container["logConfiguration"]["options"]["awslogs-group"],
        "/ecs/gateway"
    );
    assert_eq!(
        container["environment"],
        json!([{ "name": "LOG_LEVEL", "value": "info" }])
    );
    let scaling = &s["scaling"][0];
    assert_eq!(
        (&scaling["MinCapacity"], &scaling["MaxCapacity"]),
        (&json!(1), &json!(10))
    );
    assert_eq!(scaling["ResourceId"], "service/exchange/gateway");

    // Nothing changed: the plan says so.
    let out = engine(dir.path(), &["plan", "pipeline.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("gateway: no-change"), "{}", text(&out));

    // A new image: a field-level plan, then the canary 0 → 10 → 100 in the rule's weights;
    // the old revision stays, without traffic, for a rollback.
    release("gateway:2");
    let out = engine(dir.path(), &["plan", "pipeline.toml"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("gateway:1\" → \"123456789012.dkr.ecr.eu-west-1.amazonaws.com/gateway:2"),
        "{}",
        text(&out)
    );
    let out = engine(dir.path(), &["run", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = state(&moto, &infra, "gateway");
    assert_eq!(
        weights(&s["rule"]),
        [("r1".to_string(), 0), ("r2".to_string(), 100)]
    );
    // The users' requests: r1 alone, then one in ten to r2 while the canary held 10 %, then r2.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let users_saw = served_by(&plane, 80);
    let first_r2 = users_saw.iter().position(|(d, _)| d == "r2").unwrap();
    let last_r1 = users_saw.iter().rposition(|(d, _)| d == "r1").unwrap();
    let canary = &users_saw[first_r2..=last_r1];
    let to_r2 = canary.iter().filter(|(d, _)| d == "r2").count();
    let share = to_r2 as f64 / canary.len() as f64;
    assert!(
        canary.len() >= 20 && (0.04..=0.2).contains(&share),
        "{to_r2} of {} requests went to r2 during the canary: {}\n{}",
        canary.len(),
        runs(&users_saw),
        plane.errors()
    );
    assert!(
        users_saw[users_saw.len() - 10..]
            .iter()
            .all(|(d, _)| d == "r2")
    );
    assert!(
        users_saw.iter().all(|(_, status)| *status == 200),
        "{}",
        runs(&users_saw)
    );
    // The smoke check met r2 through the test listener before any user did.
    let tested = served_by(&plane, 8080);
    assert!(tested.contains(&("r2".to_string(), 200)), "{tested:?}");
    assert_eq!(weights(&s["test_rule"]), [("r2".to_string(), 1)]);
    assert_eq!(s["task_sets"].as_array().unwrap().len(), 2);
    let primary: Vec<&Value> = s["task_sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "PRIMARY")
        .collect();
    assert_eq!(primary.len(), 1);
    assert_eq!(primary[0]["externalId"], "gateway-r2");

    // A bad build (every `GET /` a 500) fails its smoke check through the test listener while
    // it is dark: no user request reaches it, and r2 keeps serving.
    release("gateway:3");
    let out = engine(dir.path(), &["run", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("smoke"), "{}", text(&out));
    let s = state(&moto, &infra, "gateway");
    let serving: Vec<_> = weights(&s["rule"])
        .into_iter()
        .filter(|(_, w)| *w > 0)
        .collect();
    assert_eq!(serving, [("r2".to_string(), 100)]);
    assert!(served_by(&plane, 8080).contains(&("r3".to_string(), 500)));
    assert!(
        !served_by(&plane, 80).iter().any(|(d, _)| d == "r3"),
        "no user request reached the bad build: {}\n{}",
        runs(&served_by(&plane, 80)),
        text(&out)
    );
    assert!(
        s["test_rule"].is_null(),
        "the test listener forgot r3: {s:#}"
    );

    // A rollback moves the weights back to r1.
    let out = engine(dir.path(), &["rollback", "gateway", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = state(&moto, &infra, "gateway");
    assert_eq!(
        weights(&s["rule"]),
        [("r1".to_string(), 100), ("r2".to_string(), 0)],
        "the failed r3 was retired; r2 stays for a roll forward"
    );

    // Destroy removes the service, its task sets, target groups, rules, scaling and task
    // definitions, and leaves the load balancer, listeners and cluster.
    let out = engine(dir.path(), &["destroy", "pipeline.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = state(&moto, &infra, "gateway");
    assert!(s["service"].is_null(), "{s:#}");
    assert!(s["rule"].is_null() && s["test_rule"].is_null(), "{s:#}");
    assert_eq!(s["target_groups"], json!([]), "{s:#}");
    assert_eq!(s["definitions"], json!([]), "{s:#}");
    assert_eq!(s["scaling"], json!([]), "{s:#}");
    let left = moto.boto3(&format!(
        r#"
elb = boto3.client("elbv2", **kw); ecs = boto3.client("ecs", **kw)
print(json.dumps({{"listeners": len(elb.describe_listeners(LoadBalancerArn={lb:?})["Listeners"]),
    "clusters": [c["status"] for c in ecs.describe_clusters(clusters=["exchange"])["clusters"]]}}))
"#,
        lb = infra["lb"].as_str().unwrap()
    ));
    assert_eq!(left, json!({ "listeners": 2, "clusters": ["ACTIVE"] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_of_another_controller_or_a_missing_cluster_is_refused_with_the_reason() {
    let moto = Moto::start().await;
    let infra = moto.boto3(INFRASTRUCTURE);
    moto.boto3(
        r#"
ecs = boto3.client("ecs", **kw)
ecs.register_task_definition(family="legacy", containerDefinitions=[{"name": "legacy", "image": "legacy:1", "memory": 512}])
ecs.create_service(cluster="exchange", serviceName="legacy", taskDefinition="legacy", desiredCount=1)
print("{}")
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let services = r#"
[services.legacy]
image = "legacy:2"
provider_config.rule = { priority = 20, paths = ["/legacy/*"] }
"#;
    std::fs::write(
        dir.path().join("pipeline.toml"),
        pipeline(&moto, &infra, services),
    )
    .unwrap();
    for command in ["plan", "run"] {
        let out = engine(dir.path(), &[command, "pipeline.toml"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("deployed by the ECS deployment controller")
                && text(&out).contains("does not take one over"),
            "{command}: {}",
            text(&out)
        );
    }
    let untouched = moto.boto3(
        r#"
ecs = boto3.client("ecs", **kw)
s = ecs.describe_services(cluster="exchange", services=["legacy"])["services"][0]
print(json.dumps({"controller": s["deploymentController"]["type"], "definition": s["taskDefinition"].rsplit("/", 1)[1]}))
"#,
    );
    assert_eq!(
        untouched,
        json!({ "controller": "ECS", "definition": "legacy:1" })
    );

    let missing = pipeline(&moto, &infra, services)
        .replace("cluster = \"exchange\"", "cluster = \"exchnage\"");
    std::fs::write(dir.path().join("pipeline.toml"), missing).unwrap();
    let out = engine(dir.path(), &["run", "pipeline.toml"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("exchnage")
            && text(&out).contains("the provider never creates clusters"),
        "{}",
        text(&out)
    );
}

// The Agent Exchange example (examples/ecs-agent-exchange), run as written except for where the
// AWS APIs are, where the credentials come from, how the checks reach the test listener (through
// the data plane, as from inside the VPC) and how long a canary step pauses: these replacements,
// each of which must match, point it at moto. The guide's setup (VPC, the two
// load balancers with their listeners, the cluster) is made with boto3 and passed as the
// example's variables, as a CI job would pass its account's.

const EXCHANGE_INFRASTRUCTURE: &str = r#"
ec2 = boto3.client("ec2", **kw); elb = boto3.client("elbv2", **kw); ecs = boto3.client("ecs", **kw)
vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"eu-west-1{z}")["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
sg = ec2.create_security_group(GroupName="aex-ecs", Description="aex services", VpcId=vpc)["GroupId"]
def balancer(name, scheme):
    lb = elb.create_load_balancer(Name=name, Subnets=subnets, SecurityGroups=[sg], Scheme=scheme, Type="application")["LoadBalancers"][0]
    def listener(port):
        return elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
            DefaultActions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404", "ContentType": "text/plain", "MessageBody": "no route"}}])["Listeners"][0]["ListenerArn"]
    return listener(80), listener(8443)
public, public_test = balancer("aex-alb", "internet-facing")
internal, internal_test = balancer("aex-internal", "internal")
ecs.create_cluster(clusterName="aex-cluster")
print(json.dumps({"account_id": "123456789012", "region": "eu-west-1", "vpc_id": vpc, "subnet_a": subnets[0], "subnet_b": subnets[1], "services_sg": sg,
    "public_listener": public, "public_test_listener": public_test, "internal_listener": internal, "internal_test_listener": internal_test}))
"#;

const EXCHANGE: [&str; 10] = [
    "aex-identity",
    "aex-telemetry",
    "aex-provider-registry",
    "aex-trust-broker",
    "aex-settlement",
    "aex-bid-gateway",
    "aex-bid-evaluator",
    "aex-work-publisher",
    "aex-contract-engine",
    "aex-gateway",
];

fn exchange_example(moto: &Moto, plane: &DataPlane, dir: &Path) {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ecs-agent-exchange/pipeline.toml");
    let mut text = std::fs::read_to_string(source).unwrap();
    let url = moto.url.as_str();
    let grant = format!(r#"allow_http = ["{url}"]"#);
    let credentials = format!(r#"aws = {{ from = "aws-env:TEST_AWS", hosts = ["{url}"] }}"#);
    let provider =
        format!("[defaults.provider_config]\nendpoint = \"{url}\"\npoll_interval_ms = 10");
    let cloudwatch = format!(
        r#"cloudwatch = {{ region = "${{region}}", cluster = "${{cluster}}", endpoint = "{url}" }}"#
    );
    let test_listener = format!(
        "allow_http = [\"http://*.elb.amazonaws.com:8443\"]\nproxy = \"{}\"",
        plane.proxy
    );
    for (from, to) in [
        (
            r#"allow_http = ["https://ecs.${region}.amazonaws.com", "https://elasticloadbalancing.${region}.amazonaws.com", "https://application-autoscaling.${region}.amazonaws.com"]"#,
            grant.as_str(),
        ),
        (
            r#"allow_http = ["https://ecs.${region}.amazonaws.com", "https://elasticloadbalancing.${region}.amazonaws.com", "https://monitoring.${region}.amazonaws.com"]"#,
            grant.as_str(),
        ),
        (r#"aws = { from = "aws" }"#, credentials.as_str()),
        ("[defaults.provider_config]", provider.as_str()),
        (
            r#"cloudwatch = { region = "${region}", cluster = "${cluster}" }"#,
            cloudwatch.as_str(),
        ),
        (
            r#"allow_http = ["http://*.elb.amazonaws.com:8443"]"#,
            test_listener.as_str(),
        ),
        (r#"pause = "3m""#, r#"pause = "5s""#),
        (r#"delay = "10s""#, r#"delay = "2s""#),
    ] {
        assert!(
            text.contains(from),
            "the example no longer contains {from:?}"
        );
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
}

/// `engine COMMAND pipeline.toml --env staging --var …` with the account's infrastructure.
fn exchange(dir: &Path, infra: &Value, command: &[&str], more: &[&str]) -> Output {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend(["pipeline.toml", "--env", "staging"].map(String::from));
    for (name, value) in infra.as_object().unwrap() {
        args.push("--var".into());
        args.push(format!("{name}={}", value.as_str().unwrap()));
    }
    args.extend(more.iter().map(|s| s.to_string()));
    engine(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every service of the exchange as moto keeps it: status and controller, the environment and
/// secrets of the serving task definition, its size and log group, the weights of its rule by
/// target group name (on whichever listener has it), and the scaling of the cluster.
fn exchange_state(moto: &Moto, infra: &Value) -> Value {
    moto.boto3(&format!(
        r#"
ecs = boto3.client("ecs", **kw); elb = boto3.client("elbv2", **kw); aas = boto3.client("application-autoscaling", **kw)
names = {names:?}
groups = {{g["TargetGroupArn"]: g["TargetGroupName"] for g in elb.describe_target_groups()["TargetGroups"]}}
rules = {{}}
for listener in ({public:?}, {internal:?}):
    for r in elb.describe_rules(ListenerArn=listener)["Rules"]:
        if r["Priority"] != "default":
            rules[r["Priority"]] = {{"listener": "public" if listener == {public:?} else "internal",
                "conditions": r["Conditions"],
                "weights": {{groups.get(t["TargetGroupArn"], "?"): t["Weight"] for t in r["Actions"][0]["ForwardConfig"]["TargetGroups"]}}}}
out = {{}}
for s in ecs.describe_services(cluster="aex-cluster", services=names)["services"]:
    if s["status"] == "INACTIVE":
        continue
    sets = ecs.describe_task_sets(cluster="aex-cluster", service=s["serviceName"])["taskSets"]
    primary = [t for t in sets if t["status"] == "PRIMARY"]
    d = ecs.describe_task_definition(taskDefinition=primary[0]["taskDefinition"])["taskDefinition"] if primary else {{}}
    c = d.get("containerDefinitions", [{{}}])[0]
    out[s["serviceName"]] = {{"controller": s["deploymentController"]["type"], "primary": primary[0]["externalId"] if primary else None,
        "cpu": d.get("cpu"), "memory": d.get("memory"),
        "env": {{e["name"]: e["value"] for e in c.get("environment", [])}},
        "secrets": {{e["name"]: e["valueFrom"] for e in c.get("secrets", [])}},
        "log_group": c.get("logConfiguration", {{}}).get("options", {{}}).get("awslogs-group")}}
print(json.dumps({{"services": out, "rules": rules,
    "definitions": sum(len(ecs.list_task_definitions(familyPrefix=n, status="ACTIVE")["taskDefinitionArns"]) for n in names),
    "target_groups": len(groups),
    "scaling": aas.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"],
    "policies": aas.describe_scaling_policies(ServiceNamespace="ecs")["ScalingPolicies"],
    "balancers": sorted(b["LoadBalancerName"] for b in elb.describe_load_balancers()["LoadBalancers"])}}, default=str))
"#,
        names = EXCHANGE,
        public = infra["public_listener"].as_str().unwrap(),
        internal = infra["internal_listener"].as_str().unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_exchange_on_ecs_deploys_in_order_and_its_gate_rolls_back_a_bad_gateway() {
    let moto = Moto::start().await;
    let infra = moto.boto3(EXCHANGE_INFRASTRUCTURE);
    let public = moto.boto3(
        r#"print(json.dumps(boto3.client("elbv2", **kw).describe_load_balancers(Names=["aex-alb"])["LoadBalancers"][0]["DNSName"]))"#,
    );
    let users = format!("http://{}/", public.as_str().unwrap());
    let identity = "http://aex-identity.aex.internal/";
    // The gateway's v1.1.0 answers every `GET /` with a 500 (its health endpoint is fine).
    let bad = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/aex-gateway:v1.1.0";
    let plane = moto
        .data_plane(DataPlaneOptions {
            zones: &[("aex.internal", "aex-internal")],
            faults: &[(bad, 1.0)],
            load: &[(&users, 60), (identity, 5)],
        })
        .await;
    let dir = tempfile::tempdir().unwrap();
    exchange_example(&moto, &plane, dir.path());

    let out = exchange(dir.path(), &infra, &["plan"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(plan.matches(": create (").count(), 10, "{plan}");
    assert!(
        plan.contains("analyse aex-gateway-planned: health (after 2s), cloudwatch"),
        "{plan}"
    );

    // The first deploy: every service behind its rule, with the others' URLs (their rule hosts).
    let out = exchange(dir.path(), &infra, &["run"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = exchange_state(&moto, &infra);
    let services = &s["services"];
    assert_eq!(services.as_object().unwrap().len(), 10, "{s:#}");
    for name in EXCHANGE {
        let service = &services[name];
        assert_eq!(service["controller"], "EXTERNAL", "{name}");
        assert_eq!(
            service["log_group"],
            format!("/ecs/agent-exchange/{name}"),
            "{name}"
        );
        assert_eq!(service["env"]["ENVIRONMENT"], "staging", "{name}");
        let size = if name == "aex-gateway" {
            ("512", "1024")
        } else {
            ("256", "512")
        };
        assert_eq!(
            (
                service["cpu"].as_str().unwrap(),
                service["memory"].as_str().unwrap()
            ),
            size,
            "{name}"
        );
    }
    let gateway = &services["aex-gateway"];
    for (var, target) in [
        ("WORK_PUBLISHER_URL", "aex-work-publisher"),
        ("BID_GATEWAY_URL", "aex-bid-gateway"),
        ("PROVIDER_REGISTRY_URL", "aex-provider-registry"),
        ("SETTLEMENT_URL", "aex-settlement"),
        ("IDENTITY_URL", "aex-identity"),
    ] {
        assert_eq!(
            gateway["env"][var],
            format!("http://{target}.aex.internal"),
            "{var}"
        );
    }
    assert_eq!(
        services["aex-bid-evaluator"]["env"]["TRUST_BROKER_URL"],
        "http://aex-trust-broker.aex.internal"
    );
    assert_eq!(gateway["secrets"]["JWT_SECRET"], "aex-jwt-secret");
    assert_eq!(
        services["aex-settlement"]["secrets"]["MONGO_URI"],
        "aex-mongo-uri"
    );
    assert_eq!(
        s["rules"]["100"]["listener"], "public",
        "only the gateway is public: {s:#}"
    );
    assert_eq!(s["rules"]["10"]["listener"], "internal");
    assert_eq!(
        s["rules"]["10"]["conditions"][0]["HostHeaderConfig"]["Values"],
        json!(["aex-identity.aex.internal"])
    );
    let scaling = s["scaling"].as_array().unwrap();
    assert_eq!(scaling.len(), 1, "only the gateway scales: {s:#}");
    assert_eq!(scaling[0]["ResourceId"], "service/aex-cluster/aex-gateway");
    assert_eq!(
        (&scaling[0]["MinCapacity"], &scaling[0]["MaxCapacity"]),
        (&json!(1), &json!(10))
    );
    let policy = &s["policies"][0]["TargetTrackingScalingPolicyConfiguration"];
    assert_eq!(policy["TargetValue"], 70.0);
    assert_eq!(
        policy["PredefinedMetricSpecification"]["PredefinedMetricType"],
        "ECSServiceAverageCPUUtilization"
    );

    // The guide's order: a service is deployed after the ones whose URLs it holds.
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let at = |name: &str| {
        stdout
            .find(&format!("{name}:"))
            .unwrap_or_else(|| panic!("{name} in {stdout}"))
    };
    assert!(at("aex-identity") < at("aex-provider-registry"), "{stdout}");
    assert!(
        at("aex-provider-registry") < at("aex-bid-gateway"),
        "{stdout}"
    );
    assert!(at("aex-bid-gateway") < at("aex-bid-evaluator"), "{stdout}");
    assert!(at("aex-contract-engine") < at("aex-gateway"), "{stdout}");

    // The next version, whose gateway answers 5xx: the nine others roll out 10 → 100, the
    // gateway's CloudWatch gate counts the 5xx its users met at 10 % and sends their traffic
    // back to the serving revision.
    let out = exchange(dir.path(), &infra, &["run"], &["--var", "version=v1.1.0"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out),
        plane.errors()
    );
    assert!(text(&out).contains("5xx"), "{}", text(&out));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let served = plane.served();
    let users_saw: Vec<(String, u64)> = served
        .iter()
        .filter(|e| e["port"] == 80 && e["rule"] == "100")
        .map(|e| {
            let group = e["group"].as_str().unwrap();
            (
                group.rsplit('-').next().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let to_r2: Vec<_> = users_saw.iter().filter(|(d, _)| d == "r2").collect();
    assert!(
        !to_r2.is_empty() && to_r2.iter().all(|(_, status)| *status == 500),
        "{}\n{}",
        runs(&users_saw),
        text(&out)
    );
    assert!(
        to_r2.len() * 5 < users_saw.len(),
        "a small share met v1.1.0: {}",
        runs(&users_saw)
    );
    assert!(
        users_saw[users_saw.len() - 10..]
            .iter()
            .all(|seen| seen == &("r1".to_string(), 200)),
        "{}",
        runs(&users_saw)
    );
    // The identity service's users reach it by its host rule on the internal load balancer.
    let identity_users: Vec<&str> = served
        .iter()
        .filter(|e| e["host"] == "aex-identity.aex.internal")
        .map(|e| e["group"].as_str().unwrap())
        .collect();
    assert!(
        identity_users.last().unwrap().starts_with("aex-identity-")
            && identity_users.last().unwrap().ends_with("-r2"),
        "{}",
        runs(&identity_users)
    );
    let s = exchange_state(&moto, &infra);
    let serving = |priority: &str| -> Vec<(String, i64)> {
        weights(&s["rules"][priority]["weights"])
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .collect()
    };
    assert_eq!(
        serving("10"),
        [("r2".to_string(), 100)],
        "identity took v1.1.0: {s:#}"
    );
    assert_eq!(
        serving("100"),
        [("r1".to_string(), 100)],
        "the gateway stays on v1.0.0: {s:#}"
    );
    assert_eq!(s["services"]["aex-gateway"]["primary"], "aex-gateway-r1");

    // The guide's rollback to the previous task definition, by the engine.
    let out = exchange(dir.path(), &infra, &["rollback", "aex-identity"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = exchange_state(&moto, &infra);
    assert_eq!(
        weights(&s["rules"]["10"]["weights"])
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .collect::<Vec<_>>(),
        [("r1".to_string(), 100)]
    );

    // The teardown's dry run lists what it would delete and deletes nothing.
    let out = exchange(dir.path(), &infra, &["destroy", "--dry-run"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    for name in EXCHANGE {
        assert!(
            stdout.contains(&format!("would destroy {name}\n")),
            "{name}: {}",
            text(&out)
        );
    }
    assert!(
        stdout.contains("revision aex-gateway-r1 (123456789012.dkr.ecr.eu-west-1.amazonaws.com/aex-gateway:v1.0.0), 100% of the traffic"),
        "{stdout}"
    );
    assert_eq!(
        exchange_state(&moto, &infra)["services"]
            .as_object()
            .unwrap()
            .len(),
        10
    );

    let out = exchange(dir.path(), &infra, &["destroy"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let s = exchange_state(&moto, &infra);
    assert_eq!(s["services"], json!({}), "{s:#}");
    assert_eq!(
        (&s["rules"], &s["definitions"], &s["target_groups"]),
        (&json!({}), &json!(0), &json!(0)),
        "{s:#}"
    );
    assert_eq!(s["scaling"], json!([]));
    assert_eq!(
        s["balancers"],
        json!(["aex-alb", "aex-internal"]),
        "the shared load balancers stay"
    );
}
