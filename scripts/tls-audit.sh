#!/usr/bin/env bash
# TLS audit (docs/tls-audit.md): sets up an appliance the way an operator does, from
# `ferry-appliance default-config` with only the required settings filled in, imports a small
# signed bundle, starts `serve` and runs testssl.sh (Debian package `testssl.sh`) against its
# TLS listener. Fails when testssl.sh reports anything HIGH or CRITICAL (but the accepted ids
# below), when a protocol other than TLS 1.2 and TLS 1.3 is offered, or when the scan failed.
#
#   scripts/tls-audit.sh
#
# The default configuration has one TLS listener (server.listen); the mirror listener
# (server.mirror_listen, off by default) is plain HTTP and the admin API a Unix socket in the
# data directory, so there is nothing else to scan. Environment:
#   TLS_AUDIT_PORT            port of the TLS listener on 127.0.0.1 (default 18220, not the
#                             demo's 8220, so both can run at once)
#   TLS_AUDIT_CERT, _KEY, _CA serve this certificate chain and key instead of the quick-start
#                             one, trusting _CA (as agents' --certificate-authorities would)
#   TLS_AUDIT_HOST            the name in public_url and in the scanned URL (still connecting
#                             to 127.0.0.1), for a certificate that does not name 127.0.0.1
#   TLS_AUDIT_TARGET          HOST:PORT of an appliance that is already running: scan only that
#                             (with TLS_AUDIT_CA if its CA is private), build and start nothing
#   TLS_AUDIT_ACCEPT          finding ids (comma-separated) that do not fail the audit (none
#                             unless given; docs/tls-audit.md).
#
# Output: a summary on stdout; testssl.sh's JSON and log in target/tls-audit/.
set -euo pipefail
cd "$(dirname "$0")/.."

testssl=$(command -v testssl || command -v testssl.sh || true)
[ -n "$testssl" ] || { echo "testssl.sh is not installed: apt-get install testssl.sh" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to read the results" >&2; exit 2; }

out=$PWD/target/tls-audit
rm -rf "$out"
mkdir -p "$out"
step() { printf '== %s\n' "$*" >&2; }

server=
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
trap cleanup EXIT

ca=${TLS_AUDIT_CA:-}
accept=${TLS_AUDIT_ACCEPT-}
if [ -n "${TLS_AUDIT_TARGET:-}" ]; then
    target=$TLS_AUDIT_TARGET
else
    port=${TLS_AUDIT_PORT:-18220}
    host=${TLS_AUDIT_HOST:-127.0.0.1}
    target=$host:$port
    bin=$(scripts/release-bins.sh ferry-builder ferry-appliance ferry-sim)
    work=$out/work
    mkdir -p "$work"
    cd "$work"

    step "a small signed bundle: one agent version from a synthetic Elastic site, the demo policy"
    "$bin/ferry" keygen --without-password --secret-key audit.key --public-key audit.pub >/dev/null
    "$bin/ferry-sim" fake-mirror --out mirror --versions 9.2.2 --platforms linux-x86_64 >/dev/null
    policy=$(cd ../../../examples/demo/policies && pwd)/default-policy.yml
    cat > bundle.toml <<TOML
[bundle]
name = "tls-audit"
sequence = 1
valid_days = 30

[upstream]
dir = "mirror/downloads"
pgp_key = "mirror/GPG-KEY-ferry-demo"

[[agent]]
versions = ["9.2.2"]
platforms = ["linux-x86_64"]
packages = ["archive"]

[[file]]
source = "$policy"
kind = "policy"
metadata = { policy_id = "default-policy" }
TOML
    "$bin/ferry" build bundle.toml --secret-key audit.key --out dist --cache cache >/dev/null

    step "the appliance: default-config with data_dir, trusted_keys, public_url and listeners set"
    mkdir -p appliance
    cp audit.pub appliance/trusted.pub
    # Only what an operator must edit; every other setting stays as default-config prints it.
    "$bin/ferry-appliance" default-config | sed \
        -e 's|^data_dir = .*|data_dir = "data"|' \
        -e 's|^trusted_keys = .*|trusted_keys = ["trusted.pub"]|' \
        -e "s|^public_url = .*|public_url = \"https://$host:$port\"|" \
        -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
        > appliance/appliance.toml
    if [ -n "${TLS_AUDIT_CERT:-}" ]; then
        sed -i -e "s|^# tls_cert = .*|tls_cert = \"$(realpath "$TLS_AUDIT_CERT")\"|" \
            -e "s|^# tls_key = .*|tls_key = \"$(realpath "$TLS_AUDIT_KEY")\"|" appliance/appliance.toml
    fi
    "$bin/ferry-appliance" --config appliance/appliance.toml import dist/tls-audit-1.ferry >/dev/null

    step "ferry-appliance serve on https://127.0.0.1:$port"
    "$bin/ferry-appliance" --config appliance/appliance.toml serve \
        > appliance/serve.log 2> appliance/serve.err &
    server=$!
    for _ in $(seq 1 100); do
        grep -q "admin API on" appliance/serve.log 2>/dev/null && break
        kill -0 "$server" 2>/dev/null || { cat appliance/serve.err >&2; exit 1; }
        sleep 0.1
    done
    grep -q "admin API on" appliance/serve.log || { echo "serve did not start" >&2; exit 1; }
    if [ -z "${TLS_AUDIT_CERT:-}" ]; then
        ca=$work/appliance/data/tls/ca.pem
    fi
    cd - >/dev/null
fi

step "testssl.sh $("$testssl" --version 2>/dev/null | grep -o '[0-9][0-9.]*[0-9]' | head -1) against $target"
# --full adds the cipher suites per protocol (the table below) and implementation-bug probes.
# --add-ca: agents trust the appliance's CA through --certificate-authorities, so the scan
# does too; without it the chain of trust of any private CA is reported as CRITICAL.
args=(--quiet --color 0 --warnings off --full --jsonfile-pretty "$out/testssl.json"
    --logfile "$out/testssl.log")
[ -n "$ca" ] && args+=(--add-ca "$ca")
[ -n "${TLS_AUDIT_HOST:-}" ] && [ -z "${TLS_AUDIT_TARGET:-}" ] && args+=(--ip 127.0.0.1)
start=$(date +%s)
# testssl.sh's exit status counts findings and scan problems; the JSON is judged below.
# /api/status answers 200, so the HTTP header checks see a real response rather than a 404.
"$testssl" "${args[@]}" "https://$target/api/status" > /dev/null 2> "$out/testssl.err" || true
echo "scan took $(( $(date +%s) - start )) s" >&2

python3 - "$out/testssl.json" "$accept" <<'PY'
import json, re, sys

path = sys.argv[1]
accepted = {a.strip() for a in sys.argv[2].split(",") if a.strip()}
# Why each finding the appliance is known to get stands; printed next to it.
reasons = {
    "cert_revocation": "a certificate naming neither a CRL nor an OCSP responder",
    "DNS_CAArecord": "accepted: CAA binds public CAs; a private or quick-start CA ignores it",
    "HSTS": "accepted: agents are not browsers; HSTS on a quick-start 'localhost' would pin it",
    "security_headers": "browser headers; every answer carries X-Content-Type-Options",
}
try:
    doc = json.load(open(path))
except (OSError, ValueError) as e:
    print(f"FAIL: no testssl.sh results in {path}: {e}")
    sys.exit(1)

findings = []
for target in doc.get("scanResult", []):
    for section, items in target.items():
        if isinstance(items, list):
            findings += [dict(f, section=section) for f in items if isinstance(f, dict)]

order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK", "FATAL"]
counts = {s: 0 for s in order}
for f in findings:
    counts[f.get("severity", "?")] = counts.get(f.get("severity", "?"), 0) + 1

protocols = {f["id"]: f["finding"] for f in findings if f.get("section") == "protocols"
             and f["id"] in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")}
offered = [p for p, v in protocols.items() if v.startswith("offered")]
suites = []
for f in findings:
    if re.match(r"cipher-tls1(_[23])?_x", f["id"]) or re.match(r"cipher-ssl", f["id"]):
        cols = f["finding"].split()
        # "TLS 1.2  xc02c  ECDHE-ECDSA-AES256-GCM-SHA384  ECDH 256  AESGCM  256  TLS_ECDHE_…"
        suites.append((" ".join(cols[:2]), cols[-1]))

print(f"testssl.sh {doc.get('version', '?')} with {doc.get('openssl', '?')}, "
      f"target {doc['scanResult'][0].get('targetHost', '?')}:{doc['scanResult'][0].get('port', '?')}"
      if doc.get("scanResult") else "no scan result")
print("severity counts: " + ", ".join(f"{s} {counts[s]}" for s in order if counts.get(s)))
print("protocols offered: " + (", ".join(offered) or "none"))
print("cipher suites offered (strongest first; the server's order is below):")
for proto, name in suites:
    print(f"  {proto:8} {name}")
for f in findings:
    if f["id"].startswith("cipherorder_"):
        print(f"  order {f['id'][len('cipherorder_'):]}: {f['finding']}")
notable = [f for f in findings if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "FATAL")]
if notable:
    print("findings above INFO:")
    for f in sorted(notable, key=lambda f: order.index(f["severity"])):
        base = f["id"].split()[0]
        note = reasons.get(base, "") if base in accepted or f["severity"] not in ("CRITICAL", "HIGH") else ""
        print(f"  {f['severity']:8} {f['id']:22} {f['finding']}" + (f"  [{note}]" if note else ""))

problems = []
bad = [f for f in findings if f.get("severity") in ("CRITICAL", "HIGH")
       and f["id"].split()[0] not in accepted]
if bad:
    problems.append("HIGH or CRITICAL: " + ", ".join(f["id"] for f in bad))
extra = [p for p in offered if p not in ("TLS1_2", "TLS1_3")]
if extra:
    problems.append("protocols other than TLS 1.2 and 1.3 offered: " + ", ".join(extra))
if sorted(protocols) != sorted(["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"]):
    problems.append("the protocol scan is incomplete")
if not suites:
    problems.append("no cipher suites found: the scan did not reach the server")
fatal = [f for f in findings if f.get("severity") == "FATAL" or f["id"] == "scanProblem"]
if fatal:
    problems.append("testssl.sh reported a scan problem: " + "; ".join(f["finding"] for f in fatal))
if problems:
    print("FAIL: " + "; ".join(problems))
    sys.exit(1)
waived = sorted({f["id"] for f in findings if f.get("severity") in ("CRITICAL", "HIGH")} - {f["id"] for f in bad})
print("PASS: TLS 1.2 and 1.3 only; nothing HIGH or CRITICAL"
      + (f" except accepted {', '.join(waived)}" if waived else ""))
PY
echo "full results: $out/testssl.json, $out/testssl.log" >&2
