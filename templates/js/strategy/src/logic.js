// {{name}}: the strategy's decisions in plain JavaScript, tested natively by test/logic.test.js.
//
// Sends `percent` of the traffic to the candidate, analyses it, then promotes it and retires
// the stable revision. A strategy is a pure state machine: the same inputs give the same step.

export function parse(configText) {
  const config = JSON.parse(configText || "{}");
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw new Error("the configuration must be a table");
  }
  const unknown = Object.keys(config).filter((k) => k !== "percent");
  if (unknown.length) throw new Error(`unknown settings: ${unknown.sort().join(", ")}`);
  const percent = config.percent ?? 10;
  if (!Number.isInteger(percent) || percent < 1 || percent > 99) {
    throw new Error("`percent` must be between 1 and 99");
  }
  return percent;
}

export function nextStage(state, hasStable, splits) {
  if (state === undefined || state === null) return splits && hasStable ? "split" : "analyse";
  if (state === "split") return "analyse";
  if (state === "analyse") return "promote";
  if (state === "promote" && hasStable) return "retire";
  return "done";
}
