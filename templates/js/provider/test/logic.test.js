import { test } from "node:test";
import assert from "node:assert/strict";
import { parse, deployed, changes, errorFor } from "../src/logic.js";

test("the endpoint is required and must be a URL", () => {
  assert.equal(parse('{"endpoint": "http://localhost:7800/"}').endpoint, "http://localhost:7800");
  assert.throws(() => parse("{}"));
  assert.throws(() => parse('{"endpoint": "localhost"}'));
});

test("deployed is what the serving revision runs", () => {
  const service = {
    revisions: [{ id: "a", runs: { artifact: "x:1" } }, { id: "b", runs: { artifact: "x:2" } }],
    traffic: [{ revision: "a", percent: 100 }, { revision: "b", percent: 0 }],
  };
  assert.deepEqual(deployed(service), { artifact: "x:1" });
  assert.deepEqual(deployed({ revisions: [], traffic: [] }), {});
});

test("only changed fields are listed", () => {
  assert.deepEqual(changes({ a: 1, b: [2] }, { a: 1, b: [2] }), []);
  assert.equal(changes({ a: 1 }, { a: 2 })[0].field, "a");
});

test("statuses map to the engine's errors", () => {
  assert.equal(errorFor(404, "x").tag, "not-found");
  assert.equal(errorFor(503, "x").tag, "transient");
  assert.equal(errorFor(400, "x").tag, "fatal");
});
