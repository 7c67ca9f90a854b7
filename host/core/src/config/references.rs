//! References between the parts of a pipeline: `${services.NAME.url}`,
//! `${services.NAME.urls.PLACE}` and `${resources.NAME.outputs.KEY}`.
//!
//! Unlike `${variable}`, a reference is not known when the file is read: it names what another
//! service or resource becomes when it is deployed. Validation checks that it names something
//! the pipeline has and makes it a dependency; the executor fills it in once that dependency has
//! settled ([`resolve_json`]).

use super::variables::{Piece, pieces};
use std::collections::BTreeSet;

/// What a reference names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    /// `${services.NAME.url}`: the service's URL (in its first region, when it has several);
    /// `${services.NAME.urls.PLACE}`: its URL in one place (region).
    ServiceUrl {
        service: String,
        place: Option<String>,
    },
    /// `${resources.NAME.outputs.KEY}`: an output of a resource.
    ResourceOutput { resource: String, key: String },
}

impl Reference {
    /// The reference a `${…}` names, if it is one: `None` for a variable, an error for a
    /// reference written wrong.
    pub fn parse(inner: &str) -> Option<Result<Reference, String>> {
        let (head, rest) = inner.split_once('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        match head {
            "services" => Some(match parts[..] {
                [name, "url"] if !name.is_empty() => Ok(Reference::ServiceUrl {
                    service: name.into(),
                    place: None,
                }),
                [name, "urls", place] if !name.is_empty() && !place.is_empty() => {
                    Ok(Reference::ServiceUrl {
                        service: name.into(),
                        place: Some(place.into()),
                    })
                }
                [name, ..] => Err(format!(
                    "`${{{inner}}}`: a service's reference is `${{services.{name}.url}}`, or `${{services.{name}.urls.REGION}}` for its URL in one region"
                )),
                [] => unreachable!("split gives at least one part"),
            }),
            "resources" => Some(match parts[..] {
                [name, "outputs", key] if !name.is_empty() && !key.is_empty() => {
                    Ok(Reference::ResourceOutput {
                        resource: name.into(),
                        key: key.into(),
                    })
                }
                [name, ..] => Err(format!(
                    "`${{{inner}}}`: a resource's reference is `${{resources.{name}.outputs.KEY}}`"
                )),
                [] => unreachable!("split gives at least one part"),
            }),
            _ => None,
        }
    }

    /// The service or resource it depends on.
    pub fn target(&self) -> &str {
        match self {
            Reference::ServiceUrl { service, .. } => service,
            Reference::ResourceOutput { resource, .. } => resource,
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::ServiceUrl {
                service,
                place: None,
            } => write!(f, "${{services.{service}.url}}"),
            Reference::ServiceUrl {
                service,
                place: Some(place),
            } => write!(f, "${{services.{service}.urls.{place}}}"),
            Reference::ResourceOutput { resource, key } => {
                write!(f, "${{resources.{resource}.outputs.{key}}}")
            }
        }
    }
}

/// Whether `${inner}` is a reference (right or wrong) rather than a variable.
pub fn is_reference(inner: &str) -> bool {
    Reference::parse(inner).is_some()
}

/// The well-formed references in a string.
pub fn in_text(text: &str) -> Vec<Reference> {
    if !text.contains("${") {
        return Vec::new();
    }
    pieces(text)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(inner) => Reference::parse(inner)?.ok(),
            _ => None,
        })
        .collect()
}

/// Every well-formed reference in the strings of a JSON value (keys are not looked at).
pub fn in_json(value: &serde_json::Value) -> BTreeSet<Reference> {
    let mut found = BTreeSet::new();
    let mut pending = vec![value];
    while let Some(v) = pending.pop() {
        match v {
            serde_json::Value::String(s) => found.extend(in_text(s)),
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(map) => pending.extend(map.values()),
            _ => {}
        }
    }
    found
}

/// What stands for a reference whose value is known only after a deploy: in `engine plan`, and
/// when a spec is checked against its kind's schema before the run. A service's URL stands in
/// as one that cannot resolve (`.invalid` is reserved), so a schema's URL checks still pass.
pub fn stand_in(reference: &Reference) -> String {
    match reference {
        Reference::ServiceUrl {
            service,
            place: None,
        } => format!("https://{service}.known-after-deploy.invalid"),
        Reference::ServiceUrl {
            service,
            place: Some(place),
        } => format!("https://{service}.{place}.known-after-deploy.invalid"),
        Reference::ResourceOutput { resource, key } => {
            format!("(known after {resource} is applied: {key})")
        }
    }
}

/// A value with every reference replaced by its [`stand_in`].
pub fn with_stand_ins(json: &serde_json::Value) -> serde_json::Value {
    resolve_json(json, &|r| Ok(stand_in(r))).unwrap_or_else(|_| json.clone())
}

/// A reference whose value is not known (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reference} is not known: {why}")]
pub struct Unresolved {
    pub reference: Reference,
    pub why: String,
}

/// `text` with its references replaced by what `value` gives for each (`$${` gives `${`).
pub fn resolve_text(
    text: &str,
    value: &dyn Fn(&Reference) -> Result<String, String>,
) -> Result<String, Unresolved> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(inner) => match Reference::parse(inner) {
                Some(Ok(reference)) => match value(&reference) {
                    Ok(v) => out.push_str(&v),
                    Err(why) => return Err(Unresolved { reference, why }),
                },
                // Validation let no other `${…}` through; keep it as written.
                _ => {
                    out.push_str("${");
                    out.push_str(inner);
                    out.push('}');
                }
            },
            Piece::Unclosed => out.push_str("${"),
        }
    }
    Ok(out)
}

/// Every string of `json` resolved as by [`resolve_text`].
pub fn resolve_json(
    json: &serde_json::Value,
    value: &dyn Fn(&Reference) -> Result<String, String>,
) -> Result<serde_json::Value, Unresolved> {
    Ok(match json {
        serde_json::Value::String(s) => serde_json::Value::String(resolve_text(s, value)?),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| resolve_json(i, value))
            .collect::<Result<_, _>>()?,
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_json(v, value)?)))
                .collect::<Result<_, Unresolved>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(service: &str, place: Option<&str>) -> Reference {
        Reference::ServiceUrl {
            service: service.into(),
            place: place.map(String::from),
        }
    }

    #[test]
    fn references_are_told_from_variables_and_checked() {
        assert_eq!(
            Reference::parse("services.api.url"),
            Some(Ok(url("api", None)))
        );
        assert_eq!(
            Reference::parse("services.api.urls.europe-west1"),
            Some(Ok(url("api", Some("europe-west1"))))
        );
        assert_eq!(
            url("api", Some("europe-west1")).to_string(),
            "${services.api.urls.europe-west1}"
        );
        assert!(Reference::parse("services.api.urls").unwrap().is_err());
        assert_eq!(
            Reference::parse("resources.db.outputs.host"),
            Some(Ok(Reference::ResourceOutput {
                resource: "db".into(),
                key: "host".into()
            }))
        );
        assert_eq!(Reference::parse("project"), None);
        assert_eq!(Reference::parse("region.name"), None);
        let wrong = Reference::parse("services.api.uri").unwrap().unwrap_err();
        assert!(wrong.contains("${services.api.url}"), "{wrong}");
        assert!(Reference::parse("resources.db.host").unwrap().is_err());
    }

    #[test]
    fn resolving_fills_references_and_keeps_escapes() {
        let value = |r: &Reference| match r {
            Reference::ServiceUrl { service, .. } if service == "api" => {
                Ok("https://api.run.app".to_string())
            }
            _ => Err("not deployed".to_string()),
        };
        let text = "${services.api.url}/reset and $${literal}";
        assert_eq!(
            resolve_text(text, &value).unwrap(),
            "https://api.run.app/reset and ${literal}"
        );
        let json =
            serde_json::json!({"uri": "${services.api.url}/x", "n": [1, "${services.api.url}"]});
        assert_eq!(
            resolve_json(&json, &value).unwrap(),
            serde_json::json!({"uri": "https://api.run.app/x", "n": [1, "https://api.run.app"]})
        );
        let err = resolve_text("${services.web.url}", &value).unwrap_err();
        assert_eq!(
            err.to_string(),
            "${services.web.url} is not known: not deployed"
        );
        assert_eq!(
            in_json(&json).into_iter().collect::<Vec<_>>(),
            [url("api", None)]
        );
    }
}
