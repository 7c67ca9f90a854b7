"""{{name}}: the component's exports, binding logic.py to the engine's WIT types."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import engine_plugin_types as t

import json

import logic

PLATFORM = logic.Platform("/platform")


def runs(spec):
    """What plan compares: the parts of the spec this platform runs."""
    artifact = spec.artifact.value
    return {"artifact": artifact, "args": list(spec.args), "env": [list(e) for e in spec.env]}


def translated(call):
    """Runs `call`, turning the platform's errors into the engine's typed ones."""
    try:
        return call()
    except logic.NotFound as e:
        raise Err(t.Error_NotFound(str(e)))
    except logic.Conflict as e:
        raise Err(t.Error_Conflict(str(e)))
    except OSError as e:
        raise Err(t.Error_Fatal(f"the platform directory: {e}"))


def split(traffic):
    return [t.TrafficTarget(revision=r, percent=p) for r, p in traffic if p > 0]


class Provider(exports.Provider):
    def info(self):
        return t.PluginInfo(
            name="{{name}}",
            version="0.1.0",
            description="Services kept as records in a directory",
            config_schema='{"type":"object","additionalProperties":false}',
            features=[t.Feature.TRAFFIC_SPLIT, t.Feature.RETIRE_REVISIONS],
            capabilities=t.Capabilities(
                http=[], env=[], secrets=[],
                dirs=[t.DirNeed(path="/platform", writable=True, purpose="the services' records")],
            ),
        )

    def validate(self, spec):
        return []

    def read(self, service):
        record = translated(lambda: PLATFORM.load(service.name))
        if record is None:
            return None
        revisions = [t.Revision(id=r, artifact=None, created_at_ms=None, ready=True, message=None)
                     for r, _ in reversed(record["revisions"])]
        return t.ServiceStatus(revisions=revisions, traffic=split(record["traffic"]),
                               url=f"http://{service.name}.invalid",
                               deployed=json.dumps(logic.deployed(record)))

    def plan(self, desired, current):
        if current is None:
            return t.DeploymentPlan(action=t.PlanAction.CREATE, changes=[], summary=f"create {desired.name}")

        before = json.loads(current.deployed or "{}")
        found = logic.changes(before, runs(desired))
        changes = [t.Change(field=f, before=json.dumps(b), after=json.dumps(a)) for f, b, a in found]
        action = t.PlanAction.UPDATE if changes else t.PlanAction.NO_CHANGE
        return t.DeploymentPlan(action=action, changes=changes,
                                summary=f"{'update' if changes else 'no change to'} {desired.name}")

    def deploy(self, spec, deployment_id):
        revision = translated(lambda: PLATFORM.deploy(spec.name, deployment_id, runs(spec)))
        return t.Revision(id=revision, artifact=None, created_at_ms=None, ready=True, message=None)

    def set_traffic(self, service, targets):
        translated(lambda: PLATFORM.set_traffic(service.name, [(x.revision, x.percent) for x in targets]))

    def get_traffic(self, service):
        record = translated(lambda: PLATFORM.load(service.name)) or {"traffic": []}
        return split(record["traffic"])

    def endpoints(self, service, revision):
        # No revision URLs here: the service's URL only (and no `revision-urls` feature).
        return [t.Endpoint(url=f"http://{service.name}.invalid", kind=t.EndpointKind.SERVICE, revision=None)]

    def retire(self, service, revision):
        translated(lambda: PLATFORM.retire(service.name, revision))

    def destroy(self, service):
        translated(lambda: PLATFORM.remove(service.name))
