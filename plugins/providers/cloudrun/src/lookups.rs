//! The lookups `plan` makes of what a service names: its service account (IAM v1), its VPC
//! connector in each region (Serverless VPC Access v1) and each Secret Manager secret version
//! it reads (Secret Manager v1). Cloud Run would refuse a revision that names a missing one
//! only when it is deployed, half-way through a rollout; looked up here, a typo fails the plan
//! with the name and the fix.
//!
//! Google answers 404 for what does not exist in a project the caller may read, and 403 for a
//! project it may not read "(or it may not exist)": both are reported with both causes named.

use super::api::Google;
use super::config::Config;
use super::form;
use engine_sdk::{Error, ErrorExt, ServiceSpec};
use serde_json::Value;

/// A name the service's configuration uses, with where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    ServiceAccount(String),
    /// `projects/P/locations/L/connectors/NAME`.
    Connector(String),
    /// A secret's version (in the reference's project, else the service's), and where the
    /// service uses it.
    SecretVersion {
        project: String,
        secret: String,
        version: String,
        used_by: String,
    },
}

/// A value that is still a reference's stand-in in a plan (known after deploy) names nothing
/// to look up yet.
fn is_stand_in(value: &str) -> bool {
    value.contains(".known-after-deploy.invalid") || value.contains("(known after ")
}

fn connector_name(config: &Config, region: &str, connector: &str) -> String {
    let connector = connector.replace("{region}", region);
    match connector.starts_with("projects/") {
        true => connector,
        false => format!(
            "projects/{}/locations/{region}/connectors/{connector}",
            config.project
        ),
    }
}

fn named(config: &Config, spec: &ServiceSpec) -> Result<Vec<Named>, Error> {
    let mut out = Vec::new();
    if let Some(sa) = &config.service_account {
        out.push(Named::ServiceAccount(sa.clone()));
    }
    if let Some(connector) = &config.vpc_connector {
        for region in config.regions() {
            out.push(Named::Connector(connector_name(config, &region, connector)));
        }
    }
    for s in &spec.secrets {
        let (secret, version) = form::secret_ref(&s.reference)?;
        let project = match s.reference.strip_prefix("projects/") {
            Some(rest) => rest.split('/').next().unwrap_or_default().to_string(),
            None => config.project.clone(),
        };
        out.push(Named::SecretVersion {
            project,
            secret,
            version,
            used_by: format!("variable {}", s.name),
        });
    }
    for v in &config.secret_volumes {
        out.push(Named::SecretVersion {
            project: config.project.clone(),
            secret: v.secret.clone(),
            version: v.version.clone(),
            used_by: format!("the file under {}", v.mount_path),
        });
    }
    out.retain(|n| match n {
        Named::ServiceAccount(s) | Named::Connector(s) => !is_stand_in(s),
        Named::SecretVersion { secret, .. } => !is_stand_in(secret),
    });
    out.dedup();
    Ok(out)
}

/// Looks up everything the service names; every problem found is reported at once.
pub fn check(config: &Config, spec: &ServiceSpec) -> Result<(), Error> {
    if !config.check_references {
        return Ok(());
    }
    let named = named(config, spec)?;
    if named.is_empty() {
        return Ok(());
    }
    let iam = Google::new(format!("{}/v1", config.google_api("iam")), "IAM")?;
    let vpc = Google::new(
        format!("{}/v1", config.google_api("vpcaccess")),
        "VPC Access",
    )?;
    let secrets = Google::new(
        format!("{}/v1", config.google_api("secretmanager")),
        "Secret Manager",
    )?;
    let mut problems = Vec::new();
    for n in &named {
        let problem = match n {
            Named::ServiceAccount(email) => service_account(&iam, email)?,
            Named::Connector(name) => connector(&vpc, name)?,
            Named::SecretVersion {
                project,
                secret,
                version,
                used_by,
            } => secret_version(&secrets, project, secret, version, used_by)?,
        };
        problems.extend(problem);
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Error::invalid_config(problems.join("; "))),
    }
}

/// Why a lookup found nothing, as Google answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// 404: the project is readable, and the name is not in it.
    NotFound,
    /// 403: the project cannot be read by the deployer, or does not exist.
    Hidden,
}

impl Missing {
    /// The problem and its fix: `create` for a name that is not there, `viewer` (the role
    /// that reads it) for a project the deployer cannot see.
    fn explain(self, what: &str, create: &str, viewer: &str) -> String {
        match self {
            Missing::NotFound => format!("{what} does not exist: {create}"),
            Missing::Hidden => format!(
                "{what} cannot be read (403: the deployer may not read the project, or it does not exist): grant the deployer {viewer} there, or correct the name"
            ),
        }
    }
}

/// A lookup's answer: `Ok(body)`, or why there is none; any other failure (the network, a
/// quota) is the caller's error.
fn look_up(api: &Google, path: &str) -> Result<Result<Value, Missing>, Error> {
    match api.get(path) {
        Ok(v) => Ok(Ok(v)),
        Err(Error::NotFound(_)) => Ok(Err(Missing::NotFound)),
        Err(Error::Unauthorized(_)) => Ok(Err(Missing::Hidden)),
        Err(e) => Err(e),
    }
}

fn service_account(api: &Google, email: &str) -> Result<Option<String>, Error> {
    let what = format!("service account {email}");
    let create = "create it (`gcloud iam service-accounts create`) or correct `service_account` in provider_config";
    Ok(
        match look_up(api, &format!("projects/-/serviceAccounts/{email}"))? {
            Err(missing) => Some(missing.explain(&what, create, "roles/iam.serviceAccountViewer")),
            Ok(account) if account["disabled"] == true => Some(format!(
                "{what} is disabled: enable it (`gcloud iam service-accounts enable {email}`) or name another"
            )),
            Ok(_) => None,
        },
    )
}

fn connector(api: &Google, name: &str) -> Result<Option<String>, Error> {
    let what = format!("VPC connector {name}");
    let create = "create it (`gcloud compute networks vpc-access connectors create`) or correct `vpc_connector` in provider_config";
    Ok(match look_up(api, name)? {
        Err(missing) => Some(missing.explain(&what, create, "roles/vpcaccess.viewer")),
        Ok(c) if c["state"] != "READY" => Some(format!(
            "{what} is {}, not READY: wait for it or repair it before deploying",
            c["state"].as_str().unwrap_or("in no state")
        )),
        Ok(_) => None,
    })
}

fn secret_version(
    api: &Google,
    project: &str,
    secret: &str,
    version: &str,
    used_by: &str,
) -> Result<Option<String>, Error> {
    let path = format!("projects/{project}/secrets/{secret}/versions/{version}");
    let what = format!("version {version} of secret {secret} (for {used_by})");
    let create = format!(
        "create the secret or add the version (`gcloud secrets create {secret}`, `gcloud secrets versions add {secret}`), or correct the reference"
    );
    Ok(match look_up(api, &path)? {
        Err(missing) => Some(missing.explain(&what, &create, "roles/secretmanager.viewer")),
        Ok(v) if v["state"] != "ENABLED" => Some(format!(
            "{what} is {}: a revision could not read it; enable it or name another version",
            v["state"].as_str().unwrap_or("in no state")
        )),
        Ok(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        let mut c = json!({"project": "p", "regions": ["europe-west1", "us-central1"]});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Config::parse(&c.to_string()).unwrap()
    }

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "api".into(),
            artifact: engine_sdk::Artifact::Image("api:1".into()),
            args: Vec::new(),
            env: Vec::new(),
            secrets: Vec::new(),
            resources: engine_sdk::Resources {
                cpu_millis: None,
                memory_mib: None,
            },
            scaling: engine_sdk::Scaling {
                min_instances: None,
                max_instances: None,
                concurrency: None,
            },
            port: None,
            ingress: engine_sdk::Ingress::Public,
            labels: Vec::new(),
            config: String::new(),
        }
    }

    #[test]
    fn a_short_connector_name_is_the_projects_own_in_each_region() {
        let c = config(json!({"vpc_connector": "aex-connector"}));
        assert_eq!(
            connector_name(&c, "europe-west1", "aex-connector"),
            "projects/p/locations/europe-west1/connectors/aex-connector"
        );
        assert_eq!(
            connector_name(
                &c,
                "us-central1",
                "projects/q/locations/{region}/connectors/x"
            ),
            "projects/q/locations/us-central1/connectors/x"
        );
    }

    #[test]
    fn stand_ins_and_a_turned_off_check_name_nothing() {
        assert!(is_stand_in("https://api.known-after-deploy.invalid"));
        let spec = spec();
        let c = config(
            json!({"service_account": "x@p.iam.gserviceaccount.com", "check_references": false}),
        );
        // Off: no lookup at all (none could be made here: no host is reachable in a unit test).
        assert!(check(&c, &spec).is_ok());
    }

    #[test]
    fn a_missing_name_and_a_hidden_project_have_different_fixes() {
        let missing = Missing::NotFound.explain("service account a@p", "create it", "roles/v");
        assert_eq!(missing, "service account a@p does not exist: create it");
        let hidden = Missing::Hidden.explain("service account a@p", "create it", "roles/v");
        assert!(hidden.contains("403"), "{hidden}");
        assert!(hidden.contains("grant the deployer roles/v"), "{hidden}");
        assert!(!hidden.contains("create it"), "{hidden}");
    }
}
