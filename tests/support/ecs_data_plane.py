"""A small data plane for moto's ECS and Application Load Balancers, for the tests.

moto keeps the state of ECS and ELB (task sets, target groups, listener rules and their
weights) but runs no container and serves no request. This process plays the parts AWS would:

- ECS's agent: for each task set of an EXTERNAL service it starts as many real demo-service
  processes as the task set's share of the service's desired count, waits until each answers the
  target group's health check path, and registers it in the task set's target group (and
  deregisters and stops them when the task set shrinks or goes).
- the load balancers' data plane, as an HTTP proxy on loopback: a request for
  `http://HOST[:PORT]/PATH` goes to the load balancer whose DNS name is HOST (or whose private
  zone HOST is in, `--zone SUFFIX=NAME`), to its listener on PORT, to the first rule by priority
  whose host and path conditions match, and then to one of the forward action's target groups,
  chosen by weight (smooth weighted round robin, so a 10 % weight gets one request in ten), and
  to one of that group's healthy targets.
- CloudWatch's `AWS/ApplicationELB` metrics of what it served, per target group and load
  balancer, every second: RequestCount, HTTPCode_Target_5XX_Count (only when there were some,
  as the ALB does) and TargetResponseTime.

`--load URL=RATE` sends that many requests a second to URL through the same routing, and
`--log FILE` writes one JSON line per request served. `--fault IMAGE=RATE` makes the processes of
an image answer that share of `GET /` with 500s (a bad release). It reads moto again every few
hundred milliseconds, so a weight the engine sets takes effect shortly after, as on AWS.

Everything it starts stops with it (SIGTERM, or its parent's death).
"""

import argparse
import ctypes
import fnmatch
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

POLL_SECONDS = 0.5
# How long a deregistered task keeps serving: a few polls, so no route read before it left
# reaches a stopped process.
DRAINING_SECONDS = 3.0


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True, help="moto's URL")
    p.add_argument("--region", default="eu-west-1")
    p.add_argument("--listen", type=int, required=True, help="the proxy's loopback port")
    p.add_argument("--service-binary", required=True, help="the demo-service executable")
    p.add_argument("--zone", action="append", default=[], help="SUFFIX=LOAD_BALANCER_NAME")
    p.add_argument("--fault", action="append", default=[], help="IMAGE=ERROR_RATE")
    p.add_argument("--load", action="append", default=[], help="URL=REQUESTS_PER_SECOND")
    p.add_argument("--log", help="a JSON line per request served")
    return p.parse_args()


def pairs(values):
    return dict(v.rsplit("=", 1) for v in values)


class Aws:
    def __init__(self, endpoint, region):
        kw = dict(endpoint_url=endpoint, region_name=region,
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        self.ecs = boto3.client("ecs", **kw)
        self.elb = boto3.client("elbv2", **kw)
        self.cloudwatch = boto3.client("cloudwatch", **kw)


def die_with_parent():
    """The demo processes stop when this process dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port, path):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


class Addresses:
    """The private address each task gets in the VPC (awsvpc), and the loopback port where its
    process really listens."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next = 0
        self.ports = {}  # address -> loopback port

    def allocate(self, port):
        with self.lock:
            self.next += 1
            address = f"10.0.{100 + self.next // 250}.{self.next % 250 + 2}"
            self.ports[address] = port
            return address

    def port(self, address):
        return self.ports.get(address)


class Task:
    """One running demo-service process, registered in its target group once healthy, as ECS
    registers a task's address with the container's port."""

    def __init__(self, binary, service, image, error_rate, group, health_path, addresses, container_port):
        self.port = free_port()
        self.address = addresses.allocate(self.port)
        self.target = {"Id": self.address, "Port": container_port}
        self.group = group
        self.registered = False
        release = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        self.process = subprocess.Popen(
            [binary, "--name", service, "--release", release, "--error-rate", str(error_rate),
             "--threads", "4", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.health_path = health_path

    def register_when_healthy(self, aws):
        if self.registered or not answers(self.port, self.health_path):
            return
        aws.elb.register_targets(TargetGroupArn=self.group, Targets=[self.target])
        self.registered = True

    def stop(self, aws):
        """Deregisters the task, then stops it once the load balancer has drained it (the
        deregistration delay: requests routed a moment ago still reach it)."""
        if self.registered:
            try:
                aws.elb.deregister_targets(TargetGroupArn=self.group, Targets=[self.target])
            except Exception:
                pass  # the group was deleted with its task set
        threading.Timer(DRAINING_SECONDS, self.process.terminate).start()


class Agent:
    """ECS's part: keeps each task set's processes running and registered."""

    def __init__(self, aws, binary, faults, addresses):
        self.aws, self.binary, self.faults, self.addresses = aws, binary, faults, addresses
        self.tasks = {}  # task set ARN -> [Task]
        self.started = []  # every process, draining ones too
        self.definitions = {}  # task definition ARN -> image

    def image(self, arn):
        if arn not in self.definitions:
            d = self.aws.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
            self.definitions[arn] = d["containerDefinitions"][0]["image"]
        return self.definitions[arn]

    def wanted(self):
        """(task set ARN -> (service, image, count, target group, health path, container port))."""
        out = {}
        groups = {g["TargetGroupArn"]: g for g in self.aws.elb.describe_target_groups()["TargetGroups"]}
        for cluster in self.aws.ecs.list_clusters()["clusterArns"]:
            arns = self.aws.ecs.list_services(cluster=cluster)["serviceArns"]
            for i in range(0, len(arns), 10):
                for s in self.aws.ecs.describe_services(cluster=cluster, services=arns[i:i + 10])["services"]:
                    if s["status"] != "ACTIVE" or s["deploymentController"]["type"] != "EXTERNAL":
                        continue
                    sets = self.aws.ecs.describe_task_sets(cluster=cluster, service=s["serviceArn"])["taskSets"]
                    for t in sets:
                        if not t.get("loadBalancers") or t["status"] == "DRAINING":
                            continue
                        group = t["loadBalancers"][0]["targetGroupArn"]
                        if group not in groups:
                            continue
                        # ECS's formula, which moto does not compute.
                        count = math.ceil(s["desiredCount"] * t["scale"]["value"] / 100)
                        out[t["taskSetArn"]] = (s["serviceName"], self.image(t["taskDefinition"]),
                                                count, group, groups[group].get("HealthCheckPath", "/"),
                                                t["loadBalancers"][0]["containerPort"])
        return out

    def reconcile(self):
        wanted = self.wanted()
        for arn in list(self.tasks):
            if arn not in wanted:
                for task in self.tasks.pop(arn):
                    task.stop(self.aws)
        for arn, (service, image, count, group, health, port) in wanted.items():
            tasks = self.tasks.setdefault(arn, [])
            while len(tasks) > count:
                tasks.pop().stop(self.aws)
            while len(tasks) < count:
                rate = float(self.faults.get(image, 0))
                tasks.append(Task(self.binary, service, image, rate, group, health, self.addresses, port))
                self.started.append(tasks[-1].process)
            for task in tasks:
                task.register_when_healthy(self.aws)

    def stop_all(self):
        for process in self.started:
            process.terminate()


class Routes:
    """The load balancers as moto keeps them, read again every poll."""

    def __init__(self, aws, zones):
        self.aws, self.zones = aws, zones
        self.balancers = {}  # DNS name -> load balancer
        self.by_name = {}  # name -> load balancer
        self.listeners = {}  # (load balancer ARN, port) -> [rules by priority]
        self.targets = {}  # target group ARN -> [addresses of healthy targets]
        self.group_names = {}

    def refresh(self):
        elb = self.aws.elb
        balancers = elb.describe_load_balancers()["LoadBalancers"]
        listeners = {}
        for lb in balancers:
            for listener in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
                rules = elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
                rules.sort(key=lambda r: math.inf if r["Priority"] == "default" else int(r["Priority"]))
                listeners[(lb["LoadBalancerArn"], listener["Port"])] = rules
        targets, names = {}, {}
        for g in elb.describe_target_groups()["TargetGroups"]:
            health = elb.describe_target_health(TargetGroupArn=g["TargetGroupArn"])
            targets[g["TargetGroupArn"]] = [
                d["Target"]["Id"] for d in health["TargetHealthDescriptions"]
                if d["TargetHealth"]["State"] == "healthy"]
            names[g["TargetGroupArn"]] = g["TargetGroupName"]
        self.balancers = {lb["DNSName"].lower(): lb for lb in balancers}
        self.by_name = {lb["LoadBalancerName"]: lb for lb in balancers}
        self.listeners, self.targets, self.group_names = listeners, targets, names

    def balancer(self, host):
        if host in self.balancers:
            return self.balancers[host]
        for suffix, name in self.zones.items():
            if host == suffix or host.endswith("." + suffix):
                return self.by_name.get(name)
        return None


def matches(rule, host, path):
    for c in rule.get("Conditions", []):
        if c["Field"] == "host-header":
            values = c.get("HostHeaderConfig", {}).get("Values") or c.get("Values", [])
            if not any(fnmatch.fnmatchcase(host, v.lower()) for v in values):
                return False
        elif c["Field"] == "path-pattern":
            values = c.get("PathPatternConfig", {}).get("Values") or c.get("Values", [])
            if not any(fnmatch.fnmatchcase(path, v) for v in values):
                return False
        else:
            return False  # a condition this data plane does not model never matches
    return True


class Balancer:
    """Routes one request the way an ALB would, and counts what it served."""

    def __init__(self, routes, addresses, log):
        self.routes, self.addresses = routes, addresses
        self.lock = threading.Lock()
        self.current = {}  # smooth weighted round robin state by rule ARN
        self.turn = {}  # round robin over targets by group
        self.counts = {}  # (group ARN, load balancer ARN) -> [requests, 5xx, seconds, min, max]
        self.log = open(log, "a", buffering=1) if log else None

    def pick_group(self, rule_arn, weighted):
        """Smooth weighted round robin (nginx's): every group gains its weight, the largest wins
        and pays the total."""
        live = [(g, w) for g, w in weighted if w > 0]
        if not live:
            return None
        with self.lock:
            current = self.current.setdefault(rule_arn, {})
            for g, w in live:
                current[g] = current.get(g, 0) + w
            best = max(live, key=lambda gw: current[gw[0]])[0]
            current[best] -= sum(w for _, w in live)
            return best

    def pick_target(self, group):
        """The loopback port of the next healthy target of the group (round robin)."""
        targets = self.routes.targets.get(group, [])
        if not targets:
            return None
        with self.lock:
            n = self.turn.get(group, 0)
            self.turn[group] = n + 1
        return self.addresses.port(targets[n % len(targets)])

    def serve(self, method, url, headers, body):
        """(status, headers, body) for a request to an absolute URL."""
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        lb = self.routes.balancer(host)
        if lb is None:
            return 502, {}, f"no load balancer answers for {host}\n".encode()
        rules = self.routes.listeners.get((lb["LoadBalancerArn"], port))
        if rules is None:
            return 502, {}, f"{lb['LoadBalancerName']} has no listener on port {port}\n".encode()
        rule = next(r for r in rules if r["Priority"] == "default" or matches(r, host, path))
        action = sorted(rule["Actions"], key=lambda a: a.get("Order", 0))[0]
        if action["Type"] == "fixed-response":
            fixed = action["FixedResponseConfig"]
            return int(fixed["StatusCode"]), {}, fixed.get("MessageBody", "").encode()
        forward = action.get("ForwardConfig", {}).get("TargetGroups") or [
            {"TargetGroupArn": action["TargetGroupArn"], "Weight": 1}]
        group = self.pick_group(rule["RuleArn"], [(t["TargetGroupArn"], t.get("Weight", 1)) for t in forward])
        if group is None:
            return 503, {}, b"every target group of the rule has weight 0\n"
        started = time.monotonic()
        status, reply_headers, reply = self.forward(group, method, parts, headers, body)
        self.count(group, lb["LoadBalancerArn"], status, time.monotonic() - started)
        if self.log:
            self.log.write(json.dumps({"t": time.time(), "host": host, "port": port, "path": path,
                                       "rule": rule["Priority"], "group": self.routes.group_names.get(group, group),
                                       "status": status}) + "\n")
        return status, reply_headers, reply

    def forward(self, group, method, parts, headers, body):
        target = self.pick_target(group)
        if target is None:
            return 503, {}, b"no healthy target in the target group\n"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", target, timeout=10)
            conn.request(method, (parts.path or "/") + ("?" + parts.query if parts.query else ""),
                         body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except OSError as e:
            return 502, {}, f"target failed: {e}\n".encode()

    def count(self, group, lb, status, seconds):
        with self.lock:
            c = self.counts.setdefault((group, lb), [0, 0, 0.0, seconds, seconds])
            c[0] += 1
            c[1] += 1 if status >= 500 else 0
            c[2] += seconds
            c[3], c[4] = min(c[3], seconds), max(c[4], seconds)

    def publish(self, cloudwatch):
        """The second's numbers, as the ALB publishes them (a 5xx count only when there were any)."""
        with self.lock:
            counts, self.counts = self.counts, {}
        for (group, lb), (n, errors, total, low, high) in counts.items():
            dims = [{"Name": "TargetGroup", "Value": group[group.index("targetgroup/"):]},
                    {"Name": "LoadBalancer", "Value": lb.split("loadbalancer/", 1)[1]}]
            data = [{"MetricName": "RequestCount", "Dimensions": dims, "Value": n, "Unit": "Count"},
                    {"MetricName": "TargetResponseTime", "Dimensions": dims, "Unit": "Seconds",
                     "StatisticValues": {"SampleCount": n, "Sum": total, "Minimum": low, "Maximum": high}}]
            if errors:
                data.append({"MetricName": "HTTPCode_Target_5XX_Count", "Dimensions": dims,
                             "Value": errors, "Unit": "Count"})
            cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=data)


def proxy_handler(balancer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_any(self):
            if self.path == "/-/ready":
                return self.reply(200, {}, b"ready\n")
            if not self.path.startswith("http://"):
                return self.reply(400, {}, b"send requests as to an HTTP proxy (absolute URLs)\n")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("proxy-connection", "connection", "keep-alive")}
            self.reply(*balancer.serve(self.command, self.path, headers, body))

        def reply(self, status, headers, body):
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

        def log_message(self, *args):
            pass

    return Handler


def forever(what, every, step):
    def loop():
        while True:
            try:
                step()
            except Exception as e:  # moto may be between two calls of the engine's
                print(f"data plane: {what}: {e}", file=sys.stderr, flush=True)
            time.sleep(every)
    threading.Thread(target=loop, daemon=True).start()


def steady(rate, send):
    """Calls send `rate` times a second, on a schedule that does not drift with its duration."""
    def loop():
        started, n = time.monotonic(), 0
        while True:
            n += 1
            try:
                send()
            except Exception as e:
                print(f"data plane: load: {e}", file=sys.stderr, flush=True)
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
    threading.Thread(target=loop, daemon=True).start()


def main():
    args = parse_args()
    aws = Aws(args.endpoint, args.region)
    addresses = Addresses()
    routes = Routes(aws, pairs(args.zone))
    agent = Agent(aws, args.service_binary, pairs(args.fault), addresses)
    balancer = Balancer(routes, addresses, args.log)

    def stop(*_):
        agent.stop_all()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    forever("ECS tasks", POLL_SECONDS, agent.reconcile)
    forever("routes", POLL_SECONDS, routes.refresh)
    forever("CloudWatch metrics", 1.0, lambda: balancer.publish(aws.cloudwatch))
    for url, rate in pairs(args.load).items():
        steady(float(rate), lambda url=url: balancer.serve("GET", url, {}, None))
    server = ThreadingHTTPServer(("127.0.0.1", args.listen), proxy_handler(balancer))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
