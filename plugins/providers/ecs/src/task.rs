//! Task definitions: the body registered for a deployment, and the provider's "form" of a
//! revision (the fields `plan` compares), made the same way from a spec and from what ECS
//! stores, so an unchanged service plans no change.

use crate::config::Config;
use engine_sdk::{Artifact, Error, ErrorExt, ServiceSpec};
use serde_json::{Map, Value, json};

/// The fields of the form, in the order `plan` lists them.
pub const FORM_FIELDS: &[&str] = &[
    "image",
    "args",
    "cpu",
    "memory",
    "port",
    "env",
    "secrets",
    "labels",
    "execution_role_arn",
    "task_role_arn",
    "log_group",
    "health_check",
    "subnets",
    "security_groups",
    "assign_public_ip",
    "desired_count",
    "autoscaling",
];

/// The tag that names the deployment a task definition or task set was made for.
pub const DEPLOYMENT_TAG: &str = "engine:deployment";
/// The tag that names the pipeline service it belongs to.
pub const SERVICE_TAG: &str = "engine:service";

/// Fargate's CPU sizes (units, 1024 = one vCPU) with the memory each allows (MiB): from, to,
/// step.
const FARGATE_SIZES: &[(u32, u32, u32, u32)] = &[
    (256, 512, 2048, 512),
    (512, 1024, 4096, 1024),
    (1024, 2048, 8192, 1024),
    (2048, 4096, 16384, 1024),
    (4096, 8192, 30720, 1024),
    (8192, 16384, 61440, 4096),
    (16384, 32768, 122880, 8192),
];

/// Task-level CPU units and memory (MiB) for the spec: thousandths of a core become ECS units
/// (1000 → 1024, 250 → 256), checked against the sizes Fargate offers.
pub fn size(spec: &ServiceSpec) -> Result<(u32, u32), Error> {
    let cpu = spec
        .resources
        .cpu_millis
        .map(|m| ((m as u64 * 1024 + 500) / 1000) as u32)
        .unwrap_or(256);
    let memory = spec.resources.memory_mib.unwrap_or(match cpu {
        0..=256 => 512,
        c => c * 2,
    });
    let Some((_, low, high, step)) = FARGATE_SIZES.iter().find(|s| s.0 == cpu) else {
        let offered: Vec<String> = FARGATE_SIZES
            .iter()
            .map(|s| format!("{} ({} vCPU)", s.0, s.0 as f64 / 1024.0))
            .collect();
        return Err(Error::invalid_config(format!(
            "Fargate has no CPU size of {cpu} units (cpu = {} cores); it offers {}",
            cpu as f64 / 1024.0,
            offered.join(", ")
        )));
    };
    if memory < *low || memory > *high || !(memory - low).is_multiple_of(*step) {
        return Err(Error::invalid_config(format!(
            "Fargate runs {cpu} CPU units with {low} to {high} MiB of memory in steps of {step} MiB, not {memory} MiB"
        )));
    }
    Ok((cpu, memory))
}

fn image(spec: &ServiceSpec) -> Result<&str, Error> {
    match &spec.artifact {
        Artifact::Image(image) => Ok(image),
        Artifact::Path(path) => Err(Error::invalid_config(format!(
            "ecs runs container images; `{path}` is a local artifact (use `image = \"…\"`, or the local provider)"
        ))),
    }
}

pub fn port(spec: &ServiceSpec) -> Result<u16, Error> {
    spec.port.ok_or_else(|| {
        Error::invalid_config(format!(
            "ecs service `{}` needs a `port`: its revisions take traffic through a load balancer's target groups",
            spec.name
        ))
    })
}

/// `[{key, value}]` in ECS's shape, labels first, then the engine's own tags.
pub fn tags(spec: &ServiceSpec, deployment_id: &str) -> Value {
    let mut tags: Vec<Value> = spec
        .labels
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect();
    tags.push(json!({ "key": SERVICE_TAG, "value": spec.name }));
    tags.push(json!({ "key": DEPLOYMENT_TAG, "value": deployment_id }));
    json!(tags)
}

fn health_check(config: &Config) -> Option<Value> {
    let check = config.health_check.as_ref()?;
    let mut out = json!({ "command": check.command });
    for (key, value) in [
        ("interval", check.interval_seconds),
        ("timeout", check.timeout_seconds),
        ("retries", check.retries),
        ("startPeriod", check.start_period_seconds),
    ] {
        if let Some(v) = value {
            out[key] = json!(v);
        }
    }
    Some(out)
}

/// The `RegisterTaskDefinition` request for a deployment of `spec`.
pub fn definition(
    config: &Config,
    spec: &ServiceSpec,
    deployment_id: &str,
) -> Result<Value, Error> {
    let (cpu, memory) = size(spec)?;
    let service = config.service(&spec.name);
    let mut container = json!({
        "name": service,
        "image": image(spec)?,
        "essential": true,
        "portMappings": [{ "containerPort": port(spec)?, "protocol": "tcp" }],
        "environment": spec.env.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
        "secrets": spec.secrets.iter().map(|s| json!({ "name": s.name, "valueFrom": s.reference })).collect::<Vec<_>>(),
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": config.log_group(&spec.name),
                "awslogs-region": config.region,
                "awslogs-stream-prefix": service,
                "awslogs-create-group": "true",
            },
        },
    });
    if !spec.args.is_empty() {
        container["command"] = json!(spec.args);
    }
    if let Some(check) = health_check(config) {
        container["healthCheck"] = check;
    }
    let mut body = json!({
        "family": config.family(&spec.name),
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": cpu.to_string(),
        "memory": memory.to_string(),
        "containerDefinitions": [container],
        "tags": tags(spec, deployment_id),
    });
    if let Some(role) = &config.execution_role_arn {
        body["executionRoleArn"] = json!(role);
    }
    if let Some(role) = &config.task_role_arn {
        body["taskRoleArn"] = json!(role);
    }
    Ok(body)
}

/// The desired form of `spec`: what a deployment would make.
pub fn desired_form(config: &Config, spec: &ServiceSpec) -> Result<Value, Error> {
    let definition = definition(config, spec, "planned")?;
    let network = json!({
        "subnets": config.subnets,
        "securityGroups": config.security_groups,
        "assignPublicIp": if config.assign_public_ip { "ENABLED" } else { "DISABLED" },
    });
    let mut form = form(&definition, &network);
    form["desired_count"] = json!(crate::desired_count(config, spec));
    form["autoscaling"] = crate::scaling::desired_form(config);
    Ok(form)
}

/// The form of a task definition (as registered or as `DescribeTaskDefinition` returns it,
/// with its tags at `tags`) run with a task set's `awsvpcConfiguration`.
pub fn form(definition: &Value, network: &Value) -> Value {
    let container = &definition["containerDefinitions"][0];
    // ECS keeps the network lists in an order of its own: they are sets.
    let mut network = network.clone();
    sort_strings(&mut network["subnets"]);
    sort_strings(&mut network["securityGroups"]);
    let pairs = |list: &Value, value: &str| -> Value {
        let map: Map<String, Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e[value].clone())))
            .collect();
        Value::Object(map)
    };
    let labels: Map<String, Value> = definition["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["key"].as_str()?.to_string(), t["value"].clone())))
        .filter(|(k, _)| !k.starts_with("engine:"))
        .collect();
    let args = match &container["command"] {
        Value::Array(a) if !a.is_empty() => json!(a),
        _ => Value::Null,
    };
    let number = |v: &Value| match v {
        Value::String(s) => s.parse::<u64>().map(|n| json!(n)).unwrap_or(json!(s)),
        other => other.clone(),
    };
    json!({
        "image": container["image"],
        "args": args,
        "cpu": number(&definition["cpu"]),
        "memory": number(&definition["memory"]),
        "port": container["portMappings"][0]["containerPort"],
        "env": pairs(&container["environment"], "value"),
        "secrets": pairs(&container["secrets"], "valueFrom"),
        "labels": labels,
        "execution_role_arn": definition["executionRoleArn"],
        "task_role_arn": definition["taskRoleArn"],
        "log_group": container["logConfiguration"]["options"]["awslogs-group"],
        "health_check": container["healthCheck"],
        "subnets": network["subnets"],
        "security_groups": non_empty(&network["securityGroups"]),
        "assign_public_ip": network["assignPublicIp"] == "ENABLED",
    })
}

/// An empty list is the same as none (ECS may leave the key out).
fn non_empty(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => Value::Null,
        other => {
            let mut sorted = other.clone();
            sort_strings(&mut sorted);
            sorted
        }
    }
}

fn sort_strings(v: &mut Value) {
    if let Value::Array(a) = v {
        a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
    }
}

/// The tag `key` in ECS's `[{key, value}]`.
pub fn tag<'a>(tags: &'a Value, key: &str) -> Option<&'a str> {
    tags.as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_sdk::{Ingress, Resources, Scaling, SecretEnv};

    pub fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "gateway".into(),
            artifact: Artifact::Image("123.dkr.ecr.eu-west-1.amazonaws.com/gateway:1".into()),
            args: vec![],
            env: vec![("LOG_LEVEL".into(), "info".into())],
            secrets: vec![SecretEnv {
                name: "DB_URL".into(),
                reference: "arn:aws:secretsmanager:eu-west-1:1:secret:db".into(),
            }],
            resources: Resources {
                cpu_millis: Some(500),
                memory_mib: Some(1024),
            },
            scaling: Scaling {
                min_instances: Some(2),
                max_instances: None,
                concurrency: None,
            },
            port: Some(8080),
            ingress: Ingress::Public,
            labels: vec![("team".into(), "exchange".into())],
            config: String::new(),
        }
    }

    fn config() -> Config {
        Config::parse(r#"{"region":"eu-west-1","cluster":"prod","vpc_id":"vpc-1","subnets":["subnet-b","subnet-a"],
            "listener_arn":"arn:l","rule":{"priority":10,"paths":["/*"]}}"#).unwrap()
    }

    #[test]
    fn cores_become_ecs_units_within_fargates_sizes() {
        let mut s = spec();
        assert_eq!(size(&s).unwrap(), (512, 1024));
        s.resources.cpu_millis = Some(250);
        s.resources.memory_mib = None;
        assert_eq!(size(&s).unwrap(), (256, 512));
        s.resources.cpu_millis = Some(1000);
        s.resources.memory_mib = Some(512);
        let e = size(&s).unwrap_err().describe();
        assert!(e.contains("2048 to 8192 MiB"), "{e}");
        s.resources.cpu_millis = Some(300);
        assert!(
            size(&s)
                .unwrap_err()
                .describe()
                .contains("no CPU size of 307")
        );
    }

    #[test]
    fn the_form_of_a_registered_definition_is_the_desired_form() {
        let config = config();
        let desired = desired_form(&config, &spec()).unwrap();
        let mut registered = definition(&config, &spec(), "r3").unwrap();
        // ECS answers numbers as strings and the tags beside the definition.
        registered["tags"] = tags(&spec(), "r3");
        // ECS answers the subnets in an order of its own, not the config's.
        let network = json!({ "subnets": ["subnet-b", "subnet-a"], "assignPublicIp": "DISABLED" });
        let mut read = form(&registered, &network);
        read["desired_count"] = json!(2);
        read["autoscaling"] = Value::Null;
        assert_eq!(read, desired);
        let network = json!({ "subnets": ["subnet-a", "subnet-b"], "assignPublicIp": "DISABLED" });
        let mut read = form(&registered, &network);
        read["desired_count"] = json!(2);
        read["autoscaling"] = Value::Null;
        assert_eq!(read, desired);
        assert_eq!(desired["env"]["LOG_LEVEL"], "info");
        assert_eq!(
            desired["secrets"]["DB_URL"],
            "arn:aws:secretsmanager:eu-west-1:1:secret:db"
        );
        assert_eq!(desired["labels"], json!({ "team": "exchange" }));
    }
}
