//! `source = "cloudwatch"`: the window's numbers from the Application Load Balancer's
//! CloudWatch metrics (`AWS/ApplicationELB`) of the revision's own target group, which the
//! `ecs` provider makes per revision. The target group is found through the ECS task set of the
//! revision (its external id), and the load balancer through the target group, so the check
//! needs only the cluster.

use super::{Config, Window};
use engine_sdk::aws::{Endpoint, JsonApi, QueryApi, params, xml};
use engine_sdk::{Error, ErrorExt};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatch {
    pub region: String,
    /// The ECS cluster of the service.
    pub cluster: String,
    /// The ECS service's name when it differs from the pipeline's.
    #[serde(default)]
    pub service_name: Option<String>,
    /// One base URL for every AWS API; only a test server (moto) needs it.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The granted secret with the AWS credentials.
    #[serde(default = "default_credentials")]
    pub credentials: String,
    /// The metrics' period in seconds (the ALB publishes per minute).
    #[serde(default = "default_period")]
    pub period_seconds: u32,
}

fn default_credentials() -> String {
    "aws".into()
}

fn default_period() -> u32 {
    60
}

impl CloudWatch {
    fn endpoint(&self, service: &'static str) -> Endpoint {
        Endpoint::regional(service, &self.region, self.endpoint.as_deref())
    }
}

/// The CloudWatch dimensions of a revision: its target group and its load balancer, in the
/// form the metrics name them (`targetgroup/NAME/ID`, `app/NAME/ID`).
fn dimensions(cw: &CloudWatch, service: &str, revision: &str) -> Result<(String, String), Error> {
    let ecs = JsonApi::new(
        cw.endpoint("ecs"),
        "AmazonEC2ContainerServiceV20141113",
        "ECS",
        &cw.credentials,
    )?;
    let service = cw.service_name.as_deref().unwrap_or(service);
    let sets = ecs.call(
        "DescribeTaskSets",
        json!({ "cluster": cw.cluster, "service": service }),
    )?;
    let group = sets["taskSets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["externalId"] == revision)
        .and_then(|s| s["loadBalancers"][0]["targetGroupArn"].as_str())
        .ok_or_else(|| {
            Error::not_found(format!(
                "the ECS service `{service}` in cluster `{}` has no task set for {revision} in a target group",
                cw.cluster
            ))
        })?
        .to_string();
    let elb = QueryApi::new(
        cw.endpoint("elasticloadbalancing"),
        "2015-12-01",
        "ELB",
        &cw.credentials,
    )?;
    let text = elb.read(
        "DescribeTargetGroups",
        params(&[("TargetGroupArns.member.1", &group)]),
    )?;
    let doc = xml::parse(&text)?;
    let listed = xml::find(doc.root(), "LoadBalancerArns")
        .and_then(|l| l.children().find(|c| c.has_tag_name("member")))
        .and_then(|m| m.text())
        .map(|t| t.trim().to_string());
    let balancer = match listed {
        Some(arn) => arn,
        None => tagged_load_balancer(&elb, &group)?.ok_or_else(|| {
            Error::not_found(format!(
                "the target group {group} of {revision} is behind no load balancer"
            ))
        })?,
    };
    Ok((
        resource_part(&group, "targetgroup/"),
        resource_part(&balancer, "loadbalancer/"),
    ))
}

/// The load balancer the `ecs` provider tagged a target group with when it made it, for a
/// group ELB lists none for yet (moto lists none for a group added to a rule later).
fn tagged_load_balancer(elb: &QueryApi, group: &str) -> Result<Option<String>, Error> {
    let text = elb.read("DescribeTags", params(&[("ResourceArns.member.1", group)]))?;
    let doc = xml::parse(&text)?;
    Ok(xml::members(doc.root(), "Tags")
        .into_iter()
        .find(|t| xml::text(*t, "Key").as_deref() == Some("engine:load-balancer"))
        .and_then(|t| xml::text(t, "Value")))
}

/// What follows `marker` in an ARN: `arn:…:targetgroup/NAME/ID` → `targetgroup/NAME/ID`,
/// `arn:…:loadbalancer/app/NAME/ID` → `app/NAME/ID`.
fn resource_part(arn: &str, marker: &str) -> String {
    match arn.find(marker) {
        Some(i) if marker == "loadbalancer/" => arn[i + marker.len()..].to_string(),
        Some(i) => arn[i..].to_string(),
        None => arn.to_string(),
    }
}

/// A metric query: (id, metric, statistic).
type Query = (&'static str, &'static str, &'static str);

/// The request count, and the numbers behind the thresholds that are set: a percentile nobody
/// asked for is not computed (and costs a metric each in CloudWatch's bill).
fn queries(config: &Config) -> Vec<Query> {
    let mut out = vec![("requests", "RequestCount", "Sum")];
    let wanted = [
        (
            config.max_5xx_per_minute.or(config.max_error_rate_percent),
            ("errors", "HTTPCode_Target_5XX_Count", "Sum"),
        ),
        (
            config.max_mean_ms,
            ("mean", "TargetResponseTime", "Average"),
        ),
        (config.max_p95_ms, ("p95", "TargetResponseTime", "p95")),
        (config.max_p99_ms, ("p99", "TargetResponseTime", "p99")),
    ];
    out.extend(
        wanted
            .into_iter()
            .filter(|(t, _)| t.is_some())
            .map(|(_, q)| q),
    );
    out
}

fn iso8601(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn query_params(
    config: &Config,
    cw: &CloudWatch,
    (group, balancer): &(String, String),
    start: u64,
    end: u64,
) -> Vec<(String, String)> {
    let mut p = params(&[("StartTime", &iso8601(start)), ("EndTime", &iso8601(end))]);
    for (n, (id, metric, stat)) in queries(config).into_iter().enumerate() {
        let at = format!("MetricDataQueries.member.{}", n + 1);
        let m = format!("{at}.MetricStat.Metric");
        p.extend(params(&[
            (&format!("{at}.Id"), id),
            (&format!("{m}.Namespace"), "AWS/ApplicationELB"),
            (&format!("{m}.MetricName"), metric),
            (&format!("{m}.Dimensions.member.1.Name"), "TargetGroup"),
            (&format!("{m}.Dimensions.member.1.Value"), group),
            (&format!("{m}.Dimensions.member.2.Name"), "LoadBalancer"),
            (&format!("{m}.Dimensions.member.2.Value"), balancer),
            (
                &format!("{at}.MetricStat.Period"),
                &cw.period_seconds.to_string(),
            ),
            (&format!("{at}.MetricStat.Stat"), stat),
        ]));
    }
    p
}

/// Each query's values, one per period, by id.
fn results(text: &str) -> Result<Vec<(String, Vec<f64>)>, Error> {
    let doc = xml::parse(text)?;
    Ok(xml::members(doc.root(), "MetricDataResults")
        .into_iter()
        .map(|r| {
            let values = xml::members(r, "Values")
                .into_iter()
                .filter_map(|v| v.text()?.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .collect();
            (xml::text(r, "Id").unwrap_or_default(), values)
        })
        .collect())
}

/// The window from each query's values per period: counts summed, latencies (seconds) the
/// worst period's, in milliseconds.
fn summarize(results: &[(String, Vec<f64>)], minutes: f64) -> Window {
    let values = |id: &str| {
        results
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let sum = |id: &str| values(id).iter().sum::<f64>();
    let worst_ms = |id: &str| {
        values(id)
            .into_iter()
            .reduce(f64::max)
            .map(|seconds| seconds * 1000.0)
    };
    let requests = sum("requests");
    // The ALB publishes no 5xx count for a minute without any: asked and absent is zero.
    let errors = results
        .iter()
        .any(|(i, _)| i == "errors")
        .then(|| sum("errors"));
    Window {
        requests: requests as u64,
        error_rate_percent: errors
            .filter(|_| requests > 0.0)
            .map(|e| 100.0 * e / requests),
        errors_per_minute: errors.map(|e| e / minutes.max(1.0)),
        mean_ms: worst_ms("mean"),
        p95_ms: worst_ms("p95"),
        p99_ms: worst_ms("p99"),
    }
}

pub fn window(
    config: &Config,
    service: &str,
    revision: &str,
    since_ms: u64,
) -> Result<Window, Error> {
    let cw = config.cloudwatch.as_ref().ok_or_else(|| {
        Error::invalid_config("metrics check: source \"cloudwatch\" needs `cloudwatch`")
    })?;
    let dims = dimensions(cw, service, revision)?;
    let period_ms = cw.period_seconds as u64 * 1000;
    let now = engine_sdk::clock::now_ms();
    // Whole periods, the last one still filling.
    let start = since_ms / period_ms * period_ms;
    let end = (now / period_ms + 1) * period_ms;
    let monitoring = QueryApi::new(
        cw.endpoint("monitoring"),
        "2010-08-01",
        "CloudWatch",
        &cw.credentials,
    )?;
    let text = monitoring
        .write("GetMetricData", query_params(config, cw, &dims, start, end))
        .map_err(|e| e.context("reading the revision's load balancer metrics"))?;
    let minutes = now.saturating_sub(since_ms) as f64 / 60_000.0;
    Ok(summarize(&results(&text)?, minutes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_become_the_dimensions_cloudwatch_names() {
        assert_eq!(
            resource_part(
                "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/api-r2/73e2d6bc24d8a067",
                "targetgroup/"
            ),
            "targetgroup/api-r2/73e2d6bc24d8a067"
        );
        assert_eq!(
            resource_part(
                "arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/exchange/50dc6c495c0c9188",
                "loadbalancer/"
            ),
            "app/exchange/50dc6c495c0c9188"
        );
    }

    #[test]
    fn counts_add_up_and_latency_is_the_worst_minute() {
        let text = r#"<GetMetricDataResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/"><GetMetricDataResult><MetricDataResults>
          <member><Id>requests</Id><Values><member>100.0</member><member>50.0</member></Values><StatusCode>Complete</StatusCode></member>
          <member><Id>errors</Id><Values><member>30.0</member></Values></member>
          <member><Id>mean</Id><Values><member>0.2</member><member>2.5</member></Values></member>
          <member><Id>p95</Id><Values/></member>
        </MetricDataResults></GetMetricDataResult></GetMetricDataResponse>"#;
        let w = summarize(&results(text).unwrap(), 2.0);
        assert_eq!(w.requests, 150);
        assert_eq!(w.error_rate_percent, Some(20.0));
        assert_eq!(w.errors_per_minute, Some(15.0));
        assert_eq!(w.mean_ms, Some(2500.0));
        assert_eq!((w.p95_ms, w.p99_ms), (None, None), "no data is no number");
    }

    #[test]
    fn only_the_numbers_behind_a_threshold_are_asked_for() {
        let config = |extra: serde_json::Value| -> Config {
            let mut c = json!({ "source": "cloudwatch", "cloudwatch": { "region": "eu-west-1", "cluster": "c" } });
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(c).unwrap()
        };
        let ids = |c: &Config| queries(c).iter().map(|q| q.0).collect::<Vec<_>>();
        let gates = config(json!({ "max_5xx_per_minute": 10, "max_mean_ms": 2000 }));
        assert_eq!(ids(&gates), ["requests", "errors", "mean"]);
        assert_eq!(
            ids(&config(json!({ "max_p99_ms": 900 }))),
            ["requests", "p99"]
        );
        let text = r#"<GetMetricDataResponse><GetMetricDataResult><MetricDataResults>
          <member><Id>requests</Id><Values><member>10.0</member></Values></member>
        </MetricDataResults></GetMetricDataResult></GetMetricDataResponse>"#;
        let w = summarize(&results(text).unwrap(), 1.0);
        assert_eq!(
            (w.errors_per_minute, w.error_rate_percent),
            (None, None),
            "not asked, not zero"
        );
    }
}
