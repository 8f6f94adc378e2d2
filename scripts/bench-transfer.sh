#!/usr/bin/env bash
# Benchmark: getting a bundle across the gap (docs/transfer.md), on the 2 GiB input of
# scripts/bench-build.sh, each figure against its peer in the same run, interleaved, best of
# ROUNDS:
#
#   delta   only one of the 200 policies changed: `ferry build --base` of the earlier bundle
#           against a full rebuild of the same spec. Goals: delta under 1 MiB, built under 2 s.
#   parts   `ferry build --part-size 256MiB --parity 2` against a plain build (goal: >= 0.8x its
#           speed), and `ferry-appliance import` of the parts index with two parts deleted
#           against a plain import of the bundle (goal: >= 0.7x its speed); peak memory of both
#           under 64 MiB.
#
# Prints each figure with its goal and exits 1 if any goal is missed, so a regression shows.
# Needs: GNU time, bc (apt-get install time bc).
# Usage: scripts/bench-transfer.sh [delta|parts|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
rounds=${ROUNDS:-3}
part_size=${PART_SIZE:-256MiB}
build_dir=target/bench-build
bench=target/bench-transfer
for tool in /usr/bin/time bc; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install time bc)" >&2; exit 2; }
done
# The input, its spec and key, and the full bundle of sequence 1 (built once, ~5 minutes).
[ -f "$build_dir/out/bench-1.ferry" ] || ROUNDS=1 scripts/bench-build.sh 2048 >/dev/null
bins=$(scripts/release-bins.sh ferry-builder ferry-appliance)
ferry=$bins/ferry
appliance=$bins/ferry-appliance
key=$build_dir/ferry.key
base=$build_dir/out/bench-1.ferry

rm -rf "$bench" && mkdir -p "$bench"
# Every timed command starts with its inputs in the page cache. Dropping the cache between
# commands was tried and made things worse on this VM: there, touching memory the guest has not
# used lately costs ~5 s per GB of kernel time (a 1.4 GB bytearray in Python: 7.5 s of sys),
# and a command that writes more (the parts) pays more for it.
inputs=()
warm() { cat "${inputs[@]}" > /dev/null; }
measure() {
    warm
    /usr/bin/time -f '%e %M' -o "$bench/time.txt" "$@" >/dev/null 2>"$bench/stderr.txt" \
        || { cat "$bench/stderr.txt" >&2; exit 1; }
    cat "$bench/time.txt"
}
best() { sort -n | head -1; }
missed=0
# goal NAME MET(0/1) TEXT
goal() {
    if [ "$2" = 1 ]; then printf '%-52s %s  met\n' "$1" "$3"; else printf '%-52s %s  MISSED\n' "$1" "$3"; missed=1; fi
}
mapfile -t inputs < <(find "$build_dir/input-2048" -type f; echo "$base")

if [ "$what" = delta ] || [ "$what" = all ]; then
    # Sequence 2 of the same spec, one policy changed.
    changed=$bench/policy-1.yml
    printf 'id: policy-1\nrevision: 2\noutputs:\n  default:\n    type: elasticsearch\n' > "$changed"
    sed -e 's/^sequence = 1$/sequence = 2/' \
        -e "s|source = \"[^\"]*/policies/policy-1.yml\"|source = \"$PWD/$changed\"|" \
        "$build_dir/spec.toml" > "$bench/spec-2.toml"
    grep -q "$changed" "$bench/spec-2.toml" || { echo "the spec has no policy-1.yml to change" >&2; exit 2; }
    full_t=; delta_t=; full_m=0; delta_m=0
    for round in $(seq 1 "$rounds"); do
        rm -rf "$bench/full" "$bench/delta"
        read -r secs rss < <(measure "$ferry" build "$bench/spec-2.toml" --secret-key "$key" --out "$bench/full" --quiet)
        printf 'round %d full rebuild %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
        full_t+="$secs"$'\n'; [ "$rss" -gt "$full_m" ] && full_m=$rss
        read -r secs rss < <(measure "$ferry" build "$bench/spec-2.toml" --base "$base" --secret-key "$key" --out "$bench/delta" --quiet)
        printf 'round %d delta        %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
        delta_t+="$secs"$'\n'; [ "$rss" -gt "$delta_m" ] && delta_m=$rss
    done
    full_t=$(printf '%s' "$full_t" | best); delta_t=$(printf '%s' "$delta_t" | best)
    full_size=$(stat -c %s "$bench/full/bench-2.ferry"); delta_size=$(stat -c %s "$bench/delta/bench-2.ferry")
    echo
    echo "delta: one policy of 200 changed in a 2 GiB release; best of $rounds"
    printf '%-24s %10s %14s %12s\n' "" "seconds" "bundle bytes" "peak RSS MiB"
    printf '%-24s %10.2f %14d %12.1f\n' "full rebuild" "$full_t" "$full_size" "$(echo "$full_m / 1024" | bc -l)"
    printf '%-24s %10.2f %14d %12.1f\n' "delta (--base bundle)" "$delta_t" "$delta_size" "$(echo "$delta_m / 1024" | bc -l)"
    "$ferry" inspect "$bench/delta/bench-2.ferry" | grep '^delta' || true
    goal "delta size under 1 MiB" "$(echo "$delta_size < 1048576" | bc)" "$delta_size bytes"
    goal "delta build under 2 s" "$(echo "$delta_t < 2" | bc)" "${delta_t} s"
fi

if [ "$what" = parts ] || [ "$what" = all ]; then
    plain_t=; parts_t=; plain_m=0; parts_m=0
    for round in $(seq 1 "$rounds"); do
        rm -rf "$bench/plain" "$bench/parts"
        read -r secs rss < <(measure "$ferry" build "$build_dir/spec.toml" --secret-key "$key" --out "$bench/plain" --created 2026-11-01T00:00:00Z --quiet)
        printf 'round %d plain build  %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
        plain_t+="$secs"$'\n'; [ "$rss" -gt "$plain_m" ] && plain_m=$rss
        read -r secs rss < <(measure "$ferry" build "$build_dir/spec.toml" --part-size "$part_size" --parity 2 --secret-key "$key" --out "$bench/parts" --created 2026-11-01T00:00:00Z --quiet)
        printf 'round %d parts build  %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
        parts_t+="$secs"$'\n'; [ "$rss" -gt "$parts_m" ] && parts_m=$rss
    done
    plain_t=$(printf '%s' "$plain_t" | best); parts_t=$(printf '%s' "$parts_t" | best)
    index=$bench/parts/bench-1.ferry.parts
    count=$(ls "$bench"/parts/bench-1.ferry.part[0-9]* | wc -l)

    # Import: the plain bundle against the index with two parts deleted (the second and the
    # second-to-last data part, so two data parts must be rebuilt).
    cat > "$bench/appliance.toml" <<TOML
data_dir = "data"
trusted_keys = ["$PWD/$build_dir/ferry.pub"]
public_url = "https://localhost:8220"
retain_releases = 1
TOML
    plain_i=; parts_i=; plain_im=0; parts_im=0
    for round in $(seq 1 "$rounds"); do
        rm -rf "$bench/data"
        inputs=("$bench/plain/bench-1.ferry" "$bench/plain/bench-1.ferry.minisig")
        read -r secs rss < <(measure "$appliance" --config "$bench/appliance.toml" import "$bench/plain/bench-1.ferry" --quiet)
        printf 'round %d plain import %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
        plain_i+="$secs"$'\n'; [ "$rss" -gt "$plain_im" ] && plain_im=$rss
        rm -rf "$bench/data" "$bench/arrived" && mkdir -p "$bench/arrived"
        cp "$bench"/parts/bench-1.ferry.part* "$bench/arrived/"
        cp "$index" "$index.minisig" "$bench/arrived/"
        data_parts=$(grep -c '^[0-9a-f]\{64\}  ' "$index")
        data_parts=$((data_parts - 2))
        rm -f "$bench/arrived/bench-1.ferry.part$(printf '%03d' 2)" "$bench/arrived/bench-1.ferry.part$(printf '%03d' $((data_parts - 1)))"
        inputs=("$bench"/arrived/*)
        read -r secs rss < <(measure "$appliance" --config "$bench/appliance.toml" import "$bench/arrived/bench-1.ferry.parts" --quiet)
        printf 'round %d parts import %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
        parts_i+="$secs"$'\n'; [ "$rss" -gt "$parts_im" ] && parts_im=$rss
    done
    plain_i=$(printf '%s' "$plain_i" | best); parts_i=$(printf '%s' "$parts_i" | best)
    rm -rf "$bench/data" "$bench/arrived"
    echo
    echo "parts: --part-size $part_size --parity 2 ($count parts) over the 2 GiB input; best of $rounds"
    printf '%-36s %10s %12s\n' "" "seconds" "peak RSS MiB"
    printf '%-36s %10.2f %12.1f\n' "plain build" "$plain_t" "$(echo "$plain_m / 1024" | bc -l)"
    printf '%-36s %10.2f %12.1f\n' "build with parts and parity" "$parts_t" "$(echo "$parts_m / 1024" | bc -l)"
    printf '%-36s %10.2f %12.1f\n' "plain import" "$plain_i" "$(echo "$plain_im / 1024" | bc -l)"
    printf '%-36s %10.2f %12.1f\n' "import from parts, two deleted" "$parts_i" "$(echo "$parts_im / 1024" | bc -l)"
    build_ratio=$(echo "$plain_t / $parts_t" | bc -l); import_ratio=$(echo "$plain_i / $parts_i" | bc -l)
    goal "build with parts: speed against a plain build" "$(echo "$build_ratio >= 0.8" | bc)" "$(printf '%.2fx (goal >= 0.8)' "$build_ratio")"
    goal "import from parts: speed against a plain import" "$(echo "$import_ratio >= 0.7" | bc)" "$(printf '%.2fx (goal >= 0.7)' "$import_ratio")"
    peak=$(printf '%s\n' "$parts_m" "$parts_im" | sort -n | tail -1)
    goal "peak memory with parts" "$(echo "$peak < 65536" | bc)" "$(printf '%.1f MiB (goal < 64)' "$(echo "$peak / 1024" | bc -l)")"
fi
exit "$missed"
