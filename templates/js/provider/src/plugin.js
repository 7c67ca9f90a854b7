// {{name}}: a provider for the REST API platform.js serves (replace it with your platform's).
// Every call keeps the engine's provider contract (docs/provider-contract.md), which
// `engine plugins check` checks rule by rule.
import { parse, runs, deployed, changes, errorFor } from "./logic.js";

const SCHEMA = JSON.stringify({
  type: "object",
  properties: { endpoint: { type: "string", description: "The platform's URL" } },
  required: ["endpoint"],
  additionalProperties: false,
});

function endpointOf(config) {
  try {
    return parse(config).endpoint;
  } catch (e) {
    throw { tag: "invalid-config", val: e.message };
  }
}

// One request to the platform: the parsed answer, or undefined for `allow404`'s 404. A
// refusal throws the engine's typed error.
async function call(config, method, path, body, allow404 = false) {
  const url = endpointOf(config) + path;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw { tag: "transient", val: `${method} ${url}: ${e.message ?? e}` };
  }
  const text = await response.text();
  if (response.status === 404 && allow404) return undefined;
  if (!response.ok) throw errorFor(response.status, `${method} ${url}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

const path = (...parts) => "/" + parts.map(encodeURIComponent).join("/");
const revision = (id) => ({ id, artifact: undefined, createdAtMs: undefined, ready: true, message: undefined });
const split = (traffic) => traffic.filter((t) => t.percent > 0).map((t) => ({ revision: t.revision, percent: t.percent }));

export const provider = {
  info() {
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: "Services on the platform at `endpoint`",
      configSchema: SCHEMA,
      features: ["traffic-split", "retire-revisions"],
      // The platform's address comes from the configuration; the pipeline grants which.
      capabilities: { http: ["*://*:*"], env: [], dirs: [], secrets: [] },
    };
  },

  validate(spec) {
    try {
      parse(spec.config);
      return [];
    } catch (e) {
      return [{ severity: "error", path: "", message: e.message, hint: undefined }];
    }
  },

  async read(service) {
    const found = await call(service.config, "GET", path("services", service.name), undefined, true);
    if (!found) return undefined;
    return {
      revisions: [...found.revisions].reverse().map((r) => revision(r.id)),
      traffic: split(found.traffic),
      url: undefined,
      deployed: JSON.stringify(deployed(found)),
    };
  },

  plan(desired, current) {
    if (!current) return { action: "create", changes: [], summary: `create ${desired.name}` };
    const found = changes(JSON.parse(current.deployed || "{}"), runs(desired));
    return {
      action: found.length ? "update" : "no-change",
      changes: found,
      summary: `${found.length ? "update" : "no change to"} ${desired.name}`,
    };
  },

  async deploy(spec, deploymentId) {
    // The same deployment id names the same revision: a repeated deploy finds it.
    const id = `${spec.name}-${deploymentId}`;
    await call(spec.config, "PUT", path("services", spec.name, "revisions", id), { runs: runs(spec) });
    return revision(id);
  },

  async setTraffic(service, targets) {
    await call(service.config, "PUT", path("services", service.name, "traffic"), targets);
  },

  async getTraffic(service) {
    const found = await call(service.config, "GET", path("services", service.name), undefined, true);
    return found ? split(found.traffic) : [];
  },

  endpoints(service, _revision) {
    // This platform serves nothing itself: the service's own address would go here.
    return [{ url: `http://${service.name}.invalid`, kind: "service", revision: undefined }];
  },

  async retire(service, id) {
    await call(service.config, "DELETE", path("services", service.name, "revisions", id));
  },

  async destroy(service) {
    await call(service.config, "DELETE", path("services", service.name));
  },
};
