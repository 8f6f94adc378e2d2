#!/usr/bin/env python3
"""Output keys while agents enroll (issue 14): does making API keys slow other agents' calls?

The goal: "Key creation must not slow check-ins of other agents: with 2,000 agents parked and
500 enrolling against a double that answers in 50 ms, control-call p99 stays within the fleet
benchmark's goal (<= 20 ms)."

For each transport (plain HTTP, then TLS), two runs of one fresh ferry-appliance, on a bundle
whose policy has an `elasticsearch` output without credentials and `output_permissions` for it:

  A (peer)  without `[elasticsearch]`: the policy is delivered as it is, no key is made;
  B         with `[elasticsearch]` pointing at `ferry-es-double --latency-ms 50` (plain HTTP
            for the plain run, TLS with its CA as `ca_file` for the TLS run): one key per agent.

In each run, 2 000 simulated agents (`ferry-sim run`) enroll, take their policy and park; then,
at the same moment, `ferry-sim probe` times enroll, ack and status calls for 20 s (10 a second
each, as scripts/bench-fleet.py does) while 500 more agents enroll (`--ramp 100`, so about 5 s).
It prints, per run: the probe's p50/p99 per call kind, the seconds until all 500 have enrolled
and until all 500 hold their policy, the appliance's CPU over the probe's 20 s, and for B the
keys the double holds and the appliance's `state.db` holds after the probe, the
seconds until `state.db` held all 2 500 (read every 0.25 s by another process, read-only, so
the appliance's own lock is not taken), and `elasticsearch.agents_waiting_for_keys` of
`ferry-appliance status --json` after the probe; then the ratio B/A of each p99. Exits 1 when a
p99 of run B exceeds 20 ms (it names which), 0 otherwise.

`status` is not asked during the probe by default: it counts every agent under the appliance's
state lock, which delays enrollments and acks by itself (see docs/benchmarks.md, issue 14).
`--status-every S` asks it every S seconds during the probe, in both runs, to measure that.

Usage: scripts/bench-keys.py [--modes plain,tls] [--parked 2000] [--enrolling 500]
                             [--ramp 100] [--latency-ms 50] [--status-every S] [--out FILE]
Builds the release binaries of ferry-builder, ferry-appliance, ferry-sim and ferry-testkit
(ferry-es-double) first; reuses scripts/bench-fleet.py's helpers. About 2.5 minutes for both
transports once built. Everything runs on 127.0.0.1.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_MS = 20.0  # the fleet benchmark's goal for control calls' p99
KINDS = ("enroll", "ack", "status")

_spec = importlib.util.spec_from_file_location("bench_fleet", os.path.join(ROOT, "scripts", "bench-fleet.py"))
fleet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fleet)

# Role descriptors as Kibana's Fleet writes them into a policy's output_permissions.
ROLES = {
    "_elastic_agent_checks": {"cluster": ["monitor"]},
    "_elastic_agent_monitoring": {"indices": [{
        "names": ["logs-elastic_agent-default", "metrics-elastic_agent-default"],
        "privileges": ["auto_configure", "create_doc"]}]},
    "default-policy": {"indices": [{"names": ["logs-*-*", "metrics-*-*"],
                                    "privileges": ["auto_configure", "create_doc"]}]},
}
BUNDLE = "dist/bench-3.ferry"


def build_binaries():
    fleet.BIN = subprocess.run(["bash", os.path.join(ROOT, "scripts", "release-bins.sh"), "ferry-builder",
                                "ferry-appliance", "ferry-sim", "ferry-testkit"], check=True,
                               stdout=subprocess.PIPE, text=True).stdout.strip()
    if not os.path.exists(os.path.join(fleet.BIN, "ferry-es-double")):
        sys.exit(f"no ferry-es-double in {fleet.BIN}: this tree's ferry-testkit does not have it")
    return fleet.BIN


def prepare(work):
    """bench-fleet's mirror, key and bundles, and bundle 3 whose policy needs an output key."""
    fleet.prepare(work)
    # JSON is YAML: the policy as Kibana's Fleet API exports it, reduced to what matters here.
    policy = {"id": "default-policy", "revision": 1,
              "outputs": {"default": {"type": "elasticsearch", "hosts": ["https://es.site.internal:9200"]}},
              "output_permissions": {"default": ROLES}, "inputs": []}
    with open(os.path.join(work, "policy.yml"), "w") as f:
        json.dump(policy, f)
    with open(os.path.join(work, "bundle.toml")) as f:
        toml = f.read()
    with open(os.path.join(work, "bundle.toml"), "w") as f:
        f.write(toml.replace("sequence = 2", "sequence = 3"))
    fleet.run(f"{fleet.BIN}/ferry", "build", "bundle.toml", "--out", "dist", "-q", cwd=work)
    assert os.path.exists(os.path.join(work, BUNDLE)), BUNDLE


class Double:
    """A running ferry-es-double."""

    def __init__(self, work, mode, latency_ms):
        self.ca = os.path.join(work, f"es-ca-{mode}.pem")
        self.token = os.path.join(work, f"es-token-{mode}")
        # Plain HTTP for the plain run (no CA then), TLS with its own CA for the TLS run.
        transport = ["--plain"] if mode == "plain" else ["--ca-out", self.ca]
        self.proc = subprocess.Popen([f"{fleet.BIN}/ferry-es-double", "--latency-ms", str(latency_ms), *transport,
                                      "--token-out", self.token],
                                     cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"ferry-es-double printed {self.url!r}, not its URL")
        # Whatever else it prints is read and dropped, so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        os.chmod(self.token, 0o600)  # the appliance refuses a credential file others can read

    def keys(self):
        """Valid output keys the double holds (POST /_security/_query/api_key), or None."""
        body = json.dumps({"size": 0, "query": {"bool": {"filter": [
            {"term": {"metadata.type": "output"}}, {"term": {"invalidated": False}}]}}}).encode()
        with open(self.token) as f:
            token = f.read().strip()
        req = urllib.request.Request(f"{self.url.rstrip('/')}/_security/_query/api_key", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        ctx = ssl.create_default_context(cafile=self.ca) if self.url.startswith("https") else None
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                found = json.load(r)
        except Exception as e:  # reported, not fatal: the appliance's own count is there too
            print(f"  (could not count the double's keys: {e})", file=sys.stderr)
            return None
        return found["total"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def keys_in_db(data):
    """Active output keys in the appliance's state.db, read by this process (WAL: a reader does
    not hold up the appliance's writes)."""
    try:
        db = sqlite3.connect(f"file:{os.path.join(data, 'state.db')}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT count(*) FROM output_keys WHERE state = 'active'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


def waiting_for_keys(cfg, work):
    """`elasticsearch.agents_waiting_for_keys` as `ferry-appliance status --json` says it."""
    out = subprocess.run([f"{fleet.BIN}/ferry-appliance", "-c", cfg, "status", "--json"], cwd=work,
                         capture_output=True, text=True).stdout
    try:
        return (json.loads(out).get("elasticsearch") or {}).get("agents_waiting_for_keys")
    except ValueError:
        return None


def holding(line):
    """Agents that hold a policy, whatever its revision number."""
    return sum(line.get("revisions", {}).values())


def one(work, mode, with_es, args, port):
    cfg, url = fleet.config(work, mode, port)
    double = None
    if with_es:
        double = Double(work, mode, args.latency_ms)
        with open(cfg, "a") as f:
            f.write(f'[elasticsearch]\nhosts = ["{double.url}"]\nservice_token_file = "{double.token}"\n')
            if mode == "tls":
                f.write(f'ca_file = "{double.ca}"\n')
    data = os.path.join(work, f"data-{mode}")
    shutil.rmtree(data, ignore_errors=True)
    fleet.run(f"{fleet.BIN}/ferry-appliance", "-c", cfg, "import", BUNDLE, "-q", cwd=work)
    server = fleet.start(work, cfg)
    token = fleet.run(f"{fleet.BIN}/ferry-appliance", "-c", cfg, "tokens", "create", "--policy", "default-policy",
                      cwd=work).stdout.strip()
    ca = ["--ca", os.path.join(data, "tls", "ca.pem")] if mode == "tls" else []
    pgp = [] if mode == "tls" else ["--pgp-key", os.path.join(work, "mirror", "GPG-KEY-ferry-demo")]
    target = ["--url", url, "--token", token, "--sources", "64", *ca]
    sims = []
    try:
        n = args.parked
        parked = fleet.Sim([f"{fleet.BIN}/ferry-sim", "run", *target, *pgp, "--agents", str(n), "--ramp", "1000",
                            "--report-ms", "100"])
        sims.append(parked)
        # Parked with their policy (in run B a check-in waiting for its key is parked too).
        t = time.time()
        parked.wait(lambda l: holding(l) >= n and l.get("in_checkin") == n, 300)
        parked_s = time.time() - t
        time.sleep(3)

        # The probe and the second wave start together.
        probe = subprocess.Popen([f"{fleet.BIN}/ferry-sim", "probe", *target, "--duration", str(args.probe_seconds),
                                  "--rate", "10"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        c0 = fleet.cpu_seconds(server.pid)
        start_ms = int(time.time() * 1000)
        m = args.enrolling
        wave = fleet.Sim([f"{fleet.BIN}/ferry-sim", "run", *target, *pgp, "--agents", str(m), "--ramp",
                          str(args.ramp), "--report-ms", "100"])
        sims.append(wave)
        keys = []  # (epoch_ms, active keys in state.db), run B only
        statuses = []  # seconds each `status` took, with --status-every
        stop_polling = threading.Event()

        def count_keys():
            while not stop_polling.is_set():
                k = keys_in_db(data)
                if k is not None:
                    keys.append((int(time.time() * 1000), k))
                stop_polling.wait(0.25)

        def ask_status():
            while not stop_polling.is_set():
                t = time.time()
                waiting_for_keys(cfg, work)
                statuses.append(time.time() - t)
                stop_polling.wait(args.status_every)

        pollers = [threading.Thread(target=count_keys, daemon=True)] if with_es else []
        if args.status_every:
            pollers.append(threading.Thread(target=ask_status, daemon=True))
        for t in pollers:
            t.start()
        enrolled_ms = wave.wait(lambda l: l.get("enrolled") == m, 120)["epoch_ms"]
        policy_ms = wave.wait(lambda l: holding(l) >= m, 120)["epoch_ms"]
        out, _ = probe.communicate(timeout=args.probe_seconds + 60)
        cpu = 100 * (fleet.cpu_seconds(server.pid) - c0) / (time.time() - start_ms / 1000)
        stop_polling.set()
        for t in pollers:
            t.join()
        result = {
            "mode": mode, "run": "B" if with_es else "A", "parked": n, "enrolling": m, "ramp": args.ramp,
            "latency_ms": args.latency_ms if with_es else None,
            "parked_s": round(parked_s, 2),
            "probe": json.loads(out),
            "wave_enrolled_s": round((enrolled_ms - start_ms) / 1000, 2),
            "wave_policy_s": round((policy_ms - start_ms) / 1000, 2),
            "appliance_cpu_percent": round(cpu, 1),
            "sim_errors": {k: v for s in sims for k, v in s.last().get("errors", {}).items()},
            "status_every": args.status_every or None,
            "status_calls": len(statuses),
            "status_max_s": round(max(statuses), 3) if statuses else None,
        }
        if with_es:
            result["double_keys"] = double.keys()
            result["appliance_keys"] = keys_in_db(data)
            # When state.db first held a key for every agent of both waves.
            done = [t for t, k in keys if k >= n + m]
            result["all_keys_s"] = round((done[0] - start_ms) / 1000, 2) if done else None
            result["waiting_after"] = waiting_for_keys(cfg, work)
        return result
    finally:
        for s in sims:
            s.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        if double:
            double.stop()


def lat(r, k):
    p = r["probe"][k]
    return f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="plain,tls")
    p.add_argument("--parked", type=int, default=2000)
    p.add_argument("--enrolling", type=int, default=500)
    p.add_argument("--ramp", type=float, default=100)
    p.add_argument("--latency-ms", type=int, default=50)
    p.add_argument("--probe-seconds", type=float, default=20)
    p.add_argument("--status-every", type=float, default=0,
                   help="ask `ferry-appliance status --json` every S seconds during the probe, in both runs")
    p.add_argument("--out", default=os.path.join(ROOT, "target", "bench-keys.json"))
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    args = p.parse_args()
    build_binaries()
    work = tempfile.mkdtemp(prefix="ferry-bench-keys-")
    prepare(work)
    print(f"{'mode':5} {'run':3} {'enroll p50/p99':>15} {'ack p50/p99':>13} {'status p50/p99':>15} "
          f"{f'{args.enrolling} enrolled':>12} {f'{args.enrolling} policy':>10} {'CPU':>6} {'keys (double/db)':>16} {'all keys':>8} {'waiting':>7}",
          flush=True)
    results, missed = [], []
    for i, mode in enumerate(args.modes.split(",")):
        pair = {}
        for with_es in (False, True):
            r = one(work, mode, with_es, args, 18500 + 10 * i + int(with_es))
            pair[r["run"]] = r
            results.append(r)
            keys = f"{r.get('double_keys')}/{r.get('appliance_keys')}" if with_es else "-"
            done = f"{r['all_keys_s']}s" if with_es and r.get("all_keys_s") is not None else "-"
            wait = r.get("waiting_after") if with_es else "-"
            print(f"{mode:5} {r['run']:3} {lat(r, 'enroll'):>15} {lat(r, 'ack'):>13} {lat(r, 'status'):>15} "
                  f"{r['wave_enrolled_s']:>11}s {r['wave_policy_s']:>9}s {r['appliance_cpu_percent']:>5}% "
                  f"{keys:>16} {done:>8} {wait!s:>7}", flush=True)
            if r["status_calls"]:
                print(f"      `status` asked {r['status_calls']} times, the longest took {r['status_max_s']} s",
                      flush=True)
            errors = {**r["probe"].get("errors", {}), **r["sim_errors"]}
            if errors:
                print(f"      errors: {errors}", flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
        a, b = pair["A"]["probe"], pair["B"]["probe"]
        ratios = {k: round(b[k]["p99_ms"] / a[k]["p99_ms"], 2) if a[k]["p99_ms"] else None for k in KINDS}
        print(f"{mode:5} B/A p99: " + ", ".join(f"{k} {ratios[k]}" for k in KINDS), flush=True)
        for k in KINDS:
            if b[k]["p99_ms"] > GOAL_MS:
                note = " (run A too: " + str(a[k]["p99_ms"]) + " ms)" if a[k]["p99_ms"] > GOAL_MS else ""
                missed.append(f"{mode} {k} p99 {b[k]['p99_ms']} ms > {GOAL_MS:g} ms{note}")
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if missed:
        print("goal missed: " + "; ".join(missed))
        return 1
    print(f"goal met: every control-call p99 of run B <= {GOAL_MS:g} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
