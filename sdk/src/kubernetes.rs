//! A Kubernetes API client (feature `kubernetes`) whose requests the host sends to the cluster a
//! granted secret names (`from = "kubeconfig"`, `"kubeconfig:CONTEXT"` or `"in-cluster"`), with
//! that cluster's credentials and certificate authority: the plugin never sees the server's
//! address, a token or a key. It must declare `https://kubernetes.invalid` in its capabilities.
//!
//! The API server's errors become the WIT errors by their status (a validation failure, 422,
//! is `invalid-config` with the server's message; 409 `conflict`; 429 `rate-limited` with its
//! `Retry-After`; 5xx `transient`), and reads and idempotent writes are retried as
//! [`crate::http::Client`] retries.

use crate::http::{Client, RequestBuilder};
use crate::secrets::Secret;
use crate::{Error, ErrorExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Where a plugin sends a cluster's requests; the host sends them on to the API server.
pub const API_BASE: &str = "https://kubernetes.invalid";
/// The header naming the cluster secret a request is for.
pub const CLUSTER_HEADER: &str = "x-engine-kubernetes";

/// One cluster, through a granted secret.
pub struct Cluster {
    secret: Secret,
    http: Client,
    /// Discovered resources by `apiVersion` and kind.
    discovered: Mutex<HashMap<(String, String), Resource>>,
}

/// A kind of object as the API serves it: where its objects are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `v1`, `apps/v1`, `gateway.networking.k8s.io/v1`…
    pub api_version: String,
    /// The plural name in paths: `deployments`.
    pub plural: String,
    pub namespaced: bool,
}

impl Resource {
    pub fn new(api_version: &str, plural: &str, namespaced: bool) -> Resource {
        Resource {
            api_version: api_version.into(),
            plural: plural.into(),
            namespaced,
        }
    }

    /// The collection's path: `/apis/apps/v1/namespaces/NS/deployments` (or `/api/v1/…` for
    /// the core group; no namespace for a cluster-wide kind).
    pub fn collection(&self, namespace: &str) -> String {
        let group = if self.api_version.contains('/') {
            format!("/apis/{}", self.api_version)
        } else {
            format!("/api/{}", self.api_version)
        };
        if self.namespaced {
            format!("{group}/namespaces/{namespace}/{}", self.plural)
        } else {
            format!("{group}/{}", self.plural)
        }
    }

    /// One object's path.
    pub fn object(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(namespace))
    }
}

impl Cluster {
    /// The cluster the granted secret `name` names.
    pub fn open(name: &str) -> Result<Cluster, Error> {
        let secret = Secret::open(name).map_err(|e| {
            e.context(format!(
                "the plugin needs the secret `{name}` (a Kubernetes cluster, such as `{name} = {{ from = \"kubeconfig\" }}`) under its [plugins.NAME.secrets]"
            ))
        })?;
        Ok(Cluster {
            secret,
            http: Client::new().with_timeout(Duration::from_secs(30)),
            discovered: Mutex::new(HashMap::new()),
        })
    }

    fn request(&self, method: &str, path_and_query: &str) -> RequestBuilder<'_> {
        self.http
            .request(method, &format!("{API_BASE}{path_and_query}"))
            .header(CLUSTER_HEADER, self.secret.placeholder())
            .header("accept", "application/json")
    }

    /// The object at `path`, or `None` when it does not exist.
    pub fn get(&self, path: &str) -> Result<Option<Value>, Error> {
        match self.request("GET", path).send_json() {
            Ok(object) => Ok(Some(object)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The objects of a collection, optionally those a label selector (`app=web,tier!=db`)
    /// matches.
    pub fn list(
        &self,
        collection: &str,
        label_selector: Option<&str>,
    ) -> Result<Vec<Value>, Error> {
        let path = match label_selector {
            Some(selector) => format!("{collection}?labelSelector={}", encode(selector)),
            None => collection.to_string(),
        };
        let list: Value = self.request("GET", &path).send_json()?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Server-side apply of `object` to `path` under the field manager `manager`, taking over
    /// fields another manager set (`force`). With `dry_run`, the API server computes and
    /// validates the result and stores nothing (`dryRun=All`): what `engine plan` shows.
    pub fn apply(
        &self,
        path: &str,
        object: &Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, Error> {
        let dry = if dry_run { "&dryRun=All" } else { "" };
        let query = format!("{path}?fieldManager={}&force=true{dry}", encode(manager));
        let body = serde_json::to_vec(object)?;
        self.request("PATCH", &query)
            .header("content-type", "application/apply-patch+yaml")
            .body(body)
            .send_json()
    }

    /// A JSON merge patch of the object at `path`.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, Error> {
        let body = serde_json::to_vec(patch)?;
        self.request("PATCH", path)
            .header("content-type", "application/merge-patch+json")
            .body(body)
            .send_json()
    }

    /// Deletes the object at `path` and, in the background, what it owns (a Deployment's
    /// ReplicaSets and pods). Whether it existed.
    pub fn delete(&self, path: &str) -> Result<bool, Error> {
        match self
            .request("DELETE", &format!("{path}?propagationPolicy=Background"))
            .send()
        {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Where the objects of `kind` in `api_version` are, from the API server's discovery
    /// (cached); `not-found` when the cluster does not serve that kind (a CRD not installed).
    pub fn resource(&self, api_version: &str, kind: &str) -> Result<Resource, Error> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(found) = self.discovered.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        let path = if api_version.contains('/') {
            format!("/apis/{api_version}")
        } else {
            format!("/api/{api_version}")
        };
        let list = self.get(&path)?.ok_or_else(|| {
            Error::not_found(format!(
                "the cluster does not serve {api_version} (is its API or CRD installed?)"
            ))
        })?;
        let found = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["kind"] == kind && !r["name"].as_str().unwrap_or("/").contains('/'))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "the cluster serves no kind {kind} in {api_version}"
                ))
            })?;
        let resource = Resource::new(
            api_version,
            found["name"].as_str().unwrap_or_default(),
            found["namespaced"].as_bool().unwrap_or(true),
        );
        self.discovered
            .lock()
            .unwrap()
            .insert(key, resource.clone());
        Ok(resource)
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The well-known kinds the provider uses, without asking discovery.
pub mod kinds {
    use super::Resource;

    pub fn deployments() -> Resource {
        Resource::new("apps/v1", "deployments", true)
    }
    pub fn services() -> Resource {
        Resource::new("v1", "services", true)
    }
    pub fn endpoint_slices() -> Resource {
        Resource::new("discovery.k8s.io/v1", "endpointslices", true)
    }
    pub fn pods() -> Resource {
        Resource::new("v1", "pods", true)
    }
    pub fn horizontal_pod_autoscalers() -> Resource {
        Resource::new("autoscaling/v2", "horizontalpodautoscalers", true)
    }
    pub fn http_routes() -> Resource {
        Resource::new("gateway.networking.k8s.io/v1", "httproutes", true)
    }
    pub fn namespaces() -> Resource {
        Resource::new("v1", "namespaces", false)
    }
    pub fn config_maps() -> Resource {
        Resource::new("v1", "configmaps", true)
    }
    pub fn events() -> Resource {
        Resource::new("v1", "events", true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_api_groups() {
        assert_eq!(
            kinds::deployments().object("shop", "web-r2"),
            "/apis/apps/v1/namespaces/shop/deployments/web-r2"
        );
        assert_eq!(
            kinds::services().collection("shop"),
            "/api/v1/namespaces/shop/services"
        );
        assert_eq!(
            kinds::namespaces().object("", "shop"),
            "/api/v1/namespaces/shop"
        );
    }
}
