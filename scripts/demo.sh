#!/usr/bin/env bash
# The README's main command: build ferry, make a demo signing key, build the sample bundle from
# examples/demo/, verify it (with ferry and, when installed, the stock minisign), inspect it, then
# import it into a local appliance data directory and check it there.
# Everything it writes goes to target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet -p ferry-builder -p ferry-appliance
ferry=target/release/ferry
appliance=target/release/ferry-appliance
work=target/demo
rm -rf "$work"
mkdir -p "$work"

step() { printf '\n== %s\n' "$*" >&2; }

step "ferry keygen (a demo key without a password; use a password for real keys)"
"$ferry" keygen --without-password --secret-key "$work/demo.key" --public-key "$work/demo.pub"

step "ferry build examples/demo/bundle.toml"
"$ferry" build examples/demo/bundle.toml --secret-key "$work/demo.key" --out "$work/dist"

step "ferry verify"
"$ferry" verify "$work/dist/demo-1.ferry" --public-key "$work/demo.pub"

if command -v minisign >/dev/null; then
    step "minisign -V (the stock tool checks the same detached signature)"
    minisign -Vm "$work/dist/demo-1.ferry" -p "$work/demo.pub"
fi

step "ferry inspect"
"$ferry" inspect "$work/dist/demo-1.ferry"

step "ferry-appliance import (into target/demo/appliance, trusting only the demo key)"
mkdir -p "$work/appliance"
cp "$work/demo.pub" "$work/appliance/trusted.pub"
cat > "$work/appliance/appliance.toml" <<TOML
data_dir = "data"
trusted_keys = ["trusted.pub"]
public_url = "https://localhost:8220"
[server]
listen = "127.0.0.1:8220"
TOML
"$appliance" --config "$work/appliance/appliance.toml" import "$work/dist/demo-1.ferry"
"$appliance" --config "$work/appliance/appliance.toml" releases
"$appliance" --config "$work/appliance/appliance.toml" fsck

step "done: serve it with: $appliance --config $work/appliance/appliance.toml serve"
