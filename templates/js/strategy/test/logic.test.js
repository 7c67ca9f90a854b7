import { test } from "node:test";
import assert from "node:assert/strict";
import { parse, nextStage } from "../src/logic.js";

test("a rollout with a stable revision splits, analyses, promotes and retires", () => {
  const stages = [];
  let state;
  while (state !== "done") {
    state = nextStage(state, true, true);
    stages.push(state);
  }
  assert.deepEqual(stages, ["split", "analyse", "promote", "retire", "done"]);
});

test("a first release has nothing to split with", () => {
  assert.equal(nextStage(undefined, false, true), "analyse");
});

test("percent is checked", () => {
  assert.equal(parse(""), 10);
  assert.equal(parse('{"percent": 25}'), 25);
  assert.throws(() => parse('{"percent": 100}'));
  assert.throws(() => parse('{"steps": [1]}'));
});
