#!/usr/bin/env bash
# The README's main command: the whole journey on this machine, with nothing but the Rust
# toolchain. It makes a demo signing key, a synthetic Elastic download site (fake agent archives
# with real .sha512 files and PGP signatures by a throwaway key), builds and verifies a bundle
# with them and the sample policy, imports it into a local appliance, and serves it on
# https://127.0.0.1:8220 with a quick-start certificate, printing what an agent needs to enroll.
#
#   scripts/demo.sh           serve until Ctrl-C
#   scripts/demo.sh --check   enroll five simulated agents, check they got the policy, stop (CI)
#
# Everything it writes goes to target/demo/; the binaries are cargo's release build, wherever
# CARGO_TARGET_DIR puts it.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
[ "${1:-}" = "--check" ] && check=true

bin=$(scripts/release-bins.sh ferry-builder ferry-appliance ferry-sim)
work=$PWD/target/demo
rm -rf "$work"
mkdir -p "$work"
cd "$work"

step() { printf '\n== %s\n' "$*" >&2; }

step "ferry keygen (a demo key without a password; use a password for real keys)"
"$bin/ferry" keygen --without-password --secret-key demo.key --public-key demo.pub

step "a synthetic Elastic download site: agents 9.1.2 and 9.2.2, signed by a throwaway PGP key"
"$bin/ferry-sim" fake-mirror --out mirror --versions 9.1.2,9.2.2 --platforms linux-x86_64,windows-x86_64

examples=$(cd ../../examples/demo && pwd)
cat > bundle.toml <<TOML
# The demo spec: examples/demo/'s files, and agent artifacts from the synthetic site.
[bundle]
name = "demo"
sequence = 1
valid_days = 90

[upstream]
dir = "mirror/downloads"               # or: url = "https://artifacts.elastic.co/downloads/"
pgp_key = "mirror/GPG-KEY-ferry-demo"  # for Elastic: GPG-KEY-elasticsearch

[[agent]]
versions = ["9.1.2", "9.2.2"]
platforms = ["linux-x86_64", "windows-x86_64"]
packages = ["archive"]

[[file]]
source = "$examples/policies/default-policy.yml"
kind = "policy"
metadata = { policy_id = "default-policy" }

[[file]]
source = "$examples/certificates/demo-ca.pem"
kind = "certificate"

[[file]]
source = "$examples/README.txt"
kind = "other"
path = "docs/README.txt"
TOML

step "ferry build (fetches each archive with its .sha512 and .asc, checks both, signs the bundle)"
"$bin/ferry" build bundle.toml --secret-key demo.key --out dist --cache cache

step "ferry verify"
"$bin/ferry" verify dist/demo-1.ferry --public-key demo.pub

if command -v minisign >/dev/null; then
    step "minisign -V (the stock tool checks the same detached signature)"
    minisign -Vm dist/demo-1.ferry -p demo.pub
fi

step "ferry inspect"
"$bin/ferry" inspect dist/demo-1.ferry

step "ferry-appliance import (into target/demo/appliance, trusting only the demo key)"
mkdir -p appliance
cp demo.pub appliance/trusted.pub
cat > appliance/appliance.toml <<TOML
data_dir = "data"
trusted_keys = ["trusted.pub"]
public_url = "https://127.0.0.1:8220"
[server]
listen = "127.0.0.1:8220"
TOML
appliance() { "$bin/ferry-appliance" --config appliance/appliance.toml "$@"; }
appliance import dist/demo-1.ferry
appliance releases
appliance fsck

step "ferry-appliance serve (https://127.0.0.1:8220, quick-start certificate)"
# The binary itself in the background (not the shell function), so $! is the server's pid.
"$bin/ferry-appliance" --config appliance/appliance.toml serve > appliance/serve.log 2> appliance/serve.err &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "admin API on" appliance/serve.log 2>/dev/null && break
    kill -0 $server 2>/dev/null || { cat appliance/serve.err >&2; exit 1; }
    sleep 0.1
done
token=$(appliance tokens create --policy default-policy --name demo 2>/dev/null)
ca=$work/appliance/data/tls/ca.pem

cat <<EOF

The appliance serves the demo bundle on https://127.0.0.1:8220.

  enrollment token:  $token
  CA certificate:    $ca

A real Elastic Agent on this machine would enroll with:

  sudo elastic-agent install --url=https://127.0.0.1:8220 --enrollment-token=$token \\
      --certificate-authorities=$ca

Five simulated agents (each request shaped as elastic-agent 9.1.2's Go code sends it) enroll
with the same flags, take the policy and park with:

  $bin/ferry-sim run --url=https://127.0.0.1:8220 --enrollment-token=$token \\
      --certificate-authorities=$ca --agents 5

Then, in another terminal:

  $bin/ferry-appliance --config $work/appliance/appliance.toml agents list
  $bin/ferry-appliance --config $work/appliance/appliance.toml upgrade --version 9.2.2 --policy default-policy
EOF

if $check; then
    step "check: five simulated agents enroll and receive policy revision 1"
    last=$("$bin/ferry-sim" run --url=https://127.0.0.1:8220 --enrollment-token="$token" \
        --certificate-authorities="$ca" --agents 5 --report-ms 500 --duration 4 | tail -1)
    echo "$last"
    echo "$last" | grep -q '"enrolled":5' && echo "$last" | grep -q '"revisions":{"1":5}' || {
        echo "demo check failed: $last" >&2
        exit 1
    }
    appliance agents list
    exit 0
fi

printf '\nServing until Ctrl-C (log: %s/appliance/serve.err).\n' "$work"
wait $server
