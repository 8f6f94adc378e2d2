#!/usr/bin/env bash
# Builds the release binaries of the given packages and prints the folder that holds them, as
# cargo reports it: the scripts never assume target/release, so CARGO_TARGET_DIR, a configured
# build.target-dir or build.target all work. What is being built, and that the first build takes
# minutes, goes to stderr; so does cargo's own progress on a terminal.
#
#   bin=$(scripts/release-bins.sh ferry-builder ferry-appliance ferry-sim)
#   "$bin/ferry" --version
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: scripts/release-bins.sh PACKAGE..." >&2; exit 2; }

packages=()
for p in "$@"; do packages+=(-p "$p"); done
echo "== building release binaries of $* (the first build takes several minutes; later ones \
are quick)" >&2
# Off a terminal (CI, logs), cargo's Compiling lines would only add noise.
quiet=()
[ -t 2 ] || quiet=(--quiet)
# Each artifact cargo builds (or finds fresh) is a JSON line naming its executable, if any.
json=$(cargo build --release --locked "${quiet[@]}" "${packages[@]}" \
    --message-format=json-render-diagnostics)
executables=$(grep -o '"executable":"[^"]*"' <<<"$json" | sed 's/^"executable":"//; s/"$//') || true
[ -n "$executables" ] || { echo "cargo built no executable for $*" >&2; exit 2; }
case "$executables" in
*\\*) echo "cannot read cargo's paths (they hold a backslash): $executables" >&2; exit 2 ;;
esac
dirs=$(printf '%s\n' "$executables" | xargs -d '\n' -n1 dirname | sort -u)
[ "$(printf '%s\n' "$dirs" | wc -l)" = 1 ] || { echo "binaries in several folders: $dirs" >&2; exit 2; }
printf '%s\n' "$dirs"
