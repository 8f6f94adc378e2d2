#!/usr/bin/env python3
"""Faults and floods benchmark: one ferry-appliance with N parked agents (ferry-sim run), probed
(ferry-sim probe) quietly and under each kind of hostile client (ferry-sim flood), plain and TLS.

For each transport and scenario (quiet, each flood kind alone, all kinds together, quiet again)
it prints, and appends to the results file as JSON:
  - p50/p99 of enroll, ack and status calls by the probe (its own connection, 10 rounds/s), and
    the ratio of each p99 to the first quiet run's;
  - the appliance's CPU (% of one core) and resident memory (largest VmRSS seen) meanwhile;
  - what the flood achieved (attempts per second) and how the appliance answered it.

Usage: scripts/bench-faults.py [--agents 1000] [--modes plain,tls] [--seconds 20] [--out FILE]
Builds the release binaries first. Reuses scripts/bench-fleet.py's helpers.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

_spec = importlib.util.spec_from_file_location(
    "bench_fleet", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-fleet.py"))
fleet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fleet)
ROOT = fleet.ROOT
BIN = None  # set in main() by fleet.build_binaries()

# Each kind sized as in docs/benchmarks.md: hostile but what one client machine could do.
FLOODS = {
    "slowloris": ["--kinds", "slowloris", "--slowloris", "1000"],
    "slow-body": ["--kinds", "slow-body", "--slow-body", "50"],
    "oversize": ["--kinds", "oversize", "--oversize-connections", "2"],
    "keys": ["--kinds", "keys", "--key-rate", "3000", "--key-connections", "8"],
    "disconnect": ["--kinds", "disconnect", "--disconnect-agents", "50", "--disconnect-after-ms", "500"],
}
FLOODS["all"] = ["--kinds", ",".join(FLOODS), "--slowloris", "1000", "--slow-body", "50",
                 "--oversize-connections", "2", "--key-rate", "3000", "--key-connections", "8",
                 "--disconnect-agents", "50", "--disconnect-after-ms", "500"]


def scenario(server, target, flood_args, seconds):
    """Probes for `seconds` (with the flood running, if any); returns the probe's summary, the
    server's CPU and largest RSS over the probe, and the flood's report."""
    flood = None
    if flood_args is not None:
        flood = subprocess.Popen([f"{BIN}/ferry-sim", "flood", *target, "--seconds", str(seconds + 6), *flood_args],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(3)  # connections opened, agents enrolled
    rss_max = [fleet.rss_kib(server.pid)]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            rss_max[0] = max(rss_max[0], fleet.rss_kib(server.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    c0, t0 = fleet.cpu_seconds(server.pid), time.time()
    probe = json.loads(fleet.run(f"{BIN}/ferry-sim", "probe", *target, "--duration", str(seconds), "--rate", "10").stdout)
    cpu = 100 * (fleet.cpu_seconds(server.pid) - c0) / (time.time() - t0)
    done.set()
    sampler.join()
    report = None
    if flood is not None:
        out, _ = flood.communicate(timeout=seconds + 60)
        report = json.loads(out) if out.strip() else {"error": f"flood exited {flood.returncode}"}
    # The server settles before the next scenario (closed connections, freed buffers).
    time.sleep(5)
    return {"probe": probe, "cpu_percent": round(cpu, 1), "rss_max_mib": round(rss_max[0] / 1024, 1),
            "rss_after_mib": round(fleet.rss_kib(server.pid) / 1024, 1), "flood": report}


def flood_summary(report):
    if not report:
        return ""
    parts = []
    for kind, v in report.get("kinds", {}).items():
        statuses = ",".join(f"{k}:{n}" for k, n in v["status"].items())
        errors = sum(v["errors"].values())
        parts.append(f"{kind} {v['rate_per_s']}/s [{statuses}]" + (f" err {errors}" if errors else ""))
    return "; ".join(parts)


def one(work, mode, n, port, seconds):
    cfg, url = fleet.config(work, mode, port)
    data = os.path.join(work, f"data-{mode}")
    shutil.rmtree(data, ignore_errors=True)
    fleet.run(f"{BIN}/ferry-appliance", "-c", cfg, "import", "dist/bench-1.ferry", "-q", cwd=work)
    server = fleet.start(work, cfg)
    token = fleet.run(f"{BIN}/ferry-appliance", "-c", cfg, "tokens", "create", "--policy", "default-policy", cwd=work).stdout.strip()
    ca = ["--ca", os.path.join(data, "tls", "ca.pem")] if mode == "tls" else []
    target = ["--url", url, "--token", token, "--sources", "64", *ca]
    sim = fleet.Sim([f"{BIN}/ferry-sim", "run", *target, "--agents", str(n), "--ramp", "1000", "--report-ms", "200"])
    sim.wait(lambda l: l.get("enrolled") == n and l.get("in_checkin") == n, 300)
    time.sleep(5)
    results = []
    for name in ["quiet", *FLOODS, "quiet"]:
        r = scenario(server, target, FLOODS.get(name), seconds)
        r.update({"mode": mode, "agents": n, "scenario": name,
                  "parked_after": sim.last().get("in_checkin"), "sim_errors": sim.last().get("errors")})
        results.append(r)
        yield r
    alive = server.poll() is None
    sim.stop()
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    if not alive:
        print(f"{mode}: the appliance died during the run", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--modes", default="plain,tls")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--out", default=os.path.join(ROOT, "target", "bench-faults.json"))
    args = p.parse_args()
    global BIN
    BIN = fleet.build_binaries()
    work = tempfile.mkdtemp(prefix="ferry-bench-faults-")
    fleet.prepare(work)
    print(f"{'mode':5} {'scenario':10} {'enroll p50/p99':>15} {'ack p50/p99':>13} {'status p50/p99':>15} "
          f"{'p99 ×quiet e/a/s':>17} {'CPU':>6} {'RSS MiB':>8} {'parked':>6}  flood", flush=True)
    for mode in args.modes.split(","):
        quiet = None
        for r in one(work, mode, args.agents, 18500 if mode == "plain" else 18600, args.seconds):
            pr = r["probe"]
            if quiet is None:
                quiet = pr
            lat = lambda k: f"{pr[k]['p50_ms']:.1f}/{pr[k]['p99_ms']:.1f}"
            ratio = lambda k: pr[k]["p99_ms"] / max(quiet[k]["p99_ms"], 0.01)
            r["p99_ratio"] = {k: round(ratio(k), 1) for k in ("enroll", "ack", "status")}
            errors = sum(pr.get("errors", {}).values())
            print(f"{mode:5} {r['scenario']:10} {lat('enroll'):>15} {lat('ack'):>13} {lat('status'):>15} "
                  f"{ratio('enroll'):>5.1f}/{ratio('ack'):.1f}/{ratio('status'):.1f}{'':>4} {r['cpu_percent']:>5}% "
                  f"{r['rss_max_mib']:>8} {r['parked_after']:>6}  {flood_summary(r['flood'])}"
                  + (f"  probe errors {pr['errors']}" if errors else ""), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
