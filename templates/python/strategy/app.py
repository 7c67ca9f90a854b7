"""{{name}}: the component's exports, binding logic.py to the engine's WIT types."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import strategy as s
from wit_world.imports import types as t

import logic

SCHEMA = '{"type":"object","properties":{"percent":{"type":"integer","minimum":1,"maximum":99,"default":10}},"additionalProperties":false}'


def result(stage, decision):
    return s.StepResult(state=stage, decision=decision, phase=stage)


class Strategy(exports.Strategy):
    def info(self):
        return t.PluginInfo(
            name="{{name}}",
            version="0.1.0",
            description="Analyses the candidate at a share of the traffic, then promotes it",
            config_schema=SCHEMA,
            features=[],
            capabilities=t.Capabilities(http=[], env=[], dirs=[], secrets=[]),
        )

    def validate(self, config):
        try:
            logic.parse(config)
            return []
        except ValueError as e:
            return [t.Diagnostic(severity=t.Severity.ERROR, path="", message=str(e), hint=None)]

    def step(self, rollout, state, observation, now_ms):
        try:
            percent = logic.parse(rollout.config)
        except ValueError as e:
            raise Err(t.Error_InvalidConfig(str(e)))
        if isinstance(observation, s.Observation_Analysed):
            failing = [f"{c.name} ({c.message})" for c in observation.value
                       if c.verdict == t.Verdict.UNHEALTHY]
            if failing:
                return result("aborted", s.Decision_Abort("unhealthy: " + "; ".join(failing)))
        if isinstance(observation, s.Observation_Rejected):
            return result("aborted", s.Decision_Abort(observation.value))
        splits = t.Feature.TRAFFIC_SPLIT in rollout.features
        stage = logic.next_stage(state, rollout.stable is not None, splits)
        candidate = rollout.candidate
        if stage == "split":
            decision = s.Decision_SetTraffic([
                t.TrafficTarget(revision=candidate, percent=percent),
                t.TrafficTarget(revision=rollout.stable, percent=100 - percent),
            ])
        elif stage == "analyse":
            decision = s.Decision_Analyse(s.AnalysisRequest(revision=candidate, checks=[]))
        elif stage == "promote":
            decision = s.Decision_Promote()
        elif stage == "retire":
            decision = s.Decision_Retire(rollout.stable)
        else:
            decision = s.Decision_Done()
        return result(stage, decision)
