// {{name}}: the component's exports, binding logic.js to the engine's WIT types.
import { parse, nextStage } from "./logic.js";

const SCHEMA = JSON.stringify({
  type: "object",
  properties: { percent: { type: "integer", minimum: 1, maximum: 99, default: 10 } },
  additionalProperties: false,
});

const result = (stage, decision) => ({ state: stage, decision, phase: stage });

export const strategy = {
  info() {
    return {
      name: "{{name}}",
      version: "0.1.0",
      description: "Analyses the candidate at a share of the traffic, then promotes it",
      configSchema: SCHEMA,
      features: [],
      capabilities: { http: [], env: [], dirs: [], secrets: [] },
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

  step(rollout, state, observation, _nowMs) {
    let percent;
    try {
      percent = parse(rollout.config);
    } catch (e) {
      throw { tag: "invalid-config", val: e.message };
    }
    if (observation.tag === "analysed") {
      const failing = observation.val
        .filter((c) => c.verdict === "unhealthy")
        .map((c) => `${c.name} (${c.message})`);
      if (failing.length) return result("aborted", { tag: "abort", val: `unhealthy: ${failing.join("; ")}` });
    }
    if (observation.tag === "rejected") return result("aborted", { tag: "abort", val: observation.val });
    const splits = rollout.features.includes("traffic-split");
    const stage = nextStage(state, rollout.stable !== undefined, splits);
    const candidate = rollout.candidate;
    const decision = {
      split: {
        tag: "set-traffic",
        val: [
          { revision: candidate, percent },
          { revision: rollout.stable, percent: 100 - percent },
        ],
      },
      analyse: { tag: "analyse", val: { revision: candidate, checks: [] } },
      promote: { tag: "promote" },
      retire: { tag: "retire", val: rollout.stable },
      done: { tag: "done" },
    }[stage];
    return result(stage, decision);
  },
};
