//! Google's discovery documents for the Cloud Run Admin API (`run.v2.json`, and `run.v1.json`
//! for the reads gcloud makes), and a checker that holds every request and response to them.
//!
//! The documents are not copied into this repository: [`fetch`] downloads the
//! `google-api-python-client` wheel from PyPI (pinned) once into a cache directory and reads them
//! from it. The checker understands the discovery schema language: `$ref`, object `properties`,
//! `additionalProperties` maps, arrays, the string formats (`int64` as decimal text,
//! `google-duration`, `google-datetime`, `byte`, `google-fieldmask`), numbers with `int32`
//! range, enums, `readOnly` (output only: refused in requests), and required fields (Google
//! marks them by starting the description with "Required.").

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The wheel the documents come from; pinned so tests see the same API revision everywhere.
pub const WHEEL: &str = "google-api-python-client==2.202.0";
const WHEEL_FILE: &str = "google_api_python_client-2.202.0-py3-none-any.whl";
const MEMBER_DIR: &str = "googleapiclient/discovery_cache/documents";

/// Downloads the wheel into `cache` unless it is there, and returns the two documents (v2, v1).
pub fn fetch(cache: &Path) -> anyhow::Result<(Value, Value)> {
    Ok((read(cache, "run.v2.json")?, read(cache, "run.v1.json")?))
}

/// One document of the wheel, such as `cloudscheduler.v1.json` (downloading the wheel first
/// unless it is in `cache`).
pub fn read(cache: &Path, document: &str) -> anyhow::Result<Value> {
    std::fs::create_dir_all(cache)?;
    let wheel = cache.join(WHEEL_FILE);
    if !wheel.exists() {
        // Download into a directory of our own, then rename: parallel test processes may race.
        static DOWNLOADS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = cache.join(format!("download-{}-{n}", std::process::id()));
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
            ])
            .arg(&scratch)
            .arg(WHEEL)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run python3 -m pip to fetch {WHEEL}: {e}"))?;
        anyhow::ensure!(
            status.success(),
            "`pip download {WHEEL}` failed; the Cloud Run tests need PyPI (or put {WHEEL_FILE} in {})",
            cache.display()
        );
        // Another test may have put it there meanwhile; either copy will do.
        let renamed = std::fs::rename(scratch.join(WHEEL_FILE), &wheel);
        let _ = std::fs::remove_dir_all(&scratch);
        if !wheel.exists() {
            renamed?;
        }
    }
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)?;
    let mut read = |name: &str| -> anyhow::Result<Value> {
        let entry = archive.by_name(&format!("{MEMBER_DIR}/{name}"))?;
        Ok(serde_json::from_reader(entry)?)
    };
    read(document)
}

/// Where test binaries keep the wheel: `target/discovery`.
pub fn default_cache() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("discovery")
}

/// One method of a document.
#[derive(Debug, Clone)]
pub struct Method {
    /// Such as `run.projects.locations.services.create`.
    pub id: String,
    pub http_method: String,
    /// `flatPath` split on `/`, such as `["v2", "projects", "{projectsId}", …]`.
    segments: Vec<String>,
    parameters: Map<String, Value>,
    pub request: Option<String>,
    pub response: Option<String>,
}

/// Whether a request or a response is being checked: requests may not carry output-only fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// A parsed discovery document.
pub struct Document {
    pub name: String,
    methods: Vec<Method>,
    schemas: Map<String, Value>,
    /// Query parameters every method accepts (`alt`, `fields`, `prettyPrint`…).
    common: Map<String, Value>,
}

fn collect(resource: &Value, out: &mut Vec<Method>) {
    if let Some(methods) = resource.get("methods").and_then(Value::as_object) {
        for m in methods.values() {
            let path = m["flatPath"]
                .as_str()
                .or(m["path"].as_str())
                .unwrap_or_default();
            out.push(Method {
                id: m["id"].as_str().unwrap_or_default().to_string(),
                http_method: m["httpMethod"].as_str().unwrap_or_default().to_string(),
                segments: path.split('/').map(String::from).collect(),
                parameters: m["parameters"].as_object().cloned().unwrap_or_default(),
                request: m["request"]["$ref"].as_str().map(String::from),
                response: m["response"]["$ref"].as_str().map(String::from),
            });
        }
    }
    if let Some(resources) = resource.get("resources").and_then(Value::as_object) {
        for r in resources.values() {
            collect(r, out);
        }
    }
}

/// Matches one path segment against a template segment such as `{servicesId}` or
/// `{servicesId}:getIamPolicy`, recording the parameter.
fn match_segment(template: &str, actual: &str, params: &mut BTreeMap<String, String>) -> bool {
    let Some(rest) = template.strip_prefix('{') else {
        return template == actual;
    };
    let Some((name, suffix)) = rest.split_once('}') else {
        return false;
    };
    let Some(value) = actual.strip_suffix(suffix) else {
        return false;
    };
    if value.is_empty() || value.contains(':') {
        return false;
    }
    params.insert(name.to_string(), value.to_string());
    true
}

impl Document {
    pub fn new(doc: &Value) -> Document {
        let mut methods = Vec::new();
        collect(doc, &mut methods);
        Document {
            name: doc["id"].as_str().unwrap_or("?").to_string(),
            methods,
            schemas: doc["schemas"].as_object().cloned().unwrap_or_default(),
            common: doc["parameters"].as_object().cloned().unwrap_or_default(),
        }
    }

    /// The method for `http_method` and a URL path (without the leading `/`), with its path
    /// parameters.
    pub fn route(
        &self,
        http_method: &str,
        path: &str,
    ) -> Option<(&Method, BTreeMap<String, String>)> {
        let actual: Vec<&str> = path.split('/').collect();
        self.methods.iter().find_map(|m| {
            if m.http_method != http_method || m.segments.len() != actual.len() {
                return None;
            }
            let mut params = BTreeMap::new();
            m.segments
                .iter()
                .zip(&actual)
                .all(|(t, a)| match_segment(t, a, &mut params))
                .then_some((m, params))
        })
    }

    /// Problems with a request's query parameters: unknown names, bad booleans or integers,
    /// missing required ones.
    pub fn check_query(&self, method: &Method, query: &[(String, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in query {
            let Some(spec) = method
                .parameters
                .get(name)
                .filter(|p| p["location"] == "query")
                .or_else(|| self.common.get(name))
            else {
                problems.push(format!(
                    "unknown query parameter `{name}` for {}",
                    method.id
                ));
                continue;
            };
            let ok = match spec["type"].as_str() {
                Some("boolean") => matches!(value.as_str(), "true" | "false"),
                Some("integer") => value.parse::<i64>().is_ok(),
                _ => spec["enum"]
                    .as_array()
                    .is_none_or(|e| e.iter().any(|v| v == value.as_str())),
            };
            if !ok {
                problems.push(format!(
                    "query parameter `{name}`: {value:?} is not a valid {}",
                    spec["type"]
                ));
            }
        }
        for (name, spec) in &method.parameters {
            if spec["location"] == "query"
                && spec["required"] == true
                && !query.iter().any(|(n, _)| n == name)
            {
                problems.push(format!("required query parameter `{name}` is missing"));
            }
        }
        problems
    }

    /// Problems with a body against schema `name`, each with its JSON path.
    pub fn check(&self, name: &str, value: &Value, direction: Direction) -> Vec<String> {
        let mut problems = Vec::new();
        self.check_ref(name, value, direction, "$", &mut problems);
        problems
    }

    fn check_ref(&self, name: &str, value: &Value, d: Direction, at: &str, out: &mut Vec<String>) {
        match self.schemas.get(name) {
            Some(schema) => self.check_schema(schema, value, d, at, out),
            None => out.push(format!("{at}: the document has no schema {name}")),
        }
    }

    fn check_schema(
        &self,
        schema: &Value,
        value: &Value,
        d: Direction,
        at: &str,
        out: &mut Vec<String>,
    ) {
        if let Some(name) = schema["$ref"].as_str() {
            return self.check_ref(name, value, d, at, out);
        }
        let kind = schema["type"].as_str().unwrap_or("any");
        let format = schema["format"].as_str().unwrap_or("");
        let mut wrong = |expected: &str| {
            out.push(format!("{at}: expected {expected}, found {value}"));
        };
        match (kind, value) {
            ("any", _) => {}
            ("object", Value::Object(fields)) => {
                if let Some(properties) = schema["properties"].as_object() {
                    for (field, v) in fields {
                        let path = format!("{at}.{field}");
                        match properties.get(field) {
                            None => out.push(format!("{path}: unknown field")),
                            Some(p) if d == Direction::Request && p["readOnly"] == true => {
                                out.push(format!("{path}: output-only field in a request"))
                            }
                            Some(p) => self.check_schema(p, v, d, &path, out),
                        }
                    }
                    for (field, p) in properties {
                        let required = p["description"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("Required."));
                        if required && !fields.contains_key(field) {
                            out.push(format!("{at}.{field}: required field missing"));
                        }
                    }
                } else if let Some(values) = schema.get("additionalProperties") {
                    for (key, v) in fields {
                        self.check_schema(values, v, d, &format!("{at}[{key:?}]"), out);
                    }
                }
            }
            ("array", Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.check_schema(&schema["items"], item, d, &format!("{at}[{i}]"), out);
                }
            }
            ("boolean", Value::Bool(_)) => {}
            ("integer", Value::Number(n)) => {
                let fits = match format {
                    "int32" => n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()),
                    "uint32" => n.as_u64().is_some_and(|v| u32::try_from(v).is_ok()),
                    _ => n.is_i64() || n.is_u64(),
                };
                if !fits {
                    wrong(&format!("an integer ({format})"));
                }
            }
            ("number", Value::Number(_)) => {}
            ("string", Value::String(s)) => {
                let ok = match format {
                    "int64" => s.strip_prefix('-').unwrap_or(s).parse::<u64>().is_ok(),
                    "uint64" => s.parse::<u64>().is_ok(),
                    "google-duration" => s
                        .strip_suffix('s')
                        .is_some_and(|n| n.parse::<f64>().is_ok_and(f64::is_finite)),
                    "google-datetime" => {
                        humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).is_ok()
                    }
                    "byte" => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                            || base64::engine::general_purpose::URL_SAFE.decode(s).is_ok()
                    }
                    _ => true,
                };
                if !ok {
                    wrong(&format!("a string in format {format}"));
                } else if let Some(values) = schema["enum"].as_array()
                    && !values.iter().any(|v| v == value)
                {
                    wrong(&format!("one of {}", Value::Array(values.clone())));
                }
            }
            (_, _) => wrong(&format!(
                "{kind}{}",
                if format.is_empty() {
                    String::new()
                } else {
                    format!(" ({format})")
                }
            )),
        }
    }
}
