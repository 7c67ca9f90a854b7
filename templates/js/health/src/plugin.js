// {{name}}: the component's exports, binding logic.js to the engine's WIT types.
import { parse, urlToProbe, verdict } from "./logic.js";

const SCHEMA = JSON.stringify({
  type: "object",
  properties: { path: { type: "string", default: "/" } },
  additionalProperties: false,
});

export const health = {
  info() {
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: "Healthy when the revision answers `path` with a 2xx status",
      configSchema: SCHEMA,
      features: [],
      // The URLs come from the provider; the pipeline grants which hosts (allow_http).
      capabilities: { http: ["*://*:*"], env: [], dirs: [], secrets: [] },
    };
  },

  validate(config) {
    try {
      parse(config);
      return [];
    } catch (e) {
      return [{ severity: "error", path: "", message: e.message, hint: undefined }];
    }
  },

  async check(config, target) {
    let url;
    try {
      url = urlToProbe(target.endpoints, parse(config).path);
    } catch (e) {
      throw { tag: "invalid-config", val: e.message };
    }
    try {
      const response = await fetch(url);
      return { verdict: verdict(response.status), message: `GET ${url}: ${response.status}`, measurements: [] };
    } catch (e) {
      return { verdict: verdict(undefined), message: `GET ${url}: ${e.message ?? e}`, measurements: [] };
    }
  },
};
