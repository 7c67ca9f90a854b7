"""{{name}}: the provider's platform in plain Python, tested natively by test_logic.py.

The "platform" is a directory (granted as /platform): one JSON record per service with its
revisions and traffic split. Replace Platform with calls to your platform's API, and keep the
contract app.py keeps (the engine's docs/provider-contract.md; `engine plugins check` checks it).
"""

import json
import os


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class Platform:
    def __init__(self, directory="/platform"):
        self.directory = directory

    def _file(self, service):
        return os.path.join(self.directory, service + ".json")

    def load(self, service):
        """The service's record ({"revisions": [[id, runs]], "traffic": [[id, percent]]}), or None."""
        try:
            with open(self._file(service)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def store(self, service, record):
        # Through a temporary file and a rename: a call killed half-way leaves the old record.
        tmp = self._file(service) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self._file(service))

    def remove(self, service):
        try:
            os.remove(self._file(service))
        except FileNotFoundError:
            pass

    def deploy(self, service, deployment_id, runs):
        """The revision of this deployment id; a repeated deploy finds it instead of adding one."""
        record = self.load(service) or {"revisions": [], "traffic": []}
        revision = f"{service}-{deployment_id}"
        if all(r != revision for r, _ in record["revisions"]):
            record["revisions"].append([revision, runs])
            self.store(service, record)
        return revision

    def set_traffic(self, service, split):
        record = self.load(service)
        if record is None:
            raise NotFound(f"service {service} does not exist")
        known = {r for r, _ in record["revisions"]}
        for revision, _ in split:
            if revision not in known:
                raise NotFound(f"revision {revision} does not exist")
        record["traffic"] = [[r, p] for r, p in split if p > 0]
        self.store(service, record)

    def retire(self, service, revision):
        record = self.load(service)
        if record is None:
            return
        if any(r == revision and p > 0 for r, p in record["traffic"]):
            raise Conflict(f"{revision} still takes traffic")
        record["revisions"] = [[r, runs] for r, runs in record["revisions"] if r != revision]
        self.store(service, record)


def deployed(record):
    """What the revision serving the most traffic runs ({} before any takes traffic)."""
    serving = max(record["traffic"], key=lambda t: t[1], default=None)
    for revision, runs in record["revisions"]:
        if serving and revision == serving[0]:
            return runs
    return {}


def changes(before, after):
    """The fields that differ, as (field, before, after)."""
    return [(k, before.get(k), after.get(k)) for k in sorted(after) if before.get(k) != after.get(k)]
