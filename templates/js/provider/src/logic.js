// {{name}}: the provider's decisions in plain JavaScript, tested natively by
// test/logic.test.js. src/plugin.js makes the calls to the platform's API.

export function parse(configText) {
  const config = JSON.parse(configText || "{}");
  const unknown = Object.keys(config).filter((k) => k !== "endpoint");
  if (unknown.length) throw new Error(`unknown settings: ${unknown.sort().join(", ")}`);
  if (typeof config.endpoint !== "string" || !/^https?:\/\//.test(config.endpoint)) {
    throw new Error("`endpoint` must be the platform's URL, such as http://localhost:7800");
  }
  return { endpoint: config.endpoint.replace(/\/+$/, "") };
}

// What a revision runs, as `plan` compares it.
export function runs(spec) {
  return { artifact: spec.artifact.val, args: spec.args, env: spec.env };
}

// What the revision serving the most traffic runs ({} before any takes traffic).
export function deployed(service) {
  const serving = [...service.traffic].filter((t) => t.percent > 0).sort((a, b) => b.percent - a.percent)[0];
  const revision = serving && service.revisions.find((r) => r.id === serving.revision);
  return revision ? revision.runs : {};
}

// The fields whose value differs, with both values as JSON.
export function changes(before, after) {
  return Object.keys(after)
    .filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]))
    .map((k) => ({ field: k, before: before[k] === undefined ? undefined : JSON.stringify(before[k]), after: JSON.stringify(after[k]) }));
}

// The engine's error for an HTTP status the platform answered with.
export function errorFor(status, message) {
  if (status === 404) return { tag: "not-found", val: message };
  if (status === 409) return { tag: "conflict", val: message };
  if (status === 401 || status === 403) return { tag: "unauthorized", val: message };
  if (status === 429) return { tag: "rate-limited", val: { message, retryAfterMs: undefined } };
  if (status >= 500) return { tag: "transient", val: message };
  return { tag: "fatal", val: message };
}
