import { test } from "node:test";
import assert from "node:assert/strict";
import { parse, urlToProbe, verdict } from "../src/logic.js";

test("the revision's URL is probed first, joined with the path", () => {
  const endpoints = [
    { kind: "service", url: "https://api.example.com" },
    { kind: "revision", url: "http://127.0.0.1:8081/" },
  ];
  assert.equal(urlToProbe(endpoints, "/healthz"), "http://127.0.0.1:8081/healthz");
});

test("only a 2xx answer is healthy", () => {
  assert.equal(verdict(200), "healthy");
  assert.equal(verdict(503), "unhealthy");
  assert.equal(verdict(undefined), "unhealthy");
});

test("the path must be absolute", () => {
  assert.equal(parse("").path, "/");
  assert.throws(() => parse('{"path": "healthz"}'));
});
