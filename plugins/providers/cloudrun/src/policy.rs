//! IAM policies of the resources the provider manages (a Cloud Run service, a Secret Manager
//! secret): both APIs read a policy with `GET NAME:getIamPolicy` and write it whole with
//! `POST NAME:setIamPolicy`, guarded by the policy's etag.

use super::api::Google;
use engine_sdk::{Error, ErrorExt};
use serde_json::{Value, json};

pub const INVOKER: &str = "roles/run.invoker";
pub const SECRET_ACCESSOR: &str = "roles/secretmanager.secretAccessor";

/// The members of `role` in a policy, sorted, once each.
pub fn members(policy: &Value, role: &str) -> Vec<String> {
    let mut members: Vec<String> = policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == role)
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    members.sort();
    members.dedup();
    members
}

/// `policy` with `role` granted to exactly `members` (other roles untouched).
pub fn with_members(policy: &Value, role: &str, members: &[String]) -> Value {
    let mut out = policy.clone();
    let mut bindings: Vec<Value> = policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] != role)
        .cloned()
        .collect();
    if !members.is_empty() {
        let mut sorted = members.to_vec();
        sorted.sort();
        sorted.dedup();
        bindings.push(json!({ "role": role, "members": sorted }));
    }
    out["bindings"] = json!(bindings);
    out
}

/// The policy of `resource`.
pub fn read(api: &Google, resource: &str) -> Result<Value, Error> {
    api.get(&format!("{resource}:getIamPolicy"))
}

/// Sets `role`'s members on `resource` to what `change` makes of the current ones, reading the
/// policy again when someone else changed it between the read and the write.
pub fn update(
    api: &Google,
    resource: &str,
    role: &str,
    change: impl Fn(&[String]) -> Vec<String>,
) -> Result<(), Error> {
    for _ in 0..3 {
        let policy = read(api, resource)?;
        let current = members(&policy, role);
        let mut wanted = change(&current);
        wanted.sort();
        wanted.dedup();
        if wanted == current {
            return Ok(());
        }
        let body = json!({ "policy": with_members(&policy, role, &wanted) });
        match api.send("POST", &format!("{resource}:setIamPolicy"), Some(&body)) {
            Ok(_) => return Ok(()),
            Err(Error::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::conflict(format!(
        "the IAM policy of {resource} kept changing while {role} was set; run again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_is_replaced_and_the_others_kept() {
        let policy = json!({ "etag": "e", "bindings": [
            { "role": "roles/viewer", "members": ["user:a@x"] },
            { "role": INVOKER, "members": ["user:b@x", "user:a@x"] },
        ] });
        assert_eq!(members(&policy, INVOKER), ["user:a@x", "user:b@x"]);
        let changed = with_members(&policy, INVOKER, &["user:c@x".into()]);
        assert_eq!(changed["etag"], "e");
        assert_eq!(members(&changed, INVOKER), ["user:c@x"]);
        assert_eq!(members(&changed, "roles/viewer"), ["user:a@x"]);
        let emptied = with_members(&policy, INVOKER, &[]);
        assert_eq!(emptied["bindings"].as_array().unwrap().len(), 1);
    }
}
