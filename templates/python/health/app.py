"""{{name}}: the component's exports, binding logic.py to the engine's WIT types."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import health as h
from wit_world.imports import engine_plugin_types as t
from wit_world.imports import tcp

import logic

SCHEMA = '{"type":"object","additionalProperties":false}'


class Health(exports.Health):
    def info(self):
        return t.PluginInfo(
            name="{{name}}",
            version="0.1.0",
            description="Healthy when the revision's address accepts a TCP connection",
            config_schema=SCHEMA,
            features=[],
            # The destinations come from the provider; the pipeline grants which (allow_tcp).
            capabilities=t.Capabilities(http=["tcp://*:*"], env=[], dirs=[], secrets=[]),
        )

    def validate(self, config):
        return []

    def check(self, config, target):
        kinds = {t.EndpointKind.SERVICE: "service", t.EndpointKind.REVISION: "revision"}
        try:
            host, port = logic.address([(kinds[e.kind], e.url) for e in target.endpoints])
        except ValueError as e:
            raise Err(t.Error_InvalidConfig(str(e)))
        try:
            connected = tcp.connect(host, port, 2000)
            message = f"{host}:{port} accepted in {connected.elapsed_us} us"
            ok = True
        except Err as e:
            message = f"{host}:{port}: {type(e.value).__name__.split('_')[-1].lower()}"
            ok = False
        verdict = t.Verdict.HEALTHY if logic.verdict(ok) == "healthy" else t.Verdict.UNHEALTHY
        return h.CheckResult(verdict=verdict, message=message, measurements=[])
