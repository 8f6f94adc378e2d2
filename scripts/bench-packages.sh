#!/usr/bin/env bash
# Benchmark: a bundle of 200 integration packages, selected from a package registry by one
# `[[integration]]` query, against a build of the same bytes as plain `[[file]]` entries (the
# build benchmark's path: hash, compress, sign).
#
#   packages, cold   an empty download cache: search, fetch 200 zips and .sigs over loopback,
#                    check each signature and manifest.yml, then build
#   packages, warm   the cache from the cold run: each package verified again, then build
#   files (peer)     the same 400 files as [[file]] entries: no fetch, no check
#
# The registry is `python3 -m http.server` over a folder in the registry's layout (it ignores the
# query string, so `/search?...` is the file `search`). Packages are zips made here, of sizes
# from 32 KiB to 30 MiB (about 850 MiB in all, like the newest of each package Elastic
# publishes), their bodies random (as incompressible as real zips), signed with a throwaway
# RSA 2048 key by the stock gpg, as Elastic signs them. Interleaved, best of ROUNDS.
#
# Needs: python3, gpg, GNU time. Usage: ROUNDS=3 scripts/bench-packages.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
bench=target/bench-packages
registry=$bench/registry
for tool in python3 gpg /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install python3 gnupg time)" >&2; exit 2; }
done
ferry=$(scripts/release-bins.sh ferry-builder)/ferry

if [ ! -f "$registry/.complete" ]; then
    rm -rf "$bench" && mkdir -p "$registry" "$bench/gnupg"
    chmod 700 "$bench/gnupg"
    gpg --homedir "$bench/gnupg" --batch --passphrase '' --quick-gen-key 'Bench <bench@example.invalid>' rsa2048 sign never 2>/dev/null
    gpg --homedir "$bench/gnupg" --armor --export > "$bench/GPG-KEY-bench"
    python3 - "$registry" <<'EOF'
import json, os, random, sys, zipfile
root = sys.argv[1]
rng = random.Random(19)
hits = []
for i in range(200):
    name, version = f"pkg_{i:03d}", "1.0.0"
    size = int(32 * 1024 * 1.035 ** i)
    folder = os.path.join(root, "epr", name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}-{version}.zip")
    with zipfile.ZipFile(path, "w") as z:
        top = f"{name}-{version}/"
        z.writestr(top + "manifest.yml", f"format_version: 3.0.0\nname: {name}\ntitle: {name}\n"
                   f"version: {version}\ndescription: bench\ntype: integration\n")
        z.writestr(top + "docs/README.md", "# bench\n")
        z.writestr(top + "kibana/dashboard/big.json", rng.randbytes(size), zipfile.ZIP_STORED)
    hits.append({"name": name, "version": version, "type": "integration",
                 "download": f"/epr/{name}/{name}-{version}.zip",
                 "signature_path": f"/epr/{name}/{name}-{version}.zip.sig"})
with open(os.path.join(root, "search"), "w") as f:
    json.dump(hits, f)
EOF
    for zip in "$registry"/epr/*/*.zip; do
        gpg --homedir "$bench/gnupg" --batch --armor --detach-sign --output "$zip.sig" "$zip"
    done
    touch "$registry/.complete"
fi
total=$(find "$registry/epr" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$registry" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/search')" 2>/dev/null && break; sleep 0.1; done

cat > "$bench/packages.toml" <<EOF
[bundle]
name = "bench"
sequence = 1
[registry]
url = "http://127.0.0.1:$port"
pgp_key = "GPG-KEY-bench"
[[integration]]
type = "integration"
all = true
EOF
{
    printf '[bundle]\nname = "bench"\nsequence = 1\n'
    for f in $(cd "$registry/epr" && find . -type f | sort); do
        printf '[[file]]\nsource = "registry/epr/%s"\nkind = "other"\npath = "packages/%s"\n' "${f#./}" "$(basename "$f")"
    done
} > "$bench/files.toml"
"$ferry" keygen --without-password --force --secret-key "$bench/ferry.key" --public-key "$bench/ferry.pub" >/dev/null

measure() {
    /usr/bin/time -f '%e %M' -o "$bench/time.txt" "$@" >/dev/null 2>"$bench/stderr.txt" \
        || { cat "$bench/stderr.txt" >&2; exit 1; }
    cat "$bench/time.txt"
}
build() {
    rm -rf "$bench/out"
    measure "$ferry" build "$bench/$1" --secret-key "$bench/ferry.key" --out "$bench/out" \
        --cache "$bench/cache" --created 2026-12-01T00:00:00Z --quiet
}
run_cold() { rm -rf "$bench/cache"; build packages.toml; }
run_warm() { build packages.toml; }
run_files() { build files.toml; }

# Warm the page cache once.
cat "$registry"/epr/*/* > /dev/null
best() { sort -n | head -1; }
declare -A t m
for name in cold warm files; do t[$name]=; m[$name]=0; done
for round in $(seq 1 "$rounds"); do
    for name in cold warm files; do
        read -r secs rss < <(run_$name)
        t[$name]+="$secs"$'\n'
        [ "$rss" -gt "${m[$name]}" ] && m[$name]=$rss
        printf 'round %d %-6s %6.2f s  %7d KiB\n' "$round" "$name" "$secs" "$rss" >&2
    done
done
for name in "${!t[@]}"; do t[$name]=$(printf '%s' "${t[$name]}" | best); done

echo
echo "200 packages, $(echo "scale=1; $total / 1048576" | bc -l) MiB of zips and signatures; best of $rounds rounds"
printf '%-44s %8s %10s %12s\n' "" "seconds" "MiB/s" "peak RSS MiB"
row() { printf '%-44s %8.2f %10.0f %12.1f\n' "$1" "$2" "$(echo "$total / 1048576 / $2" | bc -l)" "$(echo "$3 / 1024" | bc -l)"; }
row "packages, cold cache (search, fetch, verify)" "${t[cold]}" "${m[cold]}"
row "packages, warm cache (verify)" "${t[warm]}" "${m[warm]}"
row "the same files as [[file]] (peer)" "${t[files]}" "${m[files]}"
echo
printf 'warm packages against the peer:  %.2fx the speed\n' "$(echo "${t[files]} / ${t[warm]}" | bc -l)"
printf 'cold packages against the peer:  %.2fx the speed\n' "$(echo "${t[files]} / ${t[cold]}" | bc -l)"
