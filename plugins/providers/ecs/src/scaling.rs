//! Application Auto Scaling of a service's desired count: a scalable target between `min` and
//! `max` tasks and a target-tracking policy on the service's average CPU, as the guide sets
//! them up. Scaling acts on the service; each task set runs its share (100 %) of that count.

use crate::config::Config;
use engine_sdk::Error;
use serde_json::{Value, json};

/// The service's tag that records the engine registered its scaling.
pub const TAG: &str = "engine:autoscaling";

const NAMESPACE: &str = "ecs";
const DIMENSION: &str = "ecs:service:DesiredCount";
const CPU_METRIC: &str = "ECSServiceAverageCPUUtilization";

/// `service/CLUSTER/SERVICE`, the resource id Application Auto Scaling names a service by.
pub fn resource_id(config: &Config, service: &str) -> String {
    let cluster = config.cluster.rsplit('/').next().unwrap_or(&config.cluster);
    format!("service/{cluster}/{service}")
}

fn policy_name(service: &str) -> String {
    format!("{service}-cpu-target-tracking")
}

/// The form's `autoscaling` field as configured.
pub fn desired_form(config: &Config) -> Value {
    match &config.autoscaling {
        Some(a) => json!({ "min": a.min, "max": a.max, "cpu_target": a.cpu_target }),
        None => Value::Null,
    }
}

/// The form's `autoscaling` field as Application Auto Scaling has it.
pub fn read_form(config: &Config, service: &str) -> Result<Value, Error> {
    let api = crate::apis::autoscaling(config)?;
    let id = resource_id(config, service);
    let targets = api.call(
        "DescribeScalableTargets",
        json!({ "ServiceNamespace": NAMESPACE, "ResourceIds": [id], "ScalableDimension": DIMENSION }),
    )?;
    let Some(target) = targets["ScalableTargets"].get(0) else {
        return Ok(Value::Null);
    };
    let policies = api.call(
        "DescribeScalingPolicies",
        json!({ "ServiceNamespace": NAMESPACE, "ResourceId": id, "ScalableDimension": DIMENSION, "PolicyNames": [policy_name(service)] }),
    )?;
    let cpu_target = policies["ScalingPolicies"]
        .get(0)
        .map(|p| p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"].clone())
        .unwrap_or(Value::Null);
    Ok(json!({
        "min": target["MinCapacity"],
        "max": target["MaxCapacity"],
        "cpu_target": cpu_target,
    }))
}

/// Registers (or updates) the scalable target and its CPU policy; removes them when the
/// configuration no longer asks for scaling.
pub fn apply(config: &Config, service: &str) -> Result<(), Error> {
    let Some(scaling) = &config.autoscaling else {
        return remove(config, service);
    };
    let api = crate::apis::autoscaling(config)?;
    let id = resource_id(config, service);
    api.call(
        "RegisterScalableTarget",
        json!({
            "ServiceNamespace": NAMESPACE, "ResourceId": id, "ScalableDimension": DIMENSION,
            "MinCapacity": scaling.min, "MaxCapacity": scaling.max,
        }),
    )?;
    api.call(
        "PutScalingPolicy",
        json!({
            "PolicyName": policy_name(service), "ServiceNamespace": NAMESPACE, "ResourceId": id,
            "ScalableDimension": DIMENSION, "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": scaling.cpu_target,
                "PredefinedMetricSpecification": { "PredefinedMetricType": CPU_METRIC },
            },
        }),
    )?;
    Ok(())
}

/// Deregisters the scalable target (its policies go with it); nothing registered is fine.
pub fn remove(config: &Config, service: &str) -> Result<(), Error> {
    let api = crate::apis::autoscaling(config)?;
    let removed = api.call(
        "DeregisterScalableTarget",
        json!({ "ServiceNamespace": NAMESPACE, "ResourceId": resource_id(config, service), "ScalableDimension": DIMENSION }),
    );
    match removed {
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
