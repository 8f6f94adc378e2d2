#!/usr/bin/env bash
# The dashboard's screenshots in docs/images/: the demo appliance (scripts/demo.sh, serving)
# with simulated agents (ferry-sim) and an upgrade that most of them carry out (three of their
# hosts are switched off first), then headless Chromium loads each page through a forwarder to
# the admin socket, as an operator's browser does through `ssh -L`, and saves it as
# docs/images/dashboard-PAGE.png.
#
#   scripts/dashboard-screenshots.sh
#
# Needs chromium (Debian's package) and python3 (the forwarder); pngquant, when installed,
# makes the pictures a third the size. Writes target/demo/ (the demo's folder) and
# docs/images/dashboard-*.png; stops the demo when done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "needs python3 (the socket forwarder)" >&2; exit 2; }

bin=$(scripts/release-bins.sh ferry-builder ferry-appliance ferry-sim)
work=$root/target/demo
scratch=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT

echo "== the demo appliance (scripts/demo.sh), serving" >&2
scripts/demo.sh > "$scratch/demo.out" 2> "$scratch/demo.err" &
pids+=($!)
for _ in $(seq 1 600); do
    grep -q "Serving until Ctrl-C" "$scratch/demo.out" 2>/dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$scratch/demo.err" >&2; exit 1; }
    sleep 0.5
done
grep -q "Serving until Ctrl-C" "$scratch/demo.out" || { echo "the demo did not start" >&2; exit 1; }
token=$(awk '/enrollment token:/ { print $3 }' "$scratch/demo.out")
ca=$work/appliance/data/tls/ca.pem
appliance() { "$bin/ferry-appliance" --config "$work/appliance/appliance.toml" "$@"; }

echo "== a second bundle, so that the first one is retained" >&2
(
    cd "$work"
    sed 's/^sequence = 1$/sequence = 2/' bundle.toml > bundle-2.toml
    "$bin/ferry" build bundle-2.toml --secret-key demo.key --out dist --cache cache > /dev/null
    # From the demo's folder, as demo.sh imports: the audit log records the path given.
    appliance import dist/demo-2.ferry > /dev/null
)
for _ in $(seq 1 100); do
    appliance status --json | grep -q '"sequence": *2' && break
    sleep 0.2
done

echo "== simulated agents: 8 at 9.1.2, 4 at 9.2.2" >&2
sim() {
    "$bin/ferry-sim" run --url=https://127.0.0.1:8220 --enrollment-token="$token" \
        --certificate-authorities="$ca" --report-ms 60000 "$@" > /dev/null &
    pids+=($!)
}
online() { appliance agents list --json | grep -c '"status": *"online"' || true; }
sim --agents 5 --version 9.1.2
sim --agents 3 --version 9.1.2
switched_off=$!
sim --agents 4 --version 9.2.2
for _ in $(seq 1 120); do [ "$(online)" -ge 12 ] && break; sleep 0.5; done

echo "== three hosts switched off, then every 9.1.2 agent upgraded to 9.2.2" >&2
kill "$switched_off"
ids=$(appliance agents list --json | python3 -c '
import json, sys
print(" ".join(a["id"] for a in json.load(sys.stdin) if a["version"] == "9.1.2"))')
# shellcheck disable=SC2086 # one argument per agent id
appliance upgrade --version 9.2.2 $ids
for _ in $(seq 1 120); do
    [ "$(appliance agents list --json | grep -c '"version": *"9.2.2"' || true)" -ge 9 ] && break
    sleep 0.5
done
echo "== a second upgrade for the switched-off hosts, scheduled, then cancelled" >&2
off=$(appliance agents list --json | python3 -c '
import json, sys
print(" ".join(a["id"] for a in json.load(sys.stdin) if a["version"] == "9.1.2"))')
tomorrow=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# shellcheck disable=SC2086
scheduled=$(appliance upgrade --version 9.2.2 --start-time "$tomorrow" $off --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["action_id"])')
appliance actions cancel "$scheduled" > /dev/null
sleep 2

echo "== the admin socket on a TCP port (what ssh -L does), and Chromium" >&2
port_file=$scratch/port
python3 - "$work/appliance/data/admin.sock" "$port_file" <<'PY' &
import socket, sys, threading
path, port_file = sys.argv[1], sys.argv[2]
server = socket.create_server(("127.0.0.1", 0))
open(port_file, "w").write(str(server.getsockname()[1]))
def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
while True:
    tcp, _ = server.accept()
    unix = socket.socket(socket.AF_UNIX)
    unix.connect(path)
    threading.Thread(target=pipe, args=(tcp, unix), daemon=True).start()
    threading.Thread(target=pipe, args=(unix, tcp), daemon=True).start()
PY
pids+=($!)
for _ in $(seq 1 50); do [ -s "$port_file" ] && break; sleep 0.1; done
port=$(cat "$port_file")
admin_token=$(cat "$work/appliance/data/admin.token")

mkdir -p docs/images
for page in overview agents releases upgrades audit; do
    path=/$page
    [ "$page" = overview ] && path=/
    out=$root/docs/images/dashboard-$page.png
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --user-data-dir="$scratch/chromium" --window-size=1280,900 --screenshot="$out" \
        "http://ferry:$admin_token@127.0.0.1:$port$path" 2> "$scratch/chromium.err" ||
        { cat "$scratch/chromium.err" >&2; exit 1; }
    # 256 colours are plenty for flat pages: a third of the size, no visible difference.
    if command -v pngquant >/dev/null; then
        pngquant --quality=70-95 --speed 1 --strip --force --output "$out" "$out"
    fi
    echo "$out: $(stat -c %s "$out") bytes" >&2
done
