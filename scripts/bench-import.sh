#!/usr/bin/env bash
# Benchmark: `ferry-appliance import` against an unverified `zstd -dc | tar -x` of the same
# bundle. Import verifies the detached signature over the whole file, then decompresses, hashes
# and stages every entry, fsyncs, moves the blobs into place and commits; tar only unpacks.
#
# Uses the 2 GiB bundle scripts/bench-build.sh leaves in target/bench-build/out/ (built first if
# missing). Prints wall time, peak memory and the ratio the goal is stated in; best of ROUNDS.
#
# Needs: zstd, GNU tar, GNU time (apt-get install zstd tar time).
# Usage: scripts/bench-import.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
bench=target/bench-import
bundle=target/bench-build/out/bench-1.ferry
[ -f "$bundle" ] || ROUNDS=1 scripts/bench-build.sh 2048 >/dev/null
appliance=$(scripts/release-bins.sh ferry-appliance)/ferry-appliance

rm -rf "$bench" && mkdir -p "$bench"
measure() {
    /usr/bin/time -f '%e %M' -o "$bench/time.txt" "$@" >/dev/null 2>"$bench/stderr.txt" \
        || { cat "$bench/stderr.txt" >&2; exit 1; }
    cat "$bench/time.txt"
}

cat "$bundle" > /dev/null  # page cache
size=$(stat -c %s "$bundle")
best_ferry=; best_tar=; rss_ferry=0; rss_tar=0
for round in $(seq 1 "$rounds"); do
    rm -rf "$bench/data" "$bench/untar"
    cat > "$bench/appliance.toml" <<TOML
data_dir = "data"
trusted_keys = ["$PWD/target/bench-build/ferry.pub"]
public_url = "https://localhost:8220"
retain_releases = 1
TOML
    read -r secs rss < <(measure "$appliance" --config "$bench/appliance.toml" import "$bundle" --quiet)
    printf 'round %d ferry import  %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
    best_ferry=$(printf '%s\n%s\n' "$secs" "${best_ferry:-$secs}" | sort -n | head -1)
    [ "$rss" -gt "$rss_ferry" ] && rss_ferry=$rss
    mkdir -p "$bench/untar"
    read -r secs rss < <(measure bash -c "zstd -dc '$bundle' | tar -x -C '$bench/untar'")
    printf 'round %d zstd | tar -x %6.2f s %8d KiB\n' "$round" "$secs" "$rss" >&2
    best_tar=$(printf '%s\n%s\n' "$secs" "${best_tar:-$secs}" | sort -n | head -1)
    [ "$rss" -gt "$rss_tar" ] && rss_tar=$rss
done
payload=$(du -sb "$bench/untar" | cut -f1)
rm -rf "$bench/data" "$bench/untar"

echo
echo "bundle: $(echo "scale=1; $size / 1048576" | bc) MiB compressed, $(echo "scale=1; $payload / 1048576" | bc) MiB unpacked; best of $rounds rounds"
printf '%-44s %8s %12s\n' "" "seconds" "peak RSS MiB"
printf '%-44s %8.2f %12.1f\n' "ferry-appliance import (verified, fsynced)" "$best_ferry" "$(echo "$rss_ferry / 1024" | bc -l)"
printf '%-44s %8.2f %12.1f\n' "zstd -dc | tar -x (unverified)" "$best_tar" "$(echo "$rss_tar / 1024" | bc -l)"
echo
printf 'import speed as a share of unverified unpacking: %.2f (goal >= 0.8)\n' "$(echo "$best_tar / $best_ferry" | bc -l)"
printf 'import peak memory: %.1f MiB (goal < 64 MiB)\n' "$(echo "$rss_ferry / 1024" | bc -l)"
