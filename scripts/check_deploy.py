#!/usr/bin/env python3
"""The deployment checks of scripts/check-deploy (which installs the tools).

Each check prints PASS/FAIL lines; the exit code is 1 if any check failed.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["kafka", "kinesis"]
K8S_VERSIONS = ["1.28.0", "1.33.0"]  # pod-index label needs >= 1.28
# Routes each command serves on the address it binds (src/run.rs, ingest, query).
ROUTES = {
    "ingest": {"/healthz", "/readyz", "/metrics"},
    "worker": {"/healthz", "/metrics"},
    "kinesis-bridge": {"/healthz", "/metrics"},
    "serve": {"/healthz", "/metrics"},
}
# Metrics a dashboard or alert may use that no huntflow process exports.
SYNTHETIC = {"up"}
# Labelled counters that only appear once their event happened at least once
# (the prometheus crate omits a vector with no children) and that the short
# live runs cannot provoke: Kinesis throttling, EFO resubscriptions, a game
# shard whose clock runs ahead.
EVENT_ONLY = {"huntflow_kinesis_throttles_total", "huntflow_kinesis_resubscribes_total",
              "huntflow_ingest_future_events_total"}

failures = []


def report(ok, what, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}: {what}" + (f"\n      {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- rendering


def render(overlay):
    path = ROOT / "k8s" / "overlays" / overlay
    cmd = ["kustomize", "build", str(path)] if shutil.which("kustomize") else ["kubectl", "kustomize", str(path)]
    out = run(cmd)
    if not report(out.returncode == 0, f"{overlay}: kustomize renders", out.stderr.strip()):
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate_schemas(overlay, docs, tmp):
    f = tmp / f"{overlay}.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    for version in K8S_VERSIONS:
        out = run(["kubernetes-validate", "--strict", "--quiet", "-k", version, str(f)])
        lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip()]
        errors = [l for l in lines if not l.startswith("WARN") or "Couldn't find schema" not in l]
        skipped = sorted({m.group(1) for l in lines for m in [re.search(r"schema for kind (\w+)", l)] if m})
        report(out.returncode == 0 and not errors, f"{overlay}: strict schema validation, k8s {version}"
               + (f" (no schema, cross-checked below: {', '.join(skipped)})" if skipped else ""), "\n      ".join(errors))


# ---------------------------------------------------------------- consistency


def check_copies():
    same = (ROOT / "config/prod.yaml").read_bytes() == (ROOT / "k8s/base/config/prod.yaml").read_bytes()
    report(same, "k8s/base/config/prod.yaml is config/prod.yaml", "run: cp config/prod.yaml k8s/base/config/prod.yaml")
    same = (ROOT / "topology/treasure-hunt.yaml").read_bytes() == (ROOT / "k8s/base/topology/treasure-hunt.yaml").read_bytes()
    report(same, "k8s/base/topology/treasure-hunt.yaml is topology/treasure-hunt.yaml",
           "run: cp topology/treasure-hunt.yaml k8s/base/topology/treasure-hunt.yaml")
    base = yaml.safe_load((ROOT / "topology/treasure-hunt.yaml").read_text())
    kin = yaml.safe_load((ROOT / "k8s/overlays/kinesis/topology/treasure-hunt.yaml").read_text())
    kind = kin.get("source", {}).get("kind")
    base.pop("source", None)
    kin.pop("source", None)
    report(base == kin and kind == "kinesis",
           "k8s/overlays/kinesis topology = topology/treasure-hunt.yaml except source (kind: kinesis)",
           f"source.kind={kind}; differing keys: {sorted(k for k in set(base) | set(kin) if base.get(k) != kin.get(k))}")


# ---------------------------------------------------------------- workloads


def pod_specs(docs):
    """(kind, name, pod template metadata, pod spec) of every workload."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]
        elif d["kind"] == "Job":
            yield d, d["spec"]["template"]


def role_of(args):
    for a in args:
        if not a.startswith("-"):
            return a
    return None


def env_of(container, workload, pod_name, ordinal):
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        src = e.get("valueFrom", {})
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            labels = dict(workload["spec"]["template"]["metadata"].get("labels", {}))
            if workload["kind"] == "StatefulSet":
                labels["apps.kubernetes.io/pod-index"] = str(ordinal)
            m = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            if path == "metadata.name":
                env[e["name"]] = pod_name
            elif path == "metadata.namespace":
                env[e["name"]] = workload["metadata"].get("namespace", "default")
            elif m:
                env[e["name"]] = labels.get(m.group(1), "")  # the kubelet gives "" for a missing label
            else:
                env[e["name"]] = f"<{path}>"
        elif "secretKeyRef" in src:
            env[e["name"]] = "placeholder-secret-value"
        elif "configMapKeyRef" in src:
            env[e["name"]] = "<configmap>"
    return env


def materialize(pod, container, docs, root):
    """Writes the container's ConfigMap/Secret mounts under root; returns the
    mount paths (absolute in the pod)."""
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for m in container.get("volumeMounts", []):
        if "subPath" in m:
            report(False, f"{container['name']}: no subPath mounts ({m['mountPath']})",
                   "subPath mounts never see ConfigMap updates")
        v = volumes.get(m["name"], {})
        if "configMap" not in v and "secret" not in v:
            continue  # emptyDir / PVC: scratch space, nothing to load
        target = root / m["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        mounts.append(m["mountPath"])
        if "configMap" in v:
            cm = by_name.get(("ConfigMap", v["configMap"]["name"]))
            if cm is None:
                report(False, f"{container['name']}: ConfigMap {v['configMap']['name']} is in the overlay")
                continue
            for key, text in cm.get("data", {}).items():
                (target / key).write_text(text)
        elif "secret" in v:
            name = v["secret"]["secretName"]
            report(("Secret", name) not in by_name, f"Secret {name} is referenced, not shipped")
            if name == "huntflow-shard-tokens":
                # What README tells operators to create: shard_id=token lines.
                (target / "shard-tokens").write_text("shard-0=placeholder-token-0000000000\n")
    return mounts


def config_check(binary, workload, pod, container, docs, tmp):
    """Runs `huntflow config --check --for <role>` with the pod's env and its
    mounts at their real paths (a private mount namespace), returns binds."""
    name = workload["metadata"]["name"]
    ordinal = 1 if workload["kind"] == "StatefulSet" else 0
    pod_name = f"{name}-{ordinal}" if workload["kind"] == "StatefulSet" else f"{name}-7d9f8c6b5-x2x4q"
    args = container.get("args", [])
    role = role_of(args)
    what = f"{workload['kind']}/{name} ({container['name']})"
    if container.get("command"):
        report(False, f"{what}: no command override (the image has no shell; ENTRYPOINT is huntflow)")
    root = tmp / f"root-{name}-{container['name']}"
    mounts = materialize(pod, container, docs, root)
    env = env_of(container, workload, pod_name, ordinal)
    env["PATH"] = "/usr/bin:/bin"
    cmd = [str(binary)] + args[: args.index(role)] + ["config", "--check"]
    if role in ("ingest", "worker", "serve", "kinesis-bridge", "topics"):
        cmd += ["--for", role]
    # Bind every mount over its pod path in a private mount namespace, so the
    # absolute paths in the settings resolve exactly as in the pod.
    script = ["set -e"]
    for m in mounts:
        script.append(f"mkdir -p '{m}' 2>/dev/null || true")
        script.append(f"mount --bind '{root}/{m.lstrip('/')}' '{m}'")
    script.append('exec "$@"')
    created = [p for p in {"/etc/huntflow"} if not os.path.exists(p)]
    try:
        out = run(["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script), "sh", *cmd],
                  env=env, timeout=60)
    finally:
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
    text = (out.stdout + out.stderr).strip()
    report(out.returncode == 0, f"{what}: `huntflow {' '.join(args)}` settings pass config --check (as the pod sees them)",
           text.replace("\n", "\n      "))
    binds = {}
    for m in re.finditer(r"^binds: (\S+) (\S+):(\d+)$", out.stdout, re.M):
        binds[int(m.group(3))] = m.group(2)
    return role, binds


def check_ports(workload, pod, container, role, binds, docs):
    what = f"{workload['kind']}/{workload['metadata']['name']}"
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    numbers = set(ports.values())
    for port in ports.values():
        host = binds.get(port)
        report(host in ("0.0.0.0", "[::]", "::"), f"{what}: container port {port} is bound on all interfaces",
               f"{role} binds {binds or 'nothing'}")
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind)
        if not probe:
            continue
        get = probe.get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        report(port in numbers and get.get("path") in ROUTES.get(role, set()),
               f"{what}: {kind} {get.get('path')} on {get.get('port')} is served by `{role}`")
    if role in ROUTES:
        report(bool(container.get("livenessProbe")) and bool(container.get("readinessProbe")),
               f"{what}: has liveness and readiness probes")
    sc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
    ok = (psc.get("runAsNonRoot") and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
          and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"])
    report(bool(ok), f"{what}: non-root, read-only root fs, no capabilities, seccomp RuntimeDefault")
    return ports


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_references(overlay, docs, pod_ports):
    """Services, NetworkPolicies, PodMonitor, ScaledObjects and PDBs point at
    pods, ports and workloads that exist."""
    pods = [(d, d["spec"]["template"]["metadata"]["labels"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "Service":
            matched = [(w, l) for w, l in pods if selects(d["spec"]["selector"], l)]
            ok = bool(matched) and all(p.get("targetPort") in pod_ports[w["metadata"]["name"]]
                                       or p.get("targetPort") in pod_ports[w["metadata"]["name"]].values()
                                       for w, _ in matched for p in d["spec"]["ports"])
            report(ok, f"{overlay}: Service {name} selects pods and names their ports")
        elif kind == "PodDisruptionBudget":
            report(any(selects(d["spec"]["selector"]["matchLabels"], l) for _, l in pods),
                   f"{overlay}: PodDisruptionBudget {name} selects pods")
        elif kind == "NetworkPolicy":
            sel = d["spec"]["podSelector"].get("matchLabels", {})
            named = {p["port"] for r in d["spec"].get("ingress", []) for p in r.get("ports", []) if isinstance(p["port"], str)}
            have = {n for w, l in pods if selects(sel, l) for n in pod_ports[w["metadata"]["name"]]}
            report(any(selects(sel, l) for _, l in pods) and (not named or named & have),
                   f"{overlay}: NetworkPolicy {name} selects pods and names ports they have")
        elif kind == "PodMonitor":
            sel = d["spec"]["selector"]["matchLabels"]
            endpoints = {e["port"] for e in d["spec"]["podMetricsEndpoints"]}
            for w, l in pods:
                if selects(sel, l):
                    report(bool(endpoints & set(pod_ports[w["metadata"]["name"]])),
                           f"{overlay}: PodMonitor scrapes {w['kind']}/{w['metadata']['name']} on a port it binds")
        elif kind == "ScaledObject":
            ref = d["spec"]["scaleTargetRef"]
            target = next((w for w, _ in pods if w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"]), None)
            ok = target is not None and "replicas" not in target["spec"]
            report(ok, f"{overlay}: ScaledObject {name} targets {ref['kind']}/{ref['name']} (which leaves replicas to it)")


def check_scaling(overlay, docs):
    topo_cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("huntflow-topology"))
    topo = yaml.safe_load(next(iter(topo_cm["data"].values())))
    inputs = {"huntflow-claim": "events", "huntflow-score": "accepted", "huntflow-rank": "candidates"}
    for d in docs:
        if d["kind"] == "ScaledObject":
            target = d["spec"]["scaleTargetRef"]["name"]
            partitions = topo["topics"][inputs[target]]["partitions"]
            mx = d["spec"]["maxReplicaCount"]
            report(mx <= partitions, f"{overlay}: {target} scales to at most {mx} <= {partitions} input partitions")


# ---------------------------------------------------------------- alerts


def rules_and_tests(rendered, tmp):
    names = {"huntflow": "base", "huntflow-ingest": "ingest", "huntflow-kinesis": "kinesis"}
    exprs = []
    rules_dir = tmp / "rules"
    rules_dir.mkdir(exist_ok=True)
    seen = set()
    for docs in rendered.values():
        for d in docs:
            if d["kind"] == "PrometheusRule" and d["metadata"]["name"] not in seen:
                seen.add(d["metadata"]["name"])
                (rules_dir / f"{names[d['metadata']['name']]}.rules.yaml").write_text(yaml.safe_dump(d["spec"]))
                for g in d["spec"]["groups"]:
                    for r in g["rules"]:
                        exprs.append((r.get("alert") or r.get("record"), r["expr"]))
                        url = r.get("annotations", {}).get("runbook_url", "")
                        anchor = url.partition("#")[2]
                        report(anchor == r["alert"].lower() and runbook_has(anchor),
                               f"alert {r['alert']} has a runbook section (docs/runbook.md#{anchor})")
    files = sorted(str(p) for p in rules_dir.glob("*.rules.yaml"))
    out = run(["promtool", "check", "rules", *files])
    report(out.returncode == 0, f"promtool check rules ({len(files)} files, {len(exprs)} rules)", out.stdout + out.stderr)
    shutil.copy(ROOT / "k8s/tests/alerts-test.yaml", rules_dir)
    out = run(["promtool", "test", "rules", "alerts-test.yaml"], cwd=rules_dir)
    report(out.returncode == 0, "promtool test rules k8s/tests/alerts-test.yaml", (out.stdout + out.stderr)[-3000:])
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "k8s/tests/alerts-test.yaml").read_text()))
    untested = sorted({a for a, _ in exprs} - tested)
    report(not untested, "every alert has a promtool unit test", f"untested: {untested}")
    return exprs


_RUNBOOK = None


def runbook_has(anchor):
    global _RUNBOOK
    if _RUNBOOK is None:
        text = (ROOT / "docs/runbook.md").read_text() if (ROOT / "docs/runbook.md").exists() else ""
        _RUNBOOK = {h.strip().lower() for h in re.findall(r"^#+\s+(\S+)", text, re.M)}
    return anchor in _RUNBOOK


# ---------------------------------------------------------------- live metrics

METRIC_RE = re.compile(r"\b((?:huntflow|process)_[a-z0-9_]+|up)\b(?!\s*\()")


def used_metrics(exprs):
    used = {}
    for f in sorted((ROOT / "k8s/grafana").glob("*.json")):
        for p in json.loads(f.read_text())["panels"]:
            for t in p.get("targets", []):
                for m in METRIC_RE.findall(t["expr"]):
                    used.setdefault(m, set()).add(f.name)
    for alert, expr in exprs:
        for m in METRIC_RE.findall(expr):
            used.setdefault(m, set()).add(f"alert {alert}")
    # Templating queries use `up` only.
    return used


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def live_pipeline(binary, tmp):
    """A short `huntflow run` on the embedded broker: ingest's /metrics while
    events flow, the stages' and query's /metrics (served on the query
    listen by `run`) after the pipeline drained."""
    ingest_port, query_port = free_port(), free_port()
    env = dict(os.environ, HUNTFLOW_QUERY_LISTEN=f"127.0.0.1:{query_port}", RUST_LOG="warn")
    cmd = [str(binary), "--state-dir", str(tmp / "run-state"), "--listen", f"127.0.0.1:{ingest_port}", "run",
           "--events", "30000", "--rate", "3000", "--no-live", "--no-progress", "--verify"]
    log = open(tmp / "run.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    scrapes = {}
    health = {}
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            for what, port in (("ingest", ingest_port), ("query", query_port)):
                text = scrape(f"http://127.0.0.1:{port}/metrics")
                if text:
                    scrapes[what] = text
                    if what == "query":  # a query, so its latency histogram has a child
                        scrape(f"http://127.0.0.1:{port}/v1/hunts/winter-2026/tiers/bronze/leaderboard")
                    for path in ("/healthz", "/readyz") if what == "ingest" else ("/healthz",):
                        health[f"{what} {path}"] = health.get(f"{what} {path}") or scrape(f"http://127.0.0.1:{port}{path}") is not None
            time.sleep(1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    report(proc.returncode == 0, f"huntflow run --events 30000 --verify exits 0 (log: {tmp / 'run.log'})",
           (tmp / "run.log").read_text()[-2000:])
    for k, ok in sorted(health.items()):
        report(ok, f"run: {k} answers")
    return scrapes


def live_kinesis(binary, tmp):
    """The Kinesis bridge on kinesis-local + the embedded broker: its /metrics."""
    pkg = os.environ.get("HUNTFLOW_KINESIS_LOCAL")
    if not pkg or not Path(pkg, "main.js").exists():
        report(False, "kinesis-local installed (HUNTFLOW_KINESIS_LOCAL)")
        return {}
    topo = tmp / "kinesis-topology.yaml"
    spec = yaml.safe_load((ROOT / "k8s/overlays/kinesis/topology/treasure-hunt.yaml").read_text())
    spec["source"]["kinesis"]["stream"] = "check-deploy"
    topo.write_text(yaml.safe_dump(spec))
    kport, tport, bport, mport = free_port(), free_port(), free_port(), free_port()
    procs = []
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1",
               HUNTFLOW_KINESIS_ENDPOINT=f"http://127.0.0.1:{kport}", HUNTFLOW_KINESIS_REGION="us-east-1",
               HUNTFLOW_METRICS_LISTEN=f"127.0.0.1:{mport}", RUST_LOG="warn")
    text = None
    try:
        kl_env = dict(env, KINESIS_MOCK_PLAIN_PORT=str(kport), KINESIS_MOCK_TLS_PORT=str(tport),
                      KINESIS_MOCK_CERT_PATH=str(Path(pkg, "server.json")),
                      INITIALIZE_STREAMS="check-deploy:2", LOG_LEVEL="WARN")
        procs.append(subprocess.Popen(["node", str(Path(pkg, "main.js"))], env=kl_env, cwd=tmp,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        broker = subprocess.Popen([str(binary), "--topology", str(topo), "broker", "--port", str(bport)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(broker)
        bootstrap = broker.stdout.readline().strip()
        sim = None
        for _ in range(60):  # the emulator creates the stream asynchronously
            sim = run([str(binary), "--topology", str(topo), "simulate", "--kinesis", "--events", "2000", "--no-progress"],
                      env=env, timeout=120)
            if sim.returncode == 0:
                break
            time.sleep(1)
        if not report(sim is not None and sim.returncode == 0, "simulate --kinesis puts 2000 records on kinesis-local",
                      (sim.stdout + sim.stderr)[-1500:] if sim else ""):
            return {}
        bridge = subprocess.Popen([str(binary), "--brokers", bootstrap, "--topology", str(topo), "kinesis-bridge"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "bridge.log", "w"))
        procs.append(bridge)
        url = f"http://127.0.0.1:{mport}/metrics"
        wait_for(lambda: (scrape(url) or "").count("huntflow_kinesis_records_total{") >= 2, 60)
        time.sleep(3)
        text = scrape(url)
        bridge.send_signal(signal.SIGTERM)
        report(bridge.wait(timeout=60) == 0, "kinesis-bridge stops cleanly on SIGTERM", (tmp / "bridge.log").read_text()[-1500:])
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    return {"kinesis-bridge": text} if text else {}


def check_metrics(scrapes, used, tmp):
    for what, text in sorted(scrapes.items()):
        f = tmp / f"scrape-{what}.txt"
        f.write_text(text)
        out = run(["promtool", "check", "metrics"], input=text)
        report(out.returncode == 0, f"promtool check metrics on the {what} scrape ({f})", (out.stdout + out.stderr).strip())
    present = set()
    for text in scrapes.values():
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
                present.add(name)
                present.add(re.sub(r"_(bucket|sum|count)$", "", name))
    missing = {m: sorted(w) for m, w in used.items() if m not in present and m not in SYNTHETIC and m not in EVENT_ONLY}
    report(not missing, f"every metric the dashboards and alerts use is scraped ({len(used)} metrics)",
           "missing:\n      " + "\n      ".join(f"{m}  (used by {', '.join(w)})" for m, w in sorted(missing.items())))
    skipped = sorted(m for m in used if m in EVENT_ONLY and m not in present)
    if skipped:
        print(f"NOTE: not provoked by the short runs (event-only labelled counters): {', '.join(skipped)}")


# ---------------------------------------------------------------- Dockerfile

DOCKER_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                       "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def check_dockerfile():
    path = ROOT / "Dockerfile"
    if not report(path.exists(), "Dockerfile exists"):
        return
    text = re.sub(r"\\\n", " ", path.read_text())
    stages, problems, entry, user = set(), [], None, None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() not in DOCKER_INSTRUCTIONS:
            problems.append(f"line {n}: unknown instruction {word}")
            continue
        word = word.upper()
        if word == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            stages.add(m.group(1).lower() if m else None)
            user = None
        elif word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            frm = re.search(r"--from=(\S+)", rest)
            if frm:
                if frm.group(1).lower() not in stages:
                    problems.append(f"line {n}: COPY --from={frm.group(1)}: no such stage")
                continue
            for src in parts[:-1]:
                if not list(ROOT.glob(src.rstrip("/"))):
                    problems.append(f"line {n}: COPY source {src} does not exist")
        elif word == "ENTRYPOINT":
            entry = rest
        elif word == "USER":
            user = rest
    report(not problems, "Dockerfile parses and every COPY source exists", "\n      ".join(problems))
    report(entry is not None and entry.startswith("[") and "huntflow" in entry, "Dockerfile: huntflow is the exec-form ENTRYPOINT")
    report(user is not None and user.split(":")[0] not in ("root", "0"), f"Dockerfile: the final stage runs as a non-root USER ({user})")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/huntflow/target"))
    ap.add_argument("--binary", default=str(target / "debug" / "huntflow"))
    ap.add_argument("--skip-live", action="store_true", help="skip the running pipeline and bridge (step 5)")
    opts = ap.parse_args()
    binary = Path(opts.binary)
    if not binary.exists():
        print(f"building {binary} (cargo build --locked)")
        subprocess.run(["cargo", "build", "--locked", "--bin", "huntflow"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="huntflow-check-deploy-"))
    print(f"scratch: {tmp}")

    check_copies()
    rendered = {}
    for overlay in OVERLAYS:
        docs = render(overlay)
        rendered[overlay] = docs
        if not docs:
            continue
        validate_schemas(overlay, docs, tmp)
        pod_ports = {}
        for workload, template in pod_specs(docs):
            pod = template["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                role, binds = config_check(binary, workload, pod, c, docs, tmp)
                ports = check_ports(workload, pod, c, role, binds, docs)
                pod_ports.setdefault(workload["metadata"]["name"], {}).update(ports)
        check_references(overlay, docs, pod_ports)
        check_scaling(overlay, docs)
    exprs = rules_and_tests(rendered, tmp)
    check_dockerfile()

    if not opts.skip_live:
        used = used_metrics(exprs)
        scrapes = live_pipeline(binary, tmp)
        scrapes.update(live_kinesis(binary, tmp))
        check_metrics(scrapes, used, tmp)

    print(f"\ncheck-deploy: {len(failures)} failed" + (":\n  " + "\n  ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
