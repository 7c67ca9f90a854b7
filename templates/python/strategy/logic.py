"""{{name}}: the strategy's decisions in plain Python, tested natively by test_logic.py.

Sends `percent` of the traffic to the candidate, analyses it, then promotes it and retires the
stable revision. A strategy is a pure state machine: the same inputs give the same step.
"""

import json


def parse(config_text):
    """The candidate's share while it is analysed; ValueError says what is wrong."""
    config = json.loads(config_text or "{}")
    if not isinstance(config, dict):
        raise ValueError("the configuration must be a table")
    unknown = sorted(set(config) - {"percent"})
    if unknown:
        raise ValueError("unknown settings: " + ", ".join(unknown))
    percent = config.get("percent", 10)
    if not isinstance(percent, int) or not 1 <= percent <= 99:
        raise ValueError("`percent` must be between 1 and 99")
    return percent


def next_stage(state, has_stable, splits):
    """The stage after `state` (None at the start)."""
    if state is None:
        return "split" if splits and has_stable else "analyse"
    if state == "split":
        return "analyse"
    if state == "analyse":
        return "promote"
    if state == "promote" and has_stable:
        return "retire"
    return "done"
