//! Clients for AWS APIs in their two wire protocols (feature `aws`), with AWS's error codes
//! mapped to the WIT error cases:
//!
//! - [`JsonApi`]: the JSON protocol (`X-Amz-Target: Prefix.Operation`), as ECS and Application
//!   Auto Scaling speak it;
//! - [`QueryApi`]: the query protocol (form parameters in, XML out), as Elastic Load Balancing
//!   and CloudWatch speak it; its reads are sent as GET, so that `engine plan`'s dry-run
//!   sandbox lets them through.
//!
//! The plugin never holds a credential: each request names a granted secret (`from = "aws"`)
//! in the sign header, and the host signs it with Signature Version 4 as it leaves.

use crate::http::{Client, Response};
use crate::secrets::Secret;
use crate::{Error, ErrorExt};
use serde_json::Value;
use std::time::Duration;

/// The WIT error for an AWS error code (the JSON `__type` or the XML `Code`) and HTTP status.
pub fn error_for(code: &str, status: u16, message: String) -> Error {
    let message = if code.is_empty() {
        message
    } else {
        format!("{code}: {message}")
    };
    match code {
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => Error::rate_limited(message, None),
        "ClusterNotFoundException"
        | "ServiceNotFoundException"
        | "TaskSetNotFoundException"
        | "TargetGroupNotFound"
        | "ListenerNotFound"
        | "RuleNotFound"
        | "LoadBalancerNotFound"
        | "ObjectNotFoundException" => Error::not_found(message),
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "SignatureDoesNotMatch" => Error::unauthorized(message),
        "ServiceNotActiveException"
        | "ResourceInUse"
        | "PriorityInUse"
        | "DuplicateTargetGroupName" => Error::conflict(message),
        "ServerException"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "ConcurrentUpdateException" => Error::transient(message),
        "ClientException"
        | "InvalidParameterException"
        | "ValidationError"
        | "ValidationException"
        | "InvalidConfigurationRequest"
        | "PlatformUnknownException"
        | "PlatformTaskDefinitionIncompatibilityException"
        | "UnsupportedFeatureException" => Error::invalid_config(message),
        _ => crate::http::error_for_status(status, None, message),
    }
}

/// Where an AWS API is and how its requests are signed.
pub struct Endpoint {
    /// The base URL, such as `https://ecs.eu-west-1.amazonaws.com` (or a test server's).
    pub url: String,
    /// The signing name: `ecs`, `elasticloadbalancing`, `monitoring`…
    pub service: &'static str,
    pub region: String,
}

impl Endpoint {
    /// AWS's regional endpoint of `service`, or `custom` (a test server) for every service.
    pub fn regional(service: &'static str, region: &str, custom: Option<&str>) -> Endpoint {
        let url = match custom {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{service}.{region}.amazonaws.com"),
        };
        Endpoint {
            url,
            service,
            region: region.to_string(),
        }
    }
}

/// One signed AWS API.
struct Signed {
    endpoint: Endpoint,
    credentials: Secret,
    client: Client,
}

impl Signed {
    fn new(endpoint: Endpoint, credentials: &str) -> Result<Signed, Error> {
        let secret = Secret::open(credentials).map_err(|e| {
            e.context(format!(
                "the plugin needs the secret `{credentials}` (AWS credentials, such as `{credentials} = {{ from = \"aws\" }}`) under its [plugins.NAME.secrets]"
            ))
        })?;
        Ok(Signed {
            endpoint,
            credentials: secret,
            client: Client::new().with_timeout(Duration::from_secs(30)),
        })
    }

    fn sign<'c>(
        &self,
        request: crate::http::RequestBuilder<'c>,
    ) -> crate::http::RequestBuilder<'c> {
        request.aws_sigv4(
            &self.credentials,
            self.endpoint.service,
            &self.endpoint.region,
        )
    }
}

/// An AWS API of the JSON protocol: ECS (`AmazonEC2ContainerServiceV20141113`) or Application
/// Auto Scaling (`AnyScaleFrontendService`).
pub struct JsonApi {
    api: Signed,
    target: &'static str,
    what: &'static str,
}

impl JsonApi {
    /// The API at `endpoint`, whose operations are `target.Operation` (such as
    /// `AmazonEC2ContainerServiceV20141113`), signed with the granted secret `credentials`;
    /// `what` names it in errors ("ECS").
    pub fn new(
        endpoint: Endpoint,
        target: &'static str,
        what: &'static str,
        credentials: &str,
    ) -> Result<JsonApi, Error> {
        Ok(JsonApi {
            api: Signed::new(endpoint, credentials)?,
            target,
            what,
        })
    }

    /// Calls `operation` with a JSON body; the answer's JSON, or AWS's error as a WIT error.
    pub fn call(&self, operation: &str, body: Value) -> Result<Value, Error> {
        let api = &self.api;
        let request = api
            .client
            .post(&format!("{}/", api.endpoint.url))
            .header("x-amz-target", format!("{}.{operation}", self.target))
            .header("content-type", "application/x-amz-json-1.1")
            .body(serde_json::to_vec(&body)?);
        let response = api.sign(request).send_once()?;
        if response.status < 300 {
            return response.json();
        }
        let error: Value = serde_json::from_slice(&response.body).unwrap_or_default();
        // `__type` may carry a namespace: `com.amazonaws.ecs#ClusterNotFoundException`.
        let code = error["__type"]
            .as_str()
            .unwrap_or_default()
            .rsplit('#')
            .next()
            .unwrap_or_default();
        let message = error["message"]
            .as_str()
            .or(error["Message"].as_str())
            .map(String::from)
            .unwrap_or_else(|| response.error_message());
        Err(error_for(
            code,
            response.status,
            format!("{} {operation}: {message}", self.what),
        ))
    }
}

/// An AWS API of the query protocol: Elastic Load Balancing (`2015-12-01`), CloudWatch
/// (`2010-08-01`).
pub struct QueryApi {
    api: Signed,
    version: &'static str,
    what: &'static str,
}

/// Query-protocol parameters, in order.
pub type Params = Vec<(String, String)>;

/// Parameters from pairs.
pub fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl QueryApi {
    /// The API at `endpoint` of API version `version`, signed with the granted secret
    /// `credentials`; `what` names it in errors ("ELB").
    pub fn new(
        endpoint: Endpoint,
        version: &'static str,
        what: &'static str,
        credentials: &str,
    ) -> Result<QueryApi, Error> {
        Ok(QueryApi {
            api: Signed::new(endpoint, credentials)?,
            version,
            what,
        })
    }

    /// A read (`Describe…`), sent as GET.
    pub fn read(&self, action: &str, params: Params) -> Result<String, Error> {
        self.call("GET", action, params)
    }

    /// A change (or a read too large for a URL), sent as a POSTed form.
    pub fn write(&self, action: &str, params: Params) -> Result<String, Error> {
        self.call("POST", action, params)
    }

    fn call(&self, method: &str, action: &str, params: Params) -> Result<String, Error> {
        let api = &self.api;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", action)
            .append_pair("Version", self.version)
            .extend_pairs(params)
            .finish();
        let request = match method {
            "GET" => api.client.get(&format!("{}/?{query}", api.endpoint.url)),
            _ => api
                .client
                .post(&format!("{}/", api.endpoint.url))
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(query),
        };
        let response = api.sign(request).send_once()?;
        if response.status < 300 {
            return Ok(response.text());
        }
        Err(xml_error(&response, &format!("{} {action}", self.what)))
    }
}

/// AWS's XML error (`<ErrorResponse><Error><Code>…</Code><Message>…`) as a WIT error.
fn xml_error(response: &Response, what: &str) -> Error {
    let text = response.text();
    let doc = roxmltree::Document::parse(&text).ok();
    let field = |name: &str| {
        doc.as_ref()
            .and_then(|d| d.descendants().find(|n| n.has_tag_name(name)))
            .and_then(|n| n.text())
            .map(str::trim)
            .map(String::from)
    };
    let code = field("Code").unwrap_or_default();
    let message = field("Message").unwrap_or_else(|| response.error_message());
    error_for(&code, response.status, format!("{what}: {message}"))
}

/// XML answers, read by element name (namespaces aside).
pub mod xml {
    pub use roxmltree::{Document, Node};

    pub fn parse(text: &str) -> Result<Document<'_>, crate::Error> {
        use crate::ErrorExt;
        Document::parse(text)
            .map_err(|e| crate::Error::fatal(format!("an AWS API answered malformed XML: {e}")))
    }

    /// The first descendant named `name`.
    pub fn find<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
        node.descendants().find(|n| n.has_tag_name(name))
    }

    /// The text of the first descendant named `name`.
    pub fn text(node: Node<'_, '_>, name: &str) -> Option<String> {
        find(node, name)
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
    }

    /// The `member` children of the first descendant named `list`.
    pub fn members<'a, 'i>(node: Node<'a, 'i>, list: &str) -> Vec<Node<'a, 'i>> {
        find(node, list)
            .map(|l| l.children().filter(|c| c.has_tag_name("member")).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_errors_map_to_what_the_host_should_do() {
        let e = |code| error_for(code, 400, "x".into());
        assert!(matches!(e("ThrottlingException"), Error::RateLimited(_)));
        assert!(matches!(e("ClusterNotFoundException"), Error::NotFound(_)));
        assert!(matches!(e("ClientException"), Error::InvalidConfig(_)));
        assert!(matches!(e("AccessDeniedException"), Error::Unauthorized(_)));
        assert!(matches!(e("TargetGroupNotFound"), Error::NotFound(_)));
        assert!(matches!(e("ResourceInUse"), Error::Conflict(_)));
        // An unknown code falls back on the status.
        assert!(matches!(
            error_for("Surprise", 503, "x".into()),
            Error::Transient(_)
        ));
        assert!(
            e("ClientException")
                .describe()
                .contains("ClientException: x")
        );
    }

    #[test]
    fn endpoints_are_regional_unless_a_test_server_is_named() {
        let e = Endpoint::regional("ecs", "eu-west-1", None);
        assert_eq!(e.url, "https://ecs.eu-west-1.amazonaws.com");
        let e = Endpoint::regional("monitoring", "eu-west-1", Some("http://127.0.0.1:5000/"));
        assert_eq!(
            (e.url.as_str(), e.service),
            ("http://127.0.0.1:5000", "monitoring")
        );
    }

    #[test]
    fn xml_errors_give_their_code_and_message() {
        let response = Response {
            status: 400,
            headers: Vec::new(),
            body: br#"<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><Error><Type>Sender</Type><Code>TargetGroupNotFound</Code><Message>One or more target groups not found</Message></Error><RequestId>1</RequestId></ErrorResponse>"#.to_vec(),
        };
        let e = xml_error(&response, "ELB DescribeTargetGroups");
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert!(e.describe().contains("TargetGroupNotFound"), "{e:?}");
    }
}
