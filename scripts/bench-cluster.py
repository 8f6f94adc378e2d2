#!/usr/bin/env python3
"""Issue 16: two ferry-appliance instances sharing one PostgreSQL behind HAProxy, against one
instance on SQLite, with N simulated agents over TLS, in the same run.

Setups (each with a fresh data directory and, for the cluster, a fresh database):
  - single:  one `serve` on SQLite; agents connect to it directly from 64 loopback addresses;
  - cluster: two `serve` (instances a and b, `[store] backend = "postgres"`, `[cluster]`) on one
             throwaway PostgreSQL server, behind HAProxy (Debian's package) running the packaged
             appliance/packaging/haproxy/ferry.cfg adapted to loopback ports; agents connect to
             HAProxy from 64 loopback addresses, HAProxy to the instances from 127.0.0.1.

Both run the default configuration except what every benchmark here changes (enrollment limits
raised so the whole fleet enrolls at once) and, for the cluster, what docs/high-availability.md
says an instance behind HAProxy needs (one certificate for public_url, copied from a's
quick-start folder to b's; server.max_connections_per_address at the whole connection cap, as
every agent comes from HAProxy's one address).

For each setup it measures, printing one line per setup, then the ratios cluster/single, and
appends JSON to the results file:
  - KiB per parked agent per instance: (VmRSS once every agent is parked and a minute has
    passed without traffic) minus (VmRSS before any agent came), over the agents the instance
    holds (HAProxy's current sessions per server; all of them for single); the CPU each
    instance, HAProxy and PostgreSQL used in that quiet minute (% of one core);
  - control-call p99: `ferry-sim probe` (enroll, ack, status, 10 a second each for 20 s, on
    connections of its own, through HAProxy for the cluster) while every agent is parked;
  - policy fan-out: from the end of `ferry-appliance import` of a bundle with a new policy
    revision (on instance a for the cluster) until every agent holds it and until every agent's
    ack has been answered 200 (the simulator's counts, 100 ms apart), and until the store
    records every agent at the new revision (acks are written in batches every 5 s);
  - failover: SIGKILL of one instance (b) until every agent is back: connected (the simulator
    has a check-in in flight for every agent again and the surviving instance holds a
    connection for each: HAProxy's sessions on it) and stored (every agent b held has a
    check-in recorded by a since the kill: last_checkin, to the second); also when HAProxy
    marked b DOWN and when a's heartbeat (every 5 s, in the store) first counted every agent
    parked. For single there is no other instance: it is restarted 2 s after the SIGKILL (the
    packaged unit's RestartSec=2) and timed the same way (connections counted with ss);
  - database connections: `SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE
    'ferry-appliance%'`, sampled every 0.5 s: while quiet, and the most in each phase; sessions
    opened and WAL written per minute while quiet;
  - PostgreSQL's tables once all are parked (before the probe enrolls its own): rows and
    pg_total_relation_size of each; at the end again and after VACUUM FULL;
  - the CPU each process used while agents enrolled, during the fan-out and the failover.
Next to each figure: the 1-minute load average when it was taken, and other work's CPU over the
same time (the machine's busy time less this script's and its children's).

Agents back off after a failed check-in for --backoff seconds (jittered to half of it,
doubling): 1 s by default, so that failover measures the cluster rather than the agents'
own timer; stock Elastic Agents wait 60 s (30-60 s jittered), which --backoff 60 shows.

Usage: scripts/bench-cluster.py [--agents 1000] [--setups single,cluster] [--backoff 1]
Needs PostgreSQL's initdb/postgres (/usr/lib/postgresql/*/bin) and haproxy (apt-get install
postgresql haproxy); runs them as nobody and as root in temporary folders, everything on
127.0.0.1. HAProxy holds two descriptors per agent: its maxconn is set to what the hard
open-file limit allows (9 985 at 20 000), so at most 9 982 agents with the probe's 3 connections.
"""

import argparse
import glob
import importlib.util
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import sqlite3
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
PORTS = {"single": 18500, "a": 18501, "b": 18502, "haproxy": 18510, "postgres": 18520}
QUIET_SECONDS = 55  # after the 5 s above: a minute in all
RESTART_SEC = 2  # appliance/packaging/ferry-appliance.service: RestartSec=2


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def log(msg):
    print(f"  [{time.strftime('%H:%M:%S')} load {load():.2f}] {msg}", file=sys.stderr, flush=True)


def cpu_snapshot():
    """(seconds, CPU seconds the whole machine was busy, CPU seconds of this script and
    everything it started): the difference between the last two is other work's."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(cpu[:8]) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
            except OSError:
                pass
    ours, todo = 0, [os.getpid()]
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        ours += stats.get(pid, (0, 0))[1]
        todo.extend(children.get(pid, []))
    return time.time(), busy, ours / tick


def others_percent(before):
    """Other work's CPU since `before` (cpu_snapshot()), % of one core (the machine has 2)."""
    t, busy, ours = cpu_snapshot()
    return round(100 * ((busy - before[1]) - (ours - before[2])) / (t - before[0]), 1)


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_tree_seconds(pids):
    """CPU of a process and its children: the first's own and its ended children's
    (cutime, cstime), plus the live ones' (PostgreSQL forks a backend per connection)."""
    total = 0.0
    for i, pid in enumerate(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if i == 0 else 0)
    return total / os.sysconf("SC_CLK_TCK")


def children_of(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    """A throwaway PostgreSQL server: initdb and postgres as nobody in a temporary folder,
    default settings except the port and the socket folder, trust authentication on loopback
    (initdb's default), superuser `postgres`."""

    def __init__(self, port):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        if not bins:
            sys.exit("no PostgreSQL: apt-get install postgresql")
        self.bin = os.path.dirname(bins[-1])
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="ferry-bench-pg-")
        nobody = pwd.getpwnam("nobody")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        os.chown(self.dir, self.uid, self.gid)
        env = dict(os.environ, LC_ALL="C.UTF-8")
        subprocess.run([f"{self.bin}/initdb", "-D", "data", "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       cwd=self.dir, user=self.uid, group=self.gid, env=env, check=True,
                       capture_output=True)
        self.log = open(os.path.join(self.dir, "log"), "w")
        os.chown(self.log.name, self.uid, self.gid)
        self.proc = subprocess.Popen(
            [f"{self.bin}/postgres", "-D", "data", "-p", str(port), "-c", f"unix_socket_directories={self.dir}"],
            cwd=self.dir, user=self.uid, group=self.gid, env=env, stdout=self.log, stderr=self.log,
            start_new_session=True)
        for _ in range(600):
            if subprocess.run([f"{self.bin}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0:
                break
            time.sleep(0.1)
        else:
            sys.exit(f"PostgreSQL did not start: {open(self.log.name).read()}")

    def psql(self, sql, db="postgres"):
        out = subprocess.run([f"{self.bin}/psql", "-X", "-q", "-A", "-t", "-F", "\t", "-h", "127.0.0.1",
                              "-p", str(self.port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql],
                             check=True, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def settings(self):
        names = ["server_version", "max_connections", "shared_buffers", "work_mem", "effective_cache_size",
                 "fsync", "synchronous_commit", "wal_level", "max_wal_size", "autovacuum", "listen_addresses"]
        rows = self.psql("SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name IN (%s)"
                         % ",".join(f"'{n}'" for n in names))
        return {r[0]: f"{r[1]}{' ' + r[2] if r[2] else ''}" for r in rows}

    def url(self, db):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def pids(self):
        return [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self):
        self.proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Psql:
    """One psql session kept open (application_name bench), for queries every half second."""

    def __init__(self, pg, db):
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [f"{pg.bin}/psql", "-X", "-q", "-A", "-t", "-F", "\t", "-h", "127.0.0.1", "-p", str(pg.port),
             "-U", "postgres", "-d", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, PGAPPNAME="bench"))

    def query(self, sql):
        with self.lock:
            self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo __end__\n")
            self.proc.stdin.flush()
            rows = []
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                if line == "__end__":
                    break
                if line:
                    rows.append(line.split("\t"))
            return rows

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


class Sampler:
    """Samples, every half second, the appliance's database connections (by instance) and the
    instances' heartbeats (parked check-ins), labelled with the phase the benchmark is in."""

    def __init__(self, psql):
        self.psql = psql
        self.phase = "start"
        self.samples = []  # (epoch, phase, {application_name: connections}, {instance: parked})
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                self._sample()
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.5)

    def _sample(self):
        if True:
            conns = {r[0]: int(r[1]) for r in self.psql.query(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'ferry-appliance%' GROUP BY 1")}
            # Each instance's parked check-ins as its last heartbeat (every 5 s) said, and when.
            parked = {r[0]: (int(r[1]), float(r[2])) for r in self.psql.query(
                "SELECT name, parked, extract(epoch FROM seen_at) FROM instances")
                if len(r) == 3} if self._has_instances() else {}
            self.samples.append((time.time(), self.phase, conns, parked))

    def _has_instances(self):
        return bool(self.psql.query("SELECT 1 FROM pg_tables WHERE tablename = 'instances'"))

    def max_by_phase(self):
        out = {}
        for _, phase, conns, _ in self.samples:
            out[phase] = max(out.get(phase, 0), sum(conns.values()))
        return out

    def max_by_instance(self):
        out = {}
        for _, _, conns, _ in self.samples:
            for k, v in conns.items():
                out[k] = max(out.get(k, 0), v)
        return out

    def last(self):
        return self.samples[-1] if self.samples else (0, "", {}, {})

    def stop(self):
        self.running = False
        self.thread.join(5)


def table_sizes(psql):
    """Rows, pg_total_relation_size (heap, TOAST and indexes), the indexes' share and the dead
    row versions of every table of the appliance's schema; the database's size; the average
    size of an agent's row as stored (pg_column_size)."""
    out = {}
    for name, total, indexes, dead in psql.query(
            "SELECT relname, pg_total_relation_size(relid), pg_indexes_size(relid), n_dead_tup "
            "FROM pg_stat_user_tables"):
        rows = int(psql.query(f'SELECT count(*) FROM "{name}"')[0][0])
        out[name] = {"rows": rows, "bytes": int(total), "index_bytes": int(indexes), "dead": int(dead)}
    out["_database_bytes"] = int(psql.query("SELECT pg_database_size(current_database())")[0][0])
    out["_agent_row_bytes"] = float(psql.query("SELECT coalesce(avg(pg_column_size(a.*)), 0) FROM agents a")[0][0])
    return out


# ---------------------------------------------------------------- HAProxy


class Haproxy:
    """Debian's haproxy in the foreground running the packaged ferry.cfg, adapted: loopback
    ports, the runtime API in a temporary folder, no chroot or user switch (the test harness's
    adaptations), logs to a file, instances a and b only, and maxconn at what the hard
    open-file limit allows (HAProxy needs two descriptors per connection plus a few)."""

    def __init__(self, work, port, backends, maxconn):
        self.dir = tempfile.mkdtemp(prefix="ferry-bench-haproxy-")
        self.socket = os.path.join(self.dir, "admin.sock")
        with open(os.path.join(ROOT, "appliance", "packaging", "haproxy", "ferry.cfg")) as f:
            site = f.read()
        text = site
        for old, new in [
            ("    log /dev/log local0\n", "    log stderr format raw local0\n"),
            ("    chroot /var/lib/haproxy\n", ""),
            ("    user haproxy\n", ""),
            ("    group haproxy\n", ""),
            ("    stats socket /run/haproxy/admin.sock mode 660 level admin\n",
             f"    stats socket {self.socket} mode 600 level admin\n"),
            ("    bind :8220\n", f"    bind 127.0.0.1:{port}\n"),
            ("    maxconn 50000\n    default_backend", f"    maxconn {maxconn}\n    default_backend"),
            ("    maxconn 50000\n\ndefaults", f"    maxconn {maxconn}\n\ndefaults"),
            ("    server ferry-a 192.0.2.11:8220\n", f"    server ferry-a 127.0.0.1:{backends[0]}\n"),
            ("    server ferry-b 192.0.2.12:8220\n", f"    server ferry-b 127.0.0.1:{backends[1]}\n"),
            ("    server ferry-c 192.0.2.13:8220\n", ""),
        ]:
            assert old in text, f"{old!r} is no longer in ferry.cfg"
            text = text.replace(old, new)
        self.config = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(text)
        self.log = open(os.path.join(work, "haproxy.log"), "w")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(200):
            if self.proc.poll() is not None:
                said = open(self.log.name).read()
                m = re.search(r"Cannot raise FD limit to (\d+), limit is (\d+)", said)
                shutil.rmtree(self.dir, ignore_errors=True)
                if m:
                    raise FdLimit(int(m.group(1)), int(m.group(2)))
                raise RuntimeError(said)
            try:
                self.runtime("show info")
                break
            except OSError:
                time.sleep(0.1)

    def runtime(self, command):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.socket)
            s.sendall(f"{command}\n".encode())
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode()

    def servers(self):
        """{server: (status, current sessions, total sessions)} of backend ferry."""
        lines = self.runtime("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        col = {h: i for i, h in enumerate(header)}
        out = {}
        for line in lines[1:]:
            f = line.split(",")
            if len(f) > col["status"] and f[col["pxname"]] == "ferry" and f[col["svname"]] not in ("BACKEND",):
                out[f[col["svname"]]] = (f[col["status"]], int(f[col["scur"]] or 0), int(f[col["stot"]] or 0))
        return out

    def wait_up(self, names, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            s = self.servers()
            if all(s.get(n, ("",))[0] == "UP" for n in names):
                return
            time.sleep(0.2)
        raise TimeoutError(f"HAProxy never saw {names} UP: {self.servers()}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class FdLimit(Exception):
    def __init__(self, wanted, limit):
        super().__init__(f"HAProxy wants {wanted} descriptors, the limit is {limit}")
        self.wanted, self.limit = wanted, limit


def haproxy_maxconn():
    """A first guess at the largest maxconn HAProxy 2.6 starts with under the hard open-file
    limit: it asks for 2 x maxconn plus a few (30 with this configuration; its ALERT says how
    many when the limit is lower, and Setup.start lowers maxconn by that much)."""
    return (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 28) // 2


# ---------------------------------------------------------------- the appliance


def write_config(work, name, port, public_url, pg_url=None, per_address=None):
    text = (f'data_dir = "data-{name}"\ntrusted_keys = ["ferry.pub"]\npublic_url = "{public_url}"\n')
    if pg_url:
        text += (f'[store]\nbackend = "postgres"\nurl = "{pg_url}"\n'
                 f'[cluster]\ninstance = "{name}"\nshared_dir = "shared"\n')
    text += f'[server]\nlisten = "127.0.0.1:{port}"\n'
    if per_address:
        # Behind HAProxy every agent comes from one address (docs/high-availability.md).
        text += f"max_connections_per_address = {per_address}\n"
    # Enrollment of a whole fleet at once; the defaults pace it at 100/s.
    text += "[limits.enroll]\nper_second = 5000\nburst = 5000\nconcurrent = 500\n"
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    shutil.rmtree(os.path.join(work, f"data-{name}"), ignore_errors=True)
    return path


def cli(work, cfg, *args):
    return fleet.run(f"{BIN}/ferry-appliance", "-c", cfg, *args, cwd=work).stdout


def connections_on(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return out.count("\n")


class Setup:
    """What differs between the setups: how instances start, where agents connect, how
    connections to an instance are counted, what a failover is."""

    def __init__(self, kind, work, n, pg=None):
        self.kind, self.work, self.n, self.pg = kind, work, n, pg
        self.procs = {}  # instance name -> Popen
        self.cfgs = {}
        self.haproxy = None
        self.psql = None
        self.sampler = None

    # -- start
    def start(self):
        w = self.work
        if self.kind == "single":
            url = f"https://127.0.0.1:{PORTS['single']}"
            self.cfgs["single"] = write_config(w, "single", PORTS["single"], url)
            fleet.run(f"{BIN}/ferry-appliance", "-c", self.cfgs["single"], "import", "dist/bench-1.ferry", "-q", cwd=w)
            self.procs["single"] = fleet.start(w, self.cfgs["single"])
            self.url, self.ca = url, os.path.join(w, "data-single", "tls", "ca.pem")
            return
        self.db = f"ferry_{self.n}_{int(time.time())}"
        self.pg.psql(f"CREATE DATABASE {self.db}")
        self.psql = Psql(self.pg, self.db)
        self.sampler = Sampler(self.psql)
        shutil.rmtree(os.path.join(w, "shared"), ignore_errors=True)
        os.makedirs(os.path.join(w, "shared"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        cap = hard - max(hard // 16, 128)  # the appliance's connection cap (net/connections.rs)
        url = f"https://127.0.0.1:{PORTS['haproxy']}"
        for name in ("a", "b"):
            self.cfgs[name] = write_config(w, name, PORTS[name], url, self.pg.url(self.db), cap)
        self.procs["a"] = fleet.start(w, self.cfgs["a"])
        # One certificate for public_url on every instance: b serves a's quick-start one.
        shutil.copytree(os.path.join(w, "data-a", "tls"), os.path.join(w, "data-b", "tls"))
        self.procs["b"] = fleet.start(w, self.cfgs["b"])
        end = time.time() + 60
        while time.time() < end:
            v = json.loads(cli(w, self.cfgs["a"], "cluster", "--json"))
            if sum(1 for i in v["instances"] if i.get("live")) == 2:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"both instances never live: {v}")
        self.sampler.phase = "import"
        cli(w, self.cfgs["a"], "import", "dist/bench-1.ferry", "-q")
        self.maxconn = haproxy_maxconn()
        while True:
            try:
                self.haproxy = Haproxy(w, PORTS["haproxy"], (PORTS["a"], PORTS["b"]), self.maxconn)
                break
            except FdLimit as e:
                self.maxconn -= (e.wanted - e.limit + 1) // 2
                if self.n + 3 > self.maxconn:
                    raise SystemExit(f"HAProxy fits {self.maxconn} connections under the open-file limit "
                                     f"{e.limit}: not {self.n} agents and the probe's 3") from e
        self.haproxy.wait_up(["ferry-a", "ferry-b"])
        self.url, self.ca = url, os.path.join(w, "data-a", "tls", "ca.pem")

    def admin_cfg(self):
        return self.cfgs["single"] if self.kind == "single" else self.cfgs["a"]

    def phase(self, name):
        if self.sampler:
            self.sampler.phase = name

    def held(self):
        """Agent connections each instance holds now."""
        if self.kind == "single":
            return {"single": connections_on(PORTS["single"])}
        s = self.haproxy.servers()
        return {"a": s["ferry-a"][1], "b": s["ferry-b"][1]}

    def extra_pids(self):
        """HAProxy's and PostgreSQL's processes, whose CPU and memory are the cluster's too."""
        out = {}
        if self.haproxy:
            out["haproxy"] = [self.haproxy.proc.pid]
        if self.pg and self.kind == "cluster":
            out["postgres"] = self.pg.pids()
        return out

    # -- failover
    def failover(self, sim):
        """SIGKILL of b (single: of the one instance, started again RESTART_SEC later); seconds
        until every agent has a check-in in flight and the survivor holds a connection for each."""
        victim = "single" if self.kind == "single" else "b"
        survivor = "single" if self.kind == "single" else "a"
        before = sim.last()
        held_before = self.held()
        errors_before = dict(before.get("errors", {}))
        # The agents that must check in again: those whose check-ins the victim held, as the
        # store says (instance b; a single appliance leaves `instance` NULL: every agent that
        # ever checked in). Their check-ins after the kill are recorded in last_checkin (to the
        # second, written every 5 s): the largest is when the last came back.
        if self.kind == "single":
            moved = self.store_query("SELECT id FROM agents WHERE last_checkin IS NOT NULL")
        else:
            moved = self.store_query("SELECT id FROM agents WHERE instance = 'b'")
        moved = [m[0] for m in moved]
        next_store = 0
        stored = None
        t0 = time.time()
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
        self.procs[victim].send_signal(signal.SIGKILL)
        self.procs[victim].wait(10)
        if self.kind == "single":
            time.sleep(RESTART_SEC)
            self.procs["single"] = fleet.start(self.work, self.cfgs["single"])
            restarted = time.time() - t0
        else:
            restarted = None
        down_at = None
        back = None
        heartbeat = None
        end = t0 + 180
        while time.time() < end:
            now = time.time()
            if self.haproxy and down_at is None:
                if self.haproxy.servers()["ferry-b"][0].startswith("DOWN"):
                    down_at = now - t0
            held = self.held()[survivor]
            line = sim.last()
            if back is None and held >= self.n and line.get("in_checkin") == self.n and line["epoch_ms"] / 1000 > t0 + 0.2:
                back = now - t0
            if self.sampler and heartbeat is None:
                parked, seen = self.sampler.last()[3].get("a", (0, 0))
                if seen > t0 and parked >= self.n:
                    heartbeat = seen - t0
            if stored is None and now >= next_store:
                next_store = now + 0.5
                stored = self.stored_back(moved, since)
            done_hb = heartbeat is not None or self.kind == "single"
            if back is not None and stored is not None and done_hb and (down_at is not None or self.kind == "single"):
                break
            time.sleep(0.1)
        errors = {k: v - errors_before.get(k, 0) for k, v in sim.last().get("errors", {}).items()
                  if v - errors_before.get(k, 0)}
        return {"victim": victim, "held_before": held_before, "all_back_s": None if back is None else round(back, 2),
                "moved": len(moved), "stored_all_back_s": stored,
                "heartbeat_all_parked_s": None if heartbeat is None else round(heartbeat, 2),
                "haproxy_down_s": None if down_at is None else round(down_at, 2),
                "restarted_s": None if restarted is None else round(restarted, 2),
                "failed_checkins": errors, "load": load()}

    def store_query(self, sql):
        """Rows of `sql` on the store: SQLite's state.db read-only, or the shared database."""
        if self.kind == "single":
            db = sqlite3.connect(f"file:{os.path.join(self.work, 'data-single', 'state.db')}?mode=ro",
                                 uri=True, timeout=5)
            try:
                return [[str(c) for c in row] for row in db.execute(sql).fetchall()]
            finally:
                db.close()
        return self.psql.query(sql)

    def stored_back(self, moved, since):
        """Seconds from `since` (the kill, to the second) to the last recorded check-in of the
        agents in `moved`, once every one of them has one recorded since (at the survivor)."""
        survivor = "" if self.kind == "single" else " AND instance = 'a'"
        ids = ",".join(f"'{m}'" for m in moved)
        row = self.store_query(f"SELECT count(*), max(last_checkin) FROM agents WHERE id IN ({ids}) "
                               f"AND last_checkin >= '{since}'{survivor}")
        if not row or int(row[0][0]) < len(moved):
            return None
        last = time.mktime(time.strptime(row[0][1], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        first = time.mktime(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        return round(last - first, 0)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.haproxy:
            self.haproxy.stop()
        if self.sampler:
            self.sampler.stop()
        if self.psql:
            self.psql.close()
            self.pg.psql(f"DROP DATABASE {self.db} WITH (FORCE)")


def stored_at_revision(setup, revision):
    """Agents the store records at `revision` or later (what acks wrote)."""
    return int(setup.store_query(f"SELECT count(*) FROM agents WHERE policy_revision >= {revision}")[0][0])


def measure(setup, n, backoff):
    w = setup.work
    r = {"setup": setup.kind, "agents": n, "backoff_s": backoff}
    log(f"{setup.kind}: starting")
    try:
        setup.start()
        return measure_started(setup, n, r, backoff)
    finally:
        setup.stop()


def measure_started(setup, n, r, backoff):
    w = setup.work
    if setup.haproxy:
        r["haproxy_maxconn"] = setup.maxconn
    names = list(setup.procs)
    base = {k: fleet.rss_kib(p.pid) for k, p in setup.procs.items()}
    base_extra = {k: pss_kib(p) for k, p in setup.extra_pids().items()}
    token = cli(w, setup.admin_cfg(), "tokens", "create", "--policy", "default-policy").strip()
    target = ["--url", setup.url, "--token", token, "--sources", "64", "--ca", setup.ca]
    setup.phase("enroll")
    def cpu_now():
        """CPU seconds of each live process of the setup, keyed by name and pid."""
        out = {(k, p.pid): fleet.cpu_seconds(p.pid) for k, p in setup.procs.items() if p.poll() is None}
        out.update({(k, ps[0]): cpu_tree_seconds(ps) for k, ps in setup.extra_pids().items()})
        if sim is not None and sim.proc.poll() is None:
            out[("sim", sim.proc.pid)] = fleet.cpu_seconds(sim.proc.pid)
        return out

    def cpu_since(before):
        """CPU seconds used since `before` (cpu_now()), by name: a process started since counts
        from its start, one that ended since is left out."""
        return {k: round(v - before.get((k, pid), 0), 2) for (k, pid), v in cpu_now().items()}
    sim = None
    e0 = cpu_now()
    o = cpu_snapshot()
    t0 = time.time()
    sim = fleet.Sim([f"{BIN}/ferry-sim", "run", *target, "--agents", str(n), "--ramp", "1000",
                     "--report-ms", "100", "--backoff", str(backoff)])
    try:
        sim.wait(lambda l: l.get("enrolled") == n and l.get("in_checkin") == n, 900)
        r["all_parked_s"] = round(time.time() - t0, 1)
        r["enroll_cpu_s"] = cpu_since(e0)
        r["others_cpu_percent"] = {"enroll": others_percent(o)}
        r["all_parked_load"] = load()
        log(f"{setup.kind}: {n} parked after {r['all_parked_s']} s")

        # A quiet minute, then memory; CPU over that minute. Memory 5 s after the last agent
        # parked too, when scripts/bench-fleet.py reads it.
        setup.phase("quiet")
        pids = {k: p.pid for k, p in setup.procs.items()}
        time.sleep(5)
        held5 = setup.held()
        r["kib_per_agent_5s"] = {k: round((fleet.rss_kib(p) - base[k]) / held5[k], 1) if held5[k] else None
                                 for k, p in pids.items()}
        extra = setup.extra_pids()
        c0 = {k: fleet.cpu_seconds(p) for k, p in pids.items()}
        c0x = {k: cpu_tree_seconds(ps) for k, ps in extra.items()}
        sessions = lambda: int(setup.psql.query(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")[0][0])
        wal = lambda: int(setup.psql.query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0].split(".")[0])
        s0 = sessions() if setup.psql else None
        w0 = wal() if setup.psql else None
        q0 = time.time()
        o = cpu_snapshot()
        time.sleep(QUIET_SECONDS)
        r["others_cpu_percent"]["quiet"] = others_percent(o)
        if setup.psql:
            minutes = (time.time() - q0) / 60
            r["db_sessions_opened_per_minute"] = round((sessions() - s0) / minutes, 1)
            r["wal_bytes_per_minute"] = round((wal() - w0) / minutes)
        dt = time.time() - q0
        r["quiet_cpu_percent"] = {k: round(100 * (fleet.cpu_seconds(p) - c0[k]) / dt, 2) for k, p in pids.items()}
        r["quiet_cpu_percent"].update({k: round(100 * (cpu_tree_seconds(setup.extra_pids()[k]) - c0x[k]) / dt, 2)
                                       for k in extra})
        held = setup.held()
        rss = {k: fleet.rss_kib(p) for k, p in pids.items()}
        r["held"] = held
        r["rss_kib"] = rss
        r["base_rss_kib"] = base
        r["kib_per_agent"] = {k: round((rss[k] - base[k]) / held[k], 1) if held[k] else None for k in names}
        r["extra_pss_kib"] = {k: pss_kib(ps) for k, ps in extra.items()}
        r["extra_base_pss_kib"] = base_extra
        r["memory_load"] = load()
        if setup.sampler:
            _, _, conns, parked = setup.sampler.last()
            r["db_connections_quiet"] = conns
            r["heartbeat_parked"] = parked
            r["pg_tables"] = table_sizes(setup.psql)
        else:
            r["sqlite_bytes"] = sum(os.path.getsize(p) for p in glob.glob(os.path.join(w, "data-single", "state.db*")))
        log(f"{setup.kind}: held {held}, KiB/agent {r['kib_per_agent']}, CPU {r['quiet_cpu_percent']}")

        setup.phase("probe")
        o = cpu_snapshot()
        r["probe"] = json.loads(fleet.run(f"{BIN}/ferry-sim", "probe", *target, "--duration", "20",
                                          "--rate", "10").stdout)
        r["probe_load"] = load()
        r["others_cpu_percent"]["probe"] = others_percent(o)
        log(f"{setup.kind}: probe p99 " + ", ".join(f"{k} {r['probe'][k]['p99_ms']:.1f}" for k in ("enroll", "ack", "status")))
        time.sleep(2)

        # Policy fan-out.
        setup.phase("fanout")
        acks_before = sim.last().get("acks", 0)
        f0 = cpu_now()
        o = cpu_snapshot()
        i0 = time.time()
        cli(w, setup.admin_cfg(), "import", "dist/bench-2.ferry", "-q")
        imported = time.time()
        imported_ms = int(imported * 1000)
        r["import_s"] = round(imported - i0, 2)
        got = sim.wait(lambda l: l.get("revisions", {}).get("2", 0) >= n, 120)["epoch_ms"]
        acked = sim.wait(lambda l: l.get("acks", 0) >= acks_before + n, 120)["epoch_ms"]
        r["policy_100_received_s"] = round((got - imported_ms) / 1000, 2)
        r["policy_100_acked_s"] = round((acked - imported_ms) / 1000, 2)
        stored = None
        end = time.time() + 60
        while time.time() < end:
            # Agents the probe enrolled hold no policy revision: count the simulated ones.
            if stored_at_revision(setup, 2) >= n:
                stored = round(time.time() - imported, 2)
                break
            time.sleep(0.25)
        r["policy_100_stored_s"] = stored
        r["fanout_cpu_s"] = cpu_since(f0)
        r["others_cpu_percent"]["fanout"] = others_percent(o)
        r["fanout_load"] = load()
        log(f"{setup.kind}: import {r['import_s']} s; all received {r['policy_100_received_s']} s, "
            f"acked {r['policy_100_acked_s']} s, stored {stored} s after it")
        time.sleep(6)

        setup.phase("failover")
        k0 = cpu_now()
        o = cpu_snapshot()
        r["failover"] = setup.failover(sim)
        r["failover_cpu_s"] = cpu_since(k0)
        r["others_cpu_percent"]["failover"] = others_percent(o)
        log(f"{setup.kind}: failover {r['failover']}")
        time.sleep(2)
        if setup.sampler:
            r["db_connections_max"] = setup.sampler.max_by_phase()
            r["db_connections_max_by_instance"] = setup.sampler.max_by_instance()
            r["db_connections_end"] = setup.sampler.last()[2]
            # The tables at the end (the probe's agents too), then compacted: what the rows
            # themselves take without the row versions updates left behind.
            r["pg_tables_end"] = table_sizes(setup.psql)
            setup.psql.query("VACUUM FULL")
            r["pg_tables_vacuum_full"] = table_sizes(setup.psql)
    finally:
        sim.stop()
    return r


def fmt(v, unit=""):
    return "—" if v is None else f"{v}{unit}"


def print_table(results):
    print(f"{'setup':8} {'agents':>6} {'KiB/agent/inst':>15} {'CPU quiet % (inst)':>20} "
          f"{'enroll/ack/status p99 ms':>25} {'policy recv/ack/stored s':>25} {'failover conn/stored s':>22} "
          f"{'db conns quiet/max':>18}", flush=True)
    for r in results:
        p = r["probe"]
        names = [k for k in r["kib_per_agent"]]
        kib = "/".join(fmt(r["kib_per_agent"][k]) for k in names)
        cpu = "/".join(fmt(r["quiet_cpu_percent"][k]) for k in names)
        lat = "/".join(f"{p[k]['p99_ms']:.1f}" for k in ("enroll", "ack", "status"))
        pol = f"{r['policy_100_received_s']}/{r['policy_100_acked_s']}/{fmt(r['policy_100_stored_s'])}"
        conns = "—"
        if "db_connections_quiet" in r:
            conns = f"{sum(r['db_connections_quiet'].values())}/{max(r['db_connections_max'].values())}"
        print(f"{r['setup']:8} {r['agents']:>6} {kib:>15} {cpu:>20} {lat:>25} {pol:>25} "
              f"{fmt(r['failover']['all_back_s']) + '/' + fmt(r['failover']['stored_all_back_s']):>22} {conns:>18}",
              flush=True)


def print_loads(results):
    print("load average (1 min) when each figure was taken, and other work's CPU meanwhile (% of one core "
          "of 2): parked / memory / probe / fan-out / failover")
    for r in results:
        o = r["others_cpu_percent"]
        print(f"  {r['setup']:8} {r['all_parked_load']} / {r['memory_load']} / {r['probe_load']} / "
              f"{r['fanout_load']} / {r['failover']['load']};  others {o['enroll']} / {o['quiet']} / "
              f"{o['probe']} / {o['fanout']} / {o['failover']} %", flush=True)


def ratios(single, cluster):
    def mean(d):
        v = [x for x in d.values() if x is not None]
        return sum(v) / len(v) if v else None

    def ratio(a, b):
        return None if a is None or b in (None, 0) else round(a / b, 2)

    p99 = lambda r: max(r["probe"][k]["p99_ms"] for k in ("enroll", "ack", "status"))
    return {
        "kib_per_agent_per_instance": ratio(mean(cluster["kib_per_agent"]), mean(single["kib_per_agent"])),
        "control_p99_max": ratio(p99(cluster), p99(single)),
        "policy_100_acked": ratio(cluster["policy_100_acked_s"], single["policy_100_acked_s"]),
        "failover_all_back_connected": ratio(cluster["failover"]["all_back_s"], single["failover"]["all_back_s"]),
        "failover_all_back_stored": ratio(cluster["failover"]["stored_all_back_s"],
                                          single["failover"]["stored_all_back_s"]),
    }


def main():
    global BIN
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--setups", default="single,cluster")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="the simulator's wait after a failed check-in (stock agents: 60)")
    p.add_argument("--out", default=os.path.join(ROOT, "target", "bench-cluster.json"))
    args = p.parse_args()
    # As the other benchmarks build, on at most two jobs (the machine has two cores).
    os.environ.setdefault("CARGO_BUILD_JOBS", "2")
    BIN = fleet.build_binaries()
    maxconn = haproxy_maxconn()
    if "cluster" in args.setups and args.agents + 3 > maxconn:
        sys.exit(f"{args.agents} agents and the probe's 3 connections do not fit HAProxy's maxconn {maxconn} "
                 f"(the hard open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} allows 2 descriptors "
                 f"per connection and 28 more); at most {maxconn - 3} agents here")
    work = tempfile.mkdtemp(prefix="ferry-bench-cluster-")
    fleet.prepare(work)
    pg = Postgres(PORTS["postgres"]) if "cluster" in args.setups else None
    results = []
    try:
        if pg:
            settings = pg.settings()
            log(f"PostgreSQL {pg.bin}: {settings}")
        for kind in args.setups.split(","):
            r = measure(Setup(kind, work, args.agents, pg), args.agents, args.backoff)
            if kind == "cluster":
                r["postgres_settings"] = settings
            results.append(r)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    print_loads(results)
    by = {r["setup"]: r for r in results}
    if "single" in by and "cluster" in by:
        print("cluster/single:", json.dumps(ratios(by["single"], by["cluster"])), flush=True)


if __name__ == "__main__":
    sys.exit(main())
