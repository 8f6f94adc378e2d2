#!/usr/bin/env bash
# Benchmark: `ferry build` against the three-tool pipeline it replaces, on ~2 GiB of mixed input.
#
#   ferry build                 read, hash, compress, sign in one pass (after a hashing pass)
#   pipeline                    tar -c | zstd -T2 -3, then sha256sum of every input, then minisign -S
#   zstd alone                  zstd -T2 -3 over the same input as one tar file made beforehand:
#                               the floor for this compressor
#
# Prints wall time, peak memory (max RSS) and the ratios the goals are stated in. Every tool runs
# in the same session on the same (page-cached) input, interleaved, best of ROUNDS.
#
# Needs: minisign, zstd, GNU tar, GNU time (apt-get install minisign zstd tar time).
# Usage: scripts/bench-build.sh [SIZE_MIB]   (default 2048; the input is built once and kept)
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-2048}
rounds=${ROUNDS:-3}
bench=target/bench-build
input=$bench/input-$size_mib
out=$bench/out
for tool in minisign zstd tar /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install minisign zstd tar time)" >&2; exit 2; }
done

ferry=$(scripts/release-bins.sh ferry-builder)/ferry

# Input: half already-compressed archives (random bytes, as incompressible as .tar.gz content),
# half compressible binaries (shared libraries, like agent executables), plus small text files.
if [ ! -f "$input/.complete" ]; then
    rm -rf "$input"
    mkdir -p "$input/archives" "$input/binaries" "$input/policies"
    half=$((size_mib / 2))
    n_archives=8
    for i in $(seq 1 $n_archives); do
        head -c $((half / n_archives))M /dev/urandom > "$input/archives/elastic-agent-$i.tar.gz"
    done
    # Shared libraries, cycled until the compressible half is full, cut into 64 MiB files.
    libs=$(find /usr/lib/x86_64-linux-gnu "$(rustc --print sysroot)/lib" -name '*.so*' -type f -size +100k 2>/dev/null | sort)
    (while :; do for f in $libs; do cat "$f" || exit 0; done; done) 2>/dev/null \
        | head -c $((half))M | split -b 64M -d -a 3 - "$input/binaries/agent-bin-"
    for i in $(seq 1 200); do
        printf 'id: policy-%d\nrevision: %d\noutputs:\n  default:\n    type: elasticsearch\n' "$i" "$i" \
            > "$input/policies/policy-$i.yml"
    done
    touch "$input/.complete"
fi
total=$(du -sb --exclude=.complete "$input" | cut -f1)

# The spec: every input file, with a path inside the bundle.
spec=$bench/spec.toml
{
    printf '[bundle]\nname = "bench"\nsequence = 1\n'
    (cd "$input" && find . -type f ! -name .complete | sort) | while read -r f; do
        printf '[[file]]\nsource = "%s"\nkind = "other"\npath = "%s"\n' "$PWD/$input/${f#./}" "${f#./}"
    done
} > "$spec"

rm -rf "$out" && mkdir -p "$out"
"$ferry" keygen --without-password --force --secret-key "$bench/ferry.key" --public-key "$bench/ferry.pub" >/dev/null
rm -f "$bench/minisign.key" "$bench/minisign.pub"
minisign -G -W -s "$bench/minisign.key" -p "$bench/minisign.pub" >/dev/null

# measure NAME CMD...: runs CMD under GNU time; prints "seconds max_rss_kib".
measure() {
    /usr/bin/time -f '%e %M' -o "$bench/time.txt" "$@" >/dev/null 2>"$bench/stderr.txt" \
        || { cat "$bench/stderr.txt" >&2; exit 1; }
    cat "$bench/time.txt"
}

files=$(cd "$input" && find . -type f ! -name .complete | sort)
run_ferry() { rm -f "$out"/bench-1.ferry*; measure "$ferry" build "$spec" --secret-key "$bench/ferry.key" --out "$out" --created 2026-11-01T00:00:00Z --quiet; }
run_tar_zstd() { measure bash -c "cd '$input' && tar -cf - --sort=name --exclude=.complete . | zstd -T2 -3 -q -f -o '$PWD/$out/pipeline.tar.zst'"; }
run_sha() { measure bash -c "cd '$input' && find . -type f ! -name .complete -print0 | sort -z | xargs -0 sha256sum > /dev/null"; }
run_minisign() { measure minisign -S -s "$bench/minisign.key" -m "$out/pipeline.tar.zst" -x "$out/pipeline.tar.zst.minisig"; }
run_zstd() { measure zstd -T2 -3 -q -f "$bench/input-$size_mib.tar" -o "$out/alone.zst"; }

# zstd alone reads the same bytes as one file, made once and not timed.
[ -f "$bench/input-$size_mib.tar" ] || (cd "$input" && tar -cf - --sort=name --exclude=.complete .) > "$bench/input-$size_mib.tar"
# Warm the page cache once.
cat $(cd "$input" && find "$PWD" -type f) "$bench/input-$size_mib.tar" > /dev/null

best() { sort -n | head -1; }
declare -A t m
for name in ferry tar_zstd sha minisign zstd; do t[$name]=; m[$name]=0; done
for round in $(seq 1 "$rounds"); do
    for name in ferry tar_zstd sha minisign zstd; do
        read -r secs rss < <(run_$name)
        t[$name]+="$secs"$'\n'
        [ "$rss" -gt "${m[$name]}" ] && m[$name]=$rss
        printf 'round %d %-9s %6.2f s  %7d KiB\n' "$round" "$name" "$secs" "$rss" >&2
    done
done
for name in "${!t[@]}"; do t[$name]=$(printf '%s' "${t[$name]}" | best); done
pipeline=$(echo "${t[tar_zstd]} + ${t[sha]} + ${t[minisign]}" | bc -l)
pipeline_rss=$(printf '%s\n' "${m[tar_zstd]}" "${m[sha]}" "${m[minisign]}" | sort -n | tail -1)
bundle_size=$(stat -c %s "$out/bench-1.ferry")
mib() { echo "scale=1; $1 / 1048576" | bc -l; }

echo
echo "input: $(mib "$total") MiB in $(echo "$files" | wc -l) files; bundle: $(mib "$bundle_size") MiB; best of $rounds rounds"
printf '%-34s %8s %10s %12s\n' "" "seconds" "MiB/s" "peak RSS MiB"
row() { printf '%-34s %8.2f %10.0f %12.1f\n' "$1" "$2" "$(echo "$total / 1048576 / $2" | bc -l)" "$(echo "$3 / 1024" | bc -l)"; }
row "ferry build (zstd -3, 2 workers)" "${t[ferry]}" "${m[ferry]}"
row "pipeline: tar | zstd -T2 -3" "${t[tar_zstd]}" "${m[tar_zstd]}"
row "pipeline: sha256sum" "${t[sha]}" "${m[sha]}"
row "pipeline: minisign -S" "${t[minisign]}" "${m[minisign]}"
row "pipeline total" "$pipeline" "$pipeline_rss"
row "zstd -T2 -3 alone" "${t[zstd]}" "${m[zstd]}"
echo
printf 'ferry speed-up over the pipeline:   %.2fx  (goal >= 1.2)\n' "$(echo "$pipeline / ${t[ferry]}" | bc -l)"
printf 'ferry speed as a share of zstd:     %.0f%%  (goal >= 90%%)\n' "$(echo "100 * ${t[zstd]} / ${t[ferry]}" | bc -l)"
printf 'ferry peak memory:                  %.1f MiB (goal < 64 MiB)\n' "$(echo "${m[ferry]} / 1024" | bc -l)"
