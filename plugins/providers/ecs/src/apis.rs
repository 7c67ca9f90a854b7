//! The three AWS APIs the provider calls, at their regional endpoints (or the test server the
//! configuration names), signed by the host with the granted secret `aws`.

use crate::config::Config;
use engine_sdk::Error;
use engine_sdk::aws::{Endpoint, JsonApi, QueryApi};

/// The secret the pipeline grants for the AWS credentials.
pub const CREDENTIALS_SECRET: &str = "aws";

fn endpoint(config: &Config, service: &'static str) -> Endpoint {
    Endpoint::regional(service, &config.region, config.endpoint.as_deref())
}

pub fn ecs(config: &Config) -> Result<JsonApi, Error> {
    JsonApi::new(
        endpoint(config, "ecs"),
        "AmazonEC2ContainerServiceV20141113",
        "ECS",
        CREDENTIALS_SECRET,
    )
}

pub fn autoscaling(config: &Config) -> Result<JsonApi, Error> {
    JsonApi::new(
        endpoint(config, "application-autoscaling"),
        "AnyScaleFrontendService",
        "Application Auto Scaling",
        CREDENTIALS_SECRET,
    )
}

pub fn elb(config: &Config) -> Result<QueryApi, Error> {
    QueryApi::new(
        endpoint(config, "elasticloadbalancing"),
        "2015-12-01",
        "ELB",
        CREDENTIALS_SECRET,
    )
}
