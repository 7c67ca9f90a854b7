//! The Cloud Run Admin API v2 calls the provider makes, with long-running operations polled to
//! completion and Google's errors mapped to the WIT error cases.
//!
//! The provider never holds a credential: every request carries the placeholder of the granted
//! secret `google`, and the host puts the OAuth2 access token in as the request leaves.

use super::config::Config;
use engine_sdk::http::Client;
use engine_sdk::secrets::Secret;
use engine_sdk::{Error, ErrorExt};
use serde_json::Value;
use std::time::Duration;

/// The secret the pipeline grants for the access token.
pub const TOKEN_SECRET: &str = "google";

/// One Google API at its base URL (such as `https://run.googleapis.com/v2`), called with the
/// access token's placeholder.
pub struct Google {
    base: String,
    token: Secret,
    client: Client,
}

impl Google {
    /// `what` names the API in the error when the token secret is not granted.
    pub fn new(base: String, what: &str) -> Result<Google, Error> {
        let token = Secret::open(TOKEN_SECRET).map_err(|e| {
            e.context(format!(
                "cloudrun needs the secret `{TOKEN_SECRET}` (an access token) for {what}; grant it under [plugins.cloudrun.secrets]"
            ))
        })?;
        Ok(Google {
            base,
            token,
            client: Client::new().with_timeout(Duration::from_secs(30)),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, Error> {
        self.client
            .get(&format!("{}/{path}", self.base))
            .bearer(&self.token)
            .send_json()
    }

    /// `get`, with 404 as `None`.
    pub fn find(&self, path: &str) -> Result<Option<Value>, Error> {
        match self.get(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let mut request = self
            .client
            .request(method, &format!("{}/{path}", self.base))
            .bearer(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send_json()
    }

    /// Deletes what answers no operation (a job); nothing to delete is not an error.
    pub fn delete(&self, path: &str) -> Result<(), Error> {
        let deleted = self
            .client
            .delete(&format!("{}/{path}", self.base))
            .bearer(&self.token)
            .send();
        match deleted {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The Cloud Run Admin API v2.
pub struct Api {
    google: Google,
    poll: Duration,
}

/// The WIT error for a google.rpc.Code in a failed operation.
fn rpc_error(code: i64, message: String) -> Error {
    match code {
        3 | 11 => Error::invalid_config(message),
        5 => Error::not_found(message),
        6 | 10 => Error::conflict(message),
        7 | 16 => Error::unauthorized(message),
        8 => Error::rate_limited(message, None),
        4 | 13 | 14 => Error::transient(message),
        _ => Error::fatal(message),
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound(_))
}

impl Api {
    pub fn new(config: &Config) -> Result<Api, Error> {
        let base = format!("{}/v2", config.endpoint.trim_end_matches('/'));
        Ok(Api {
            google: Google::new(base, "the Cloud Run API")?,
            poll: Duration::from_millis(config.poll_interval_ms),
        })
    }

    fn get(&self, path: &str) -> Result<Value, Error> {
        self.google.get(path)
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        self.google.send(method, path, body)
    }

    /// A service, or `None` when it does not exist.
    pub fn service(&self, name: &str) -> Result<Option<Value>, Error> {
        self.google.find(name)
    }

    /// Creates a service and waits for it; returns the service.
    pub fn create(&self, location: &str, id: &str, body: &Value) -> Result<Value, Error> {
        let op = self.send(
            "POST",
            &format!("{location}/services?serviceId={id}"),
            Some(body),
        )?;
        self.wait(op)
    }

    /// Replaces a service's configuration and waits; returns the service.
    pub fn update(&self, name: &str, body: &Value) -> Result<Value, Error> {
        let op = self.send("PATCH", name, Some(body))?;
        self.wait(op)
    }

    /// Deletes a service (or a revision) and waits; nothing to delete is not an error.
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        match self.send("DELETE", name, None) {
            Ok(op) => self.wait(op).map(|_| ()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn revision(&self, name: &str) -> Result<Option<Value>, Error> {
        self.google.find(name)
    }

    /// A revision once its Ready condition has settled (succeeded or failed): a resumed
    /// deployment finds its revision, which may still be starting.
    pub fn settled_revision(&self, name: &str) -> Result<Option<Value>, Error> {
        loop {
            let Some(revision) = self.revision(name)? else {
                return Ok(None);
            };
            let state = revision["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["state"].as_str())
                .unwrap_or("");
            if matches!(state, "CONDITION_SUCCEEDED" | "CONDITION_FAILED") {
                return Ok(Some(revision));
            }
            std::thread::sleep(self.poll);
        }
    }

    /// A service's revisions, newest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<Value>, Error> {
        let list = self.get(&format!("{name}/revisions"))?;
        Ok(list["revisions"].as_array().cloned().unwrap_or_default())
    }

    /// The API itself, for calls shared with the other APIs (IAM policies).
    pub fn google(&self) -> &Google {
        &self.google
    }

    /// Polls a long-running operation until it is done: its `response`, or its `error` as the
    /// matching WIT error with Cloud Run's message.
    pub fn wait(&self, mut op: Value) -> Result<Value, Error> {
        let name = op["name"]
            .as_str()
            .ok_or_else(|| {
                Error::fatal(format!("the API answered without an operation name: {op}"))
            })?
            .to_string();
        while op["done"] != true {
            std::thread::sleep(self.poll);
            op = self.get(&name)?;
        }
        if let Some(error) = op.get("error") {
            let message = error["message"].as_str().unwrap_or("the operation failed");
            return Err(rpc_error(
                error["code"].as_i64().unwrap_or(2),
                format!("{message} (operation {name})"),
            ));
        }
        Ok(op["response"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_errors_map_to_what_the_host_should_do() {
        assert!(matches!(rpc_error(9, "x".into()), Error::Fatal(_)));
        assert!(matches!(rpc_error(14, "x".into()), Error::Transient(_)));
        assert!(matches!(rpc_error(7, "x".into()), Error::Unauthorized(_)));
        assert!(matches!(rpc_error(3, "x".into()), Error::InvalidConfig(_)));
        assert!(matches!(rpc_error(10, "x".into()), Error::Conflict(_)));
    }
}
