// A platform to try {{name}} against on this machine: `node platform.js` serves its REST API on
// http://localhost:7800 (PORT overrides), keeping services in memory. Replace it with your
// platform's real API; the provider's calls in src/plugin.js show the shape such an API needs.
//
//   GET    /services/NAME                  the service, or 404
//   PUT    /services/NAME/revisions/ID     create revision ID (again: no change), body {runs}
//   PUT    /services/NAME/traffic          set the split, body [{revision, percent}]; 404 for an unknown revision
//   DELETE /services/NAME/revisions/ID     remove a revision; 409 while it takes traffic
//   DELETE /services/NAME                  remove the service
import http from "node:http";

const services = new Map();

function answer(response, status, body) {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(body === undefined ? "" : JSON.stringify(body));
}

function route(method, parts, body) {
  const [root, name, sub, id] = parts;
  if (root !== "services" || !name) return [404, { error: "no such route" }];
  const service = services.get(name);
  if (method === "GET" && !sub) return service ? [200, service] : [404, { error: `service ${name} does not exist` }];
  if (method === "DELETE" && !sub) {
    services.delete(name);
    return [204];
  }
  if (method === "PUT" && sub === "revisions" && id) {
    const s = service ?? { revisions: [], traffic: [] };
    if (!s.revisions.some((r) => r.id === id)) s.revisions.push({ id, runs: body?.runs ?? {} });
    services.set(name, s);
    return [200, { id }];
  }
  if (method === "PUT" && sub === "traffic") {
    if (!service) return [404, { error: `service ${name} does not exist` }];
    const unknown = (body ?? []).find((t) => !service.revisions.some((r) => r.id === t.revision));
    if (unknown) return [404, { error: `revision ${unknown.revision} does not exist` }];
    service.traffic = body.filter((t) => t.percent > 0);
    return [200, service.traffic];
  }
  if (method === "DELETE" && sub === "revisions" && id) {
    if (!service) return [204];
    if (service.traffic.some((t) => t.revision === id)) return [409, { error: `${id} still takes traffic` }];
    service.revisions = service.revisions.filter((r) => r.id !== id);
    return [204];
  }
  return [404, { error: "no such route" }];
}

const server = http.createServer((request, response) => {
  let text = "";
  request.on("data", (chunk) => (text += chunk));
  request.on("end", () => {
    let body;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      return answer(response, 400, { error: "the body is not JSON" });
    }
    const parts = new URL(request.url, "http://platform").pathname.split("/").filter(Boolean).map(decodeURIComponent);
    const [status, reply] = route(request.method, parts, body);
    answer(response, status, reply);
  });
});

const port = Number(process.env.PORT ?? 7800);
server.listen(port, "127.0.0.1", () => console.log(`platform on http://localhost:${port}`));
