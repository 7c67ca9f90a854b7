// {{name}}: the check's judgement in plain JavaScript, tested natively by test/logic.test.js.
//
// Healthy when the revision's URL answers `path` with a 2xx status.

export function parse(configText) {
  const config = JSON.parse(configText || "{}");
  const unknown = Object.keys(config).filter((k) => k !== "path");
  if (unknown.length) throw new Error(`unknown settings: ${unknown.sort().join(", ")}`);
  const path = config.path ?? "/";
  if (typeof path !== "string" || !path.startsWith("/")) throw new Error("`path` must start with /");
  return { path };
}

// The URL to probe: the revision's own first, then the service's.
export function urlToProbe(endpoints, path) {
  const ordered = [...endpoints].sort((a, b) => (a.kind === "revision" ? 0 : 1) - (b.kind === "revision" ? 0 : 1));
  if (!ordered.length) throw new Error("the provider lists no URL to probe");
  return ordered[0].url.replace(/\/+$/, "") + path;
}

// `status` is undefined when nobody answered.
export function verdict(status) {
  return status !== undefined && status >= 200 && status < 300 ? "healthy" : "unhealthy";
}
