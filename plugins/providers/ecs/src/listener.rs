//! The load balancer side: one target group per revision, and the service's listener rule
//! whose weighted `ForwardConfig` splits requests between them. The rule is the service's
//! traffic split; it is read back after every change.

use crate::config::Config;
use engine_sdk::aws::{Params, QueryApi as Elb, params, xml};
use engine_sdk::{Error, ErrorExt};

/// A listener rule as ELB reports it: its ARN and the target groups it forwards to, with
/// their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub arn: String,
    pub forwards: Vec<(String, u32)>,
}

/// A listener: its protocol, port, and the DNS name of its load balancer.
pub struct Listener {
    pub load_balancer_arn: String,
    pub protocol: String,
    pub port: u16,
    pub dns_name: String,
}

/// The tag that names, on a rule or target group, the ECS service it belongs to
/// (`CLUSTER/SERVICE`).
pub const OWNER_TAG: &str = "engine:owner";

/// The tag that names, on a target group, the load balancer whose listener rule forwards to
/// it: ELB lists a group's load balancers only once a rule uses it (and moto not for groups
/// added to a rule later), and the CloudWatch metrics of a group are named by both.
pub const LOAD_BALANCER_TAG: &str = "engine:load-balancer";

/// The target group name of a revision: at most 32 letters, digits and hyphens, unique in the
/// account and region. The hash of the cluster and service keeps two environments' `api-r5`
/// apart.
pub fn target_group_name(config: &Config, service: &str, revision: &str) -> String {
    let deployment = revision
        .strip_prefix(&format!("{service}-"))
        .unwrap_or(revision);
    let hash = fnv1a(&format!("{}/{service}", config.cluster));
    let suffix = format!("-{:06x}-{deployment}", hash & 0xff_ffff);
    let room = 32usize.saturating_sub(suffix.len());
    let clean: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(room)
        .collect();
    let name = format!("{}{suffix}", clean.trim_end_matches('-'));
    name.trim_start_matches('-').chars().take(32).collect()
}

/// FNV-1a, for short stable names (not for security).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// The rule at `priority` on `listener`, if any.
pub fn find_rule(elb: &Elb, listener: &str, priority: u32) -> Result<Option<Rule>, Error> {
    let text = elb.read("DescribeRules", params(&[("ListenerArn", listener)]))?;
    let doc = xml::parse(&text)?;
    let wanted = priority.to_string();
    let rule = xml::members(doc.root(), "Rules")
        .into_iter()
        .find(|r| xml::text(*r, "Priority").as_deref() == Some(wanted.as_str()));
    Ok(rule.map(|r| Rule {
        arn: xml::text(r, "RuleArn").unwrap_or_default(),
        forwards: forwards(r),
    }))
}

/// The weighted target groups of a rule's forward action (a plain `TargetGroupArn` counts as
/// weight 1).
fn forwards(rule: xml::Node<'_, '_>) -> Vec<(String, u32)> {
    let Some(action) = xml::members(rule, "Actions")
        .into_iter()
        .find(|a| xml::text(*a, "Type").as_deref() == Some("forward"))
    else {
        return Vec::new();
    };
    let weighted: Vec<(String, u32)> = xml::find(action, "ForwardConfig")
        .map(|f| xml::members(f, "TargetGroups"))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let arn = xml::text(m, "TargetGroupArn")?;
            let weight = xml::text(m, "Weight")
                .and_then(|w| w.parse().ok())
                .unwrap_or(1);
            Some((arn, weight))
        })
        .collect();
    if !weighted.is_empty() {
        return weighted;
    }
    let direct = action
        .children()
        .find(|c| c.has_tag_name("TargetGroupArn"))
        .and_then(|n| n.text());
    direct
        .map(|arn| vec![(arn.trim().to_string(), 1)])
        .unwrap_or_default()
}

fn forward_action(forwards: &[(String, u32)]) -> Params {
    let mut out = params(&[("Actions.member.1.Type", "forward")]);
    for (i, (arn, weight)) in forwards.iter().enumerate() {
        let at = format!(
            "Actions.member.1.ForwardConfig.TargetGroups.member.{}",
            i + 1
        );
        out.push((format!("{at}.TargetGroupArn"), arn.clone()));
        out.push((format!("{at}.Weight"), weight.to_string()));
    }
    out
}

fn tag_params(owner: &str) -> Params {
    params(&[
        ("Tags.member.1.Key", OWNER_TAG),
        ("Tags.member.1.Value", owner),
    ])
}

/// Creates the service's rule on `listener`, forwarding as given.
pub fn create_rule(
    elb: &Elb,
    config: &Config,
    listener: &str,
    owner: &str,
    forwards: &[(String, u32)],
) -> Result<(), Error> {
    let priority = config.rule.priority.to_string();
    let mut p = params(&[("ListenerArn", listener), ("Priority", &priority)]);
    let mut n = 0;
    for (field, config_key, values) in [
        ("host-header", "HostHeaderConfig", &config.rule.hosts),
        ("path-pattern", "PathPatternConfig", &config.rule.paths),
    ] {
        if values.is_empty() {
            continue;
        }
        n += 1;
        let at = format!("Conditions.member.{n}");
        p.push((format!("{at}.Field"), field.into()));
        for (i, v) in values.iter().enumerate() {
            p.push((
                format!("{at}.{config_key}.Values.member.{}", i + 1),
                v.clone(),
            ));
        }
    }
    p.extend(forward_action(forwards));
    p.extend(tag_params(owner));
    elb.write("CreateRule", p).map(|_| ())
}

/// Sets a rule's forward weights and reads them back: a rule that does not then forward
/// exactly so is a conflict (someone else changed it meanwhile).
pub fn set_forwards(
    elb: &Elb,
    listener: &str,
    priority: u32,
    rule: &Rule,
    forwards: &[(String, u32)],
) -> Result<(), Error> {
    let mut p = params(&[("RuleArn", &rule.arn)]);
    p.extend(forward_action(forwards));
    elb.write("ModifyRule", p)?;
    let now = find_rule(elb, listener, priority)?
        .ok_or_else(|| Error::conflict(format!("the rule {} was deleted meanwhile", rule.arn)))?;
    let mut got = now.forwards.clone();
    let mut wanted = forwards.to_vec();
    got.sort();
    wanted.sort();
    if got != wanted {
        return Err(Error::conflict(format!(
            "the rule {} forwards {got:?} after it was set to {wanted:?}",
            rule.arn
        )));
    }
    Ok(())
}

pub fn delete_rule(elb: &Elb, arn: &str) -> Result<(), Error> {
    match elb.write("DeleteRule", params(&[("RuleArn", arn)])) {
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The value of the owner tag of a rule or target group.
pub fn owner_of(elb: &Elb, arn: &str) -> Result<Option<String>, Error> {
    let text = elb.read("DescribeTags", params(&[("ResourceArns.member.1", arn)]))?;
    let doc = xml::parse(&text)?;
    let owner = xml::members(doc.root(), "Tags")
        .into_iter()
        .find(|t| xml::text(*t, "Key").as_deref() == Some(OWNER_TAG))
        .and_then(|t| xml::text(t, "Value"));
    Ok(owner)
}

/// The ARN of the target group `name`, if it exists.
pub fn find_target_group(elb: &Elb, name: &str) -> Result<Option<String>, Error> {
    match elb.read("DescribeTargetGroups", params(&[("Names.member.1", name)])) {
        Ok(text) => {
            let doc = xml::parse(&text)?;
            Ok(xml::text(doc.root(), "TargetGroupArn"))
        }
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The revision's target group (tasks registered by IP, as awsvpc needs), made when missing.
pub fn ensure_target_group(
    elb: &Elb,
    config: &Config,
    name: &str,
    port: u16,
    owner: &str,
    load_balancer: &str,
) -> Result<String, Error> {
    if let Some(arn) = find_target_group(elb, name)? {
        return Ok(arn);
    }
    let port = port.to_string();
    let mut p = params(&[
        ("Name", name),
        ("Protocol", "HTTP"),
        ("Port", &port),
        ("VpcId", &config.vpc_id),
        ("TargetType", "ip"),
        ("HealthCheckPath", &config.target_health_path),
    ]);
    p.extend(tag_params(owner));
    p.extend(params(&[
        ("Tags.member.2.Key", LOAD_BALANCER_TAG),
        ("Tags.member.2.Value", load_balancer),
    ]));
    let text = elb.write("CreateTargetGroup", p)?;
    let doc = xml::parse(&text)?;
    xml::text(doc.root(), "TargetGroupArn").ok_or_else(|| {
        Error::fatal(format!(
            "ELB created the target group {name} but answered no ARN"
        ))
    })
}

pub fn delete_target_group(elb: &Elb, arn: &str) -> Result<(), Error> {
    match elb.write("DeleteTargetGroup", params(&[("TargetGroupArn", arn)])) {
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A target group's targets by health: how many are healthy, and the others with ELB's reason.
#[derive(Debug, Default)]
pub struct TargetHealth {
    pub healthy: usize,
    pub not_healthy: Vec<String>,
}

pub fn target_health(elb: &Elb, arn: &str) -> Result<TargetHealth, Error> {
    let text = elb.read("DescribeTargetHealth", params(&[("TargetGroupArn", arn)]))?;
    let doc = xml::parse(&text)?;
    let mut out = TargetHealth::default();
    for d in xml::members(doc.root(), "TargetHealthDescriptions") {
        let state = xml::text(d, "State").unwrap_or_default();
        if state == "healthy" {
            out.healthy += 1;
            continue;
        }
        let target = xml::text(d, "Id").unwrap_or_default();
        let reason = xml::text(d, "Description")
            .or_else(|| xml::text(d, "Reason"))
            .unwrap_or_default();
        out.not_healthy
            .push(format!("{target} {state} {reason}").trim().to_string());
    }
    Ok(out)
}

/// A listener's protocol and port, and its load balancer's DNS name.
pub fn listener(elb: &Elb, arn: &str) -> Result<Listener, Error> {
    let text = elb.read(
        "DescribeListeners",
        params(&[("ListenerArns.member.1", arn)]),
    )?;
    let doc = xml::parse(&text)?;
    let missing = || Error::not_found(format!("the listener {arn} does not exist"));
    let lb = xml::text(doc.root(), "LoadBalancerArn").ok_or_else(missing)?;
    let protocol = xml::text(doc.root(), "Protocol").unwrap_or_else(|| "HTTP".into());
    let port = xml::text(doc.root(), "Port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(80);
    let text = elb.read(
        "DescribeLoadBalancers",
        params(&[("LoadBalancerArns.member.1", &lb)]),
    )?;
    let doc = xml::parse(&text)?;
    let dns_name = xml::text(doc.root(), "DNSName")
        .ok_or_else(|| Error::not_found(format!("the load balancer {lb} does not exist")))?;
    Ok(Listener {
        load_balancer_arn: lb,
        protocol,
        port,
        dns_name,
    })
}

impl Listener {
    /// `http://DNS[:PORT]PATH` for the rule's first path (its pattern's fixed start).
    pub fn url(&self, config: &Config) -> String {
        let scheme = self.protocol.to_ascii_lowercase();
        let default_port = matches!((scheme.as_str(), self.port), ("http", 80) | ("https", 443));
        let host = config
            .rule
            .hosts
            .first()
            .filter(|h| !h.contains('*') && !h.contains('?'))
            .cloned()
            .unwrap_or_else(|| self.dns_name.clone());
        let port = if default_port {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let path = config
            .rule
            .paths
            .first()
            .map(|p| {
                p.split(['*', '?'])
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/')
            })
            .unwrap_or("");
        format!("{scheme}://{host}{port}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: &str) -> Config {
        Config::parse(&format!(
            r#"{{"region":"eu-west-1","cluster":"{cluster}","vpc_id":"vpc-1","subnets":["subnet-1"],
            "listener_arn":"arn:l","rule":{{"priority":10,"paths":["/api/*"]}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn target_group_names_fit_elbs_limit_and_differ_per_cluster() {
        let staging = target_group_name(&config("staging"), "gateway", "gateway-r12");
        let prod = target_group_name(&config("prod"), "gateway", "gateway-r12");
        assert!(
            staging.starts_with("gateway-") && staging.ends_with("-r12"),
            "{staging}"
        );
        assert_ne!(staging, prod);
        let long = target_group_name(
            &config("prod"),
            "provider-registry-and-more-words",
            "provider-registry-and-more-words-r12345",
        );
        assert!(long.len() <= 32, "{long}");
        assert!(long.ends_with("-r12345"), "{long}");
        assert!(!long.starts_with('-') && !long.contains("--"), "{long}");
    }

    #[test]
    fn a_rules_weighted_forward_is_read_from_elbs_xml() {
        let text = r#"<DescribeRulesResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><DescribeRulesResult><Rules>
          <member><RuleArn>arn:rule/1</RuleArn><Priority>10</Priority><Conditions/><Actions><member><Type>forward</Type>
            <ForwardConfig><TargetGroups><member><TargetGroupArn>arn:tg/a</TargetGroupArn><Weight>90</Weight></member>
            <member><TargetGroupArn>arn:tg/b</TargetGroupArn><Weight>10</Weight></member></TargetGroups></ForwardConfig></member></Actions></member>
          <member><RuleArn>arn:rule/default</RuleArn><Priority>default</Priority><Actions><member><Type>forward</Type><TargetGroupArn>arn:tg/x</TargetGroupArn></member></Actions></member>
        </Rules></DescribeRulesResult></DescribeRulesResponse>"#;
        let doc = xml::parse(text).unwrap();
        let rules = xml::members(doc.root(), "Rules");
        assert_eq!(
            forwards(rules[0]),
            [("arn:tg/a".to_string(), 90), ("arn:tg/b".to_string(), 10)]
        );
        assert_eq!(forwards(rules[1]), [("arn:tg/x".to_string(), 1)]);
    }

    #[test]
    fn a_listeners_url_names_the_rules_host_and_path() {
        let l = Listener {
            load_balancer_arn:
                "arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/exchange/1".into(),
            protocol: "HTTP".into(),
            port: 8080,
            dns_name: "lb-1.eu-west-1.elb.amazonaws.com".into(),
        };
        assert_eq!(
            l.url(&config("prod")),
            "http://lb-1.eu-west-1.elb.amazonaws.com:8080/api"
        );
    }
}
