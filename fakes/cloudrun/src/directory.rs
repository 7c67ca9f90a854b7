//! What a Cloud Run service names in its project, as the three APIs that own them answer:
//! service accounts (IAM v1, `iam.v1.json`), Serverless VPC Access connectors (`vpcaccess.v1.json`)
//! and Secret Manager secrets with their versions and IAM policies (`secretmanager.v1.json`).
//! Requests and responses are held to those documents by the server like the run API's.
//!
//! Google answers a lookup in a project the caller may not read with 403 `PERMISSION_DENIED`
//! "(or it may not exist)", and a missing resource in a project it may read with 404. The fake
//! does the same: a project becomes readable when anything is added to it (or by
//! [`Directory::readable`]); every other project answers 403.

use super::ApiError;
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A secret's version as Secret Manager keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    fn api(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }
}

#[derive(Debug, Default)]
struct StoredSecret {
    /// Versions 1, 2, … in order of creation.
    versions: Vec<VersionState>,
    policy: Option<Value>,
    etags: u64,
}

#[derive(Debug, Default)]
pub struct Directory {
    readable: BTreeSet<String>,
    /// Email → (project, disabled).
    accounts: BTreeMap<String, (String, bool)>,
    /// Full name → state (`READY`, `ERROR`…).
    connectors: BTreeMap<String, String>,
    /// `projects/P/secrets/S` → the secret.
    secrets: BTreeMap<String, StoredSecret>,
}

fn denied(permission: &str, resource: &str) -> ApiError {
    ApiError::new(
        403,
        "PERMISSION_DENIED",
        format!("Permission '{permission}' denied on resource '{resource}' (or it may not exist)."),
    )
}

fn not_found(message: String) -> ApiError {
    ApiError::new(404, "NOT_FOUND", message)
}

impl Directory {
    /// Lets the caller read `project` (lookups there answer 404 rather than 403).
    pub fn readable(&mut self, project: &str) {
        self.readable.insert(project.to_string());
    }

    /// A service account `email` in `project`.
    pub fn add_service_account(&mut self, project: &str, email: &str) {
        self.readable(project);
        self.accounts
            .insert(email.to_string(), (project.to_string(), false));
    }

    pub fn disable_service_account(&mut self, email: &str) {
        if let Some(account) = self.accounts.get_mut(email) {
            account.1 = true;
        }
    }

    /// A connector, `projects/P/locations/L/connectors/NAME`, in `state` (`READY` normally).
    pub fn add_connector(&mut self, name: &str, state: &str) {
        if let Some(project) = name.split('/').nth(1) {
            self.readable(project);
        }
        self.connectors.insert(name.to_string(), state.to_string());
    }

    /// A secret with versions 1… in the states given.
    pub fn add_secret(&mut self, project: &str, secret: &str, versions: &[VersionState]) {
        self.readable(project);
        let stored = self
            .secrets
            .entry(format!("projects/{project}/secrets/{secret}"))
            .or_default();
        stored.versions = versions.to_vec();
    }

    /// Grants `role` on a secret to `member`, as someone outside the engine would.
    pub fn add_secret_member(&mut self, project: &str, secret: &str, role: &str, member: &str) {
        let stored = self
            .secrets
            .entry(format!("projects/{project}/secrets/{secret}"))
            .or_default();
        let policy = stored.policy.get_or_insert_with(|| json!({ "version": 1 }));
        let mut held = members(policy, role);
        held.push(member.to_string());
        let mut bindings: Vec<Value> = policy["bindings"].as_array().cloned().unwrap_or_default();
        bindings.retain(|b| b["role"] != role);
        bindings.push(json!({ "role": role, "members": held }));
        policy["bindings"] = Value::Array(bindings);
        stored.etags += 1;
        let etag = format!("secret-etag-{}", stored.etags);
        policy["etag"] = json!(base64::engine::general_purpose::STANDARD.encode(etag));
    }

    /// The members holding `role` on a secret.
    pub fn secret_members(&self, project: &str, secret: &str, role: &str) -> Vec<String> {
        let policy = self
            .secrets
            .get(&format!("projects/{project}/secrets/{secret}"))
            .and_then(|s| s.policy.clone())
            .unwrap_or_default();
        members(&policy, role)
    }

    pub fn call(
        &mut self,
        method: &str,
        params: &BTreeMap<String, String>,
        input: Value,
    ) -> Result<Value, ApiError> {
        let p = |k: &str| params.get(k).cloned().unwrap_or_default();
        match method {
            "iam.projects.serviceAccounts.get" => {
                self.service_account(&p("projectsId"), &p("serviceAccountsId"))
            }
            "vpcaccess.projects.locations.connectors.get" => {
                let name = format!(
                    "projects/{}/locations/{}/connectors/{}",
                    p("projectsId"),
                    p("locationsId"),
                    p("connectorsId")
                );
                self.connector(&p("projectsId"), &name)
            }
            "secretmanager.projects.secrets.versions.get" => {
                self.version(&p("projectsId"), &p("secretsId"), &p("versionsId"))
            }
            "secretmanager.projects.secrets.getIamPolicy" => {
                let secret = self.secret(&p("projectsId"), &p("secretsId"), "getIamPolicy")?;
                Ok(secret
                    .policy
                    .clone()
                    .unwrap_or_else(|| json!({ "version": 1, "etag": "ACAB" })))
            }
            "secretmanager.projects.secrets.setIamPolicy" => {
                self.set_secret_policy(&p("projectsId"), &p("secretsId"), input)
            }
            other => Err(ApiError::new(
                400,
                "INVALID_ARGUMENT",
                format!("{other} is not modelled by the fake"),
            )),
        }
    }

    fn service_account(&self, project: &str, id: &str) -> Result<Value, ApiError> {
        let resource = format!("projects/{project}/serviceAccounts/{id}");
        // `-` stands for any project; an account is found by its email then.
        let found = self
            .accounts
            .get(id)
            .filter(|(home, _)| project == "-" || home == project);
        match found {
            Some((home, disabled)) => Ok(json!({
                "name": format!("projects/{home}/serviceAccounts/{id}"),
                "projectId": home,
                "email": id,
                "uniqueId": "104472457483209175551",
                "disabled": disabled,
            })),
            None => {
                let home = id.split('@').nth(1).and_then(|d| d.split('.').next());
                let readable = match project {
                    "-" => home.is_some_and(|h| self.readable.contains(h)),
                    p => self.readable.contains(p),
                };
                match readable {
                    true => Err(not_found(format!("Unknown service account: {resource}"))),
                    false => Err(denied("iam.serviceAccounts.get", &resource)),
                }
            }
        }
    }

    fn connector(&self, project: &str, name: &str) -> Result<Value, ApiError> {
        if !self.readable.contains(project) {
            return Err(denied("vpcaccess.connectors.get", name));
        }
        let state = self
            .connectors
            .get(name)
            .ok_or_else(|| not_found(format!("Connector {name} not found.")))?;
        Ok(
            json!({ "name": name, "network": "default", "ipCidrRange": "10.8.0.0/28", "state": state }),
        )
    }

    fn secret(
        &mut self,
        project: &str,
        id: &str,
        verb: &str,
    ) -> Result<&mut StoredSecret, ApiError> {
        let name = format!("projects/{project}/secrets/{id}");
        if !self.readable.contains(project) {
            return Err(denied(&format!("secretmanager.secrets.{verb}"), &name));
        }
        self.secrets
            .get_mut(&name)
            .ok_or_else(|| not_found(format!("Secret [{name}] not found or has no versions.")))
    }

    fn version(&mut self, project: &str, id: &str, version: &str) -> Result<Value, ApiError> {
        let full = format!("projects/{project}/secrets/{id}/versions/{version}");
        if !self.readable.contains(project) {
            return Err(denied("secretmanager.versions.get", &full));
        }
        let missing = || not_found(format!("Secret Version [{full}] not found."));
        let secret = self.secret(project, id, "get").map_err(|_| missing())?;
        // `latest` is the most recently created version, whatever its state.
        let number = match version {
            "latest" => secret.versions.len(),
            n => n.parse::<usize>().map_err(|_| {
                ApiError::new(
                    400,
                    "INVALID_ARGUMENT",
                    format!("Invalid secret version id [{n}]: a number or `latest`."),
                )
            })?,
        };
        let state = number
            .checked_sub(1)
            .and_then(|i| secret.versions.get(i))
            .ok_or_else(missing)?;
        Ok(json!({
            "name": format!("projects/{project}/secrets/{id}/versions/{number}"),
            "createTime": "2026-11-01T00:00:00Z",
            "state": state.api(),
        }))
    }

    fn set_secret_policy(
        &mut self,
        project: &str,
        id: &str,
        input: Value,
    ) -> Result<Value, ApiError> {
        let secret = self.secret(project, id, "setIamPolicy")?;
        let mut policy = input["policy"].clone();
        let current = secret.policy.as_ref().and_then(|p| p["etag"].as_str());
        if let Some(etag) = policy["etag"].as_str()
            && current.is_some_and(|c| c != etag)
        {
            return Err(ApiError::new(
                409,
                "ABORTED",
                "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
            ));
        }
        secret.etags += 1;
        policy["etag"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode(format!("secret-etag-{}", secret.etags))
        );
        policy["version"] = json!(1);
        secret.policy = Some(policy.clone());
        Ok(policy)
    }
}

/// The members of `role` in an IAM policy, sorted.
pub fn members(policy: &Value, role: &str) -> Vec<String> {
    let mut found: Vec<String> = policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == role)
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    found.sort();
    found.dedup();
    found
}
