#!/usr/bin/env bash
# The README's main command: build ferry, make a demo signing key, build the sample bundle from
# examples/demo/, verify it (with ferry and, when installed, the stock minisign) and inspect it.
# Everything it writes goes to target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet -p ferry-builder
ferry=target/release/ferry
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
