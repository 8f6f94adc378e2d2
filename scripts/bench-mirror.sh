#!/usr/bin/env bash
# Benchmark: the appliance's download mirror against nginx, serving the same 512 MiB agent archive.
#
#   nginx                       worker_processes 2, sendfile on, access log off; plain HTTP and
#                               TLS 1.2/1.3 with the appliance's own quick-start certificate
#   ferry-appliance serve       the archive imported from a real bundle (ferry build + import),
#                               plain HTTP on mirror_listen, TLS (rustls) on listen
#
# Load: wrk with 1, 8 and 64 connections, each downloading the file over and over (keep-alive)
# for SECONDS_PER_CELL seconds; bytes received (whole and partial responses) count. Both servers
# serve one file: nginx's document root holds a hard link to the appliance's blob. Cells are
# interleaved (nginx, ferry, nginx, ferry...), best of ROUNDS: the highest MB/s and the lowest
# CPU s/GB over the rounds, each on its own.
#
# CPU: the server's own is utime+stime from /proc/PID/stat before and after each cell, summed
# over nginx's master and workers (the appliance is one process); the machine's is every core's
# busy time from /proc/stat, client included. The client shares the box, and where the kernel
# does a connection's TCP work depends on the network between them (NET):
#
#   veth      (the default as root) the client in its own network namespace, behind a veth pair
#             whose ends each receive in a threaded NAPI kernel thread (GRO on, TSO off, MTU
#             65000), as two hosts' NICs receive in their softirqs. The client's TCP input runs
#             in its side's thread; the server side's thread takes the client's ACKs and sends
#             what they make room for. How that sending splits between the server's own
#             `sendfile` calls and its receive thread shifts from cell to cell (nginx at one
#             download, two cells of one check: own 0.118 and 0.226 s/GB, receive thread 0.173
#             and 0.106, together 0.291 and 0.333), so the goal is "host": the server plus its
#             side's receive thread, what the server's machine would spend with the client on
#             another host. Needs ip and ethtool (ethtool installed if missing).
#   loopback  (the default otherwise) 127.0.0.1: sending a segment also runs the receiving
#             socket's TCP input in the sender's context, so each server's own figure carries
#             part of the client's work, and which part depends on timing. The goal is the
#             server's own figure, with that caveat; the machine ratio is printed beside it.
#
# Needs: nginx, wrk, curl, openssl, bc (apt-get install nginx wrk curl openssl bc; the script
# installs nginx, wrk and, for NET=veth, ethtool itself if missing and it runs as root).
# Usage: scripts/bench-mirror.sh    (exits 1, naming the cells, when ferry's CPU per GB, host or
#   own as above, is above nginx's)
#   SIZE_MIB=512 SECONDS_PER_CELL=8 ROUNDS=2 NET=veth|loopback   (defaults as above; the input
#   is built once per size and kept in target/bench-mirror/)
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${SIZE_MIB:-512}
secs=${SECONDS_PER_CELL:-8}
rounds=${ROUNDS:-2}
net=${NET:-$([ "$(id -u)" = 0 ] && echo veth || echo loopback)}
case $net in loopback | veth) ;; *) echo "NET must be loopback or veth, not $net" >&2; exit 2 ;; esac
concurrencies=${CONCURRENCY:-"1 8 64"}
bench=$PWD/target/bench-mirror
name=elastic-agent-9.9.9-linux-x86_64.tar.gz
url_path=/downloads/beats/elastic-agent/$name

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if [ "$net" = veth ]; then
    [ "$(id -u)" = 0 ] || { echo "NET=veth makes a network namespace: run as root" >&2; exit 2; }
    command -v ethtool >/dev/null || [ -x /usr/sbin/ethtool ] || missing+=(ethtool)
fi
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "missing ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 2; }
    # Keep the package's own nginx service (port 80, every address) from starting on install.
    guard=
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
fi
PATH=$PATH:/usr/sbin
for tool in curl openssl bc ss; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install curl openssl bc iproute2)" >&2; exit 2; }
done

bin=$(scripts/release-bins.sh ferry-builder ferry-appliance)
ferry=$bin/ferry
appliance=$bin/ferry-appliance

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Where the servers listen and how the client reaches them.
host=127.0.0.1 client=()
if [ "$net" = veth ]; then
    ns=ferry-bench-$$ link=fbench$$
    host=10.231.0.1 client=(ip netns exec "$ns")
    cleanup_net() { ip netns del "$ns" 2>/dev/null || true; ip link del "$link" 2>/dev/null || true; }
    trap 'cleanup; cleanup_net' EXIT
    ip netns add "$ns"
    ip link add "$link" type veth peer name client netns "$ns"
    ip addr add "$host/30" dev "$link"
    ip netns exec "$ns" ip addr add 10.231.0.2/30 dev client
    # veth receives through NAPI only with GRO on and for segments it need not split (no TSO);
    # MTU 65000 keeps the segments as large as TSO's. Threaded, each end's receive work runs in
    # its own kernel thread, napi/<device>-<id>.
    for side in "" "ip netns exec $ns"; do
        dev=$([ -z "$side" ] && echo "$link" || echo client)
        $side ip link set "$dev" mtu 65000 up
        $side ethtool -K "$dev" gro on tso off >/dev/null
        $side sh -c "echo 1 > /sys/class/net/$dev/threaded"
    done
    ip netns exec "$ns" ip link set lo up
    server_rx=$(pgrep -x "napi/$link-[0-9]*" | head -1)
    [ -n "$server_rx" ] || { echo "no NAPI thread for $link: this kernel cannot thread veth's NAPI" >&2; exit 2; }
fi

# The input: one random (incompressible, like a .tar.gz) file, in nginx's document root at the
# mirror path, and a bundle carrying it.
www=$bench/www-$size_mib
input=$www$url_path
write_config() {
    printf 'data_dir = "data"\ntrusted_keys = ["%s"]\npublic_url = "https://localhost:8220"\n[server]\nlisten = "%s:0"\nmirror_listen = "%s:0"\n' \
        "$bench/ferry.pub" "$host" "$host" > "$bench/app/appliance.toml"
}
if [ ! -f "$bench/.complete-$size_mib" ]; then
    rm -rf "$www" "$bench/app" "$bench/bundles" && mkdir -p "$(dirname "$input")" "$bench/app" "$bench/bundles"
    head -c "${size_mib}M" /dev/urandom > "$input"
    "$ferry" keygen --without-password --force --secret-key "$bench/ferry.key" --public-key "$bench/ferry.pub" >/dev/null
    printf '[bundle]\nname = "bench"\nsequence = 1\n[[file]]\nsource = "%s"\nkind = "other"\npath = "%s"\n' \
        "$input" "${url_path#/}" > "$bench/spec.toml"
    "$ferry" build "$bench/spec.toml" --secret-key "$bench/ferry.key" --out "$bench/bundles" --quiet >/dev/null
    write_config
    "$appliance" --config "$bench/app/appliance.toml" import "$bench/bundles/bench-1.ferry" >/dev/null
    # nginx serves the appliance's own blob (a hard link): the same file, the same page cache.
    sum=$(sha256sum "$input" | cut -d' ' -f1)
    ln -f "$bench/app/data/blobs/sha256/${sum:0:2}/${sum:2}" "$input"
    rm -f "$bench"/.complete-* && touch "$bench/.complete-$size_mib"
fi
write_config
size=$(stat -c %s "$input")

# The appliance, on ports it picks; its quick-start certificate is made on first start.
"$appliance" --config "$bench/app/appliance.toml" serve > "$bench/app/serve.out" 2> "$bench/app/serve.err" &
app_pid=$!
pids+=("$app_pid")
for _ in $(seq 1 100); do
    grep -q 'serving the mirror on' "$bench/app/serve.out" 2>/dev/null && break
    kill -0 "$app_pid" 2>/dev/null || { cat "$bench/app/serve.err" >&2; exit 1; }
    sleep 0.1
done
ferry_tls=$(sed -n 's|^serving https://\([^ ]*\) .*|\1|p' "$bench/app/serve.out")
ferry_plain=$(sed -n 's|^serving the mirror on http://\(.*\)$|\1|p' "$bench/app/serve.out")
[ -n "$ferry_tls" ] && [ -n "$ferry_plain" ] || { echo "appliance did not start:" >&2; cat "$bench/app/serve.out" "$bench/app/serve.err" >&2; exit 1; }
tls_dir=$bench/app/data/tls

# nginx, on two free ports.
used=$(ss -Htan | awk '{print $4}' | sed 's/.*://')
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        grep -qx "$p" <<< "$used" || { used+=$'\n'$p; echo "$p"; return; }
    done
}
nginx_plain=$host:$(free_port)
nginx_tls=$host:$(free_port)
ngx=$bench/nginx
rm -rf "$ngx" && mkdir -p "$ngx/tmp"
cat > "$ngx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $ngx/tmp/body;
    proxy_temp_path $ngx/tmp/proxy;
    default_type application/octet-stream;
    server {
        listen $nginx_plain;
        root $www;
    }
    server {
        listen $nginx_tls ssl;
        ssl_certificate $tls_dir/server.pem;
        ssl_certificate_key $tls_dir/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $www;
    }
}
EOF
nginx -e "$ngx/error.log" -p "$ngx" -c "$ngx/nginx.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 1 50); do
    [ "$(pgrep -c -P "$nginx_pid" || true)" -ge 2 ] && "${client[@]}" curl -sf -o /dev/null -r 0-0 "http://$nginx_plain$url_path" && break
    kill -0 "$nginx_pid" 2>/dev/null || { cat "$ngx/error.log" >&2; exit 1; }
    sleep 0.1
done

url() { # url SERVER MODE
    case $1-$2 in
        nginx-plain) echo "http://$nginx_plain$url_path" ;;
        nginx-tls) echo "https://$nginx_tls$url_path" ;;
        ferry-plain) echo "http://$ferry_plain$url_path" ;;
        ferry-tls) echo "https://$ferry_tls$url_path" ;;
    esac
}
server_pids() { # server_pids SERVER: the server's processes (nginx: master and workers)
    case $1 in
        nginx) echo "$nginx_pid" $(pgrep -P "$nginx_pid") ;;
        ferry) echo "$app_pid" ;;
    esac
}
clk_tck=$(getconf CLK_TCK)
machine_ticks() { # busy time of every core (user, nice, system, irq, softirq), in clock ticks
    local _cpu user nice system _idle _iowait irq softirq _rest
    read -r _cpu user nice system _idle _iowait irq softirq _rest < /proc/stat
    echo $((user + nice + system + irq + softirq))
}
cpu_ticks() { # utime+stime of the processes given, in clock ticks
    local total=0 pid f
    for pid in "$@"; do
        read -ra f < <(sed 's/.*) //' "/proc/$pid/stat")
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Every endpoint serves the whole file, status 200, before anything is measured; this also
# warms the page cache for the one file both serve.
for server in nginx ferry; do
    for mode in plain tls; do
        read -r code got < <("${client[@]}" curl -sk -o /dev/null -w '%{http_code} %{size_download}\n' "$(url $server $mode)")
        [ "$code" = 200 ] && [ "$got" = "$size" ] || { echo "$server $mode: HTTP $code, $got of $size bytes" >&2; exit 1; }
    done
done
tls_params() { openssl s_client -connect "$1" -servername localhost </dev/null 2>/dev/null | sed -n 's/^New, \(.*\), Cipher is \(.*\)$/\1 \2/p'; }
echo "TLS negotiated with OpenSSL's client: nginx $(tls_params "$nginx_tls"); ferry $(tls_params "$ferry_tls")" >&2

# wrk reports exact totals through this script.
cat > "$bench/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d %d %d %d\n", summary.bytes, summary.duration,
        summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

# cell SERVER MODE CONCURRENCY: sets cell_mbs, cell_cpu (the server's CPU s/GB), cell_host
# (the same plus the server side's receive thread, NET=veth) and cell_machine (the machine's
# CPU s/GB).
problems=()
cell() {
    local threads=$(( $3 < 2 ? $3 : 2 )) pids_now before after rx_before=0 rx_after=0 machine_before machine_after out bytes dur reqs ec er ew es et
    pids_now=$(server_pids "$1")
    before=$(cpu_ticks $pids_now)
    [ "$net" = loopback ] || rx_before=$(cpu_ticks "$server_rx")
    machine_before=$(machine_ticks)
    out=$("${client[@]}" wrk -t "$threads" -c "$3" -d "${secs}s" --timeout 600s -s "$bench/report.lua" "$(url "$1" "$2")" 2>&1) \
        || { echo "$out" >&2; exit 1; }
    sleep 0.2
    after=$(cpu_ticks $pids_now)
    [ "$net" = loopback ] || rx_after=$(cpu_ticks "$server_rx")
    machine_after=$(machine_ticks)
    read -r bytes dur reqs ec er ew es et < <(grep '^RESULT' <<< "$out" | cut -d' ' -f2-)
    [ $((ec + er + ew + es + et)) -eq 0 ] \
        || problems+=("$1 $2 c=$3: errors connect $ec, read $er, write $ew, non-2xx/3xx $es, timeout $et")
    cell_mbs=$(echo "$bytes / $dur" | bc -l)
    cell_cpu=$(echo "($after - $before) / $clk_tck / ($bytes / 1000000000)" | bc -l)
    cell_host=$(echo "($after - $before + $rx_after - $rx_before) / $clk_tck / ($bytes / 1000000000)" | bc -l)
    cell_machine=$(echo "($machine_after - $machine_before) / $clk_tck / ($bytes / 1000000000)" | bc -l)
}

# Best of the rounds: highest MB/s, lowest CPU s/GB (server, host and machine each on its own).
declare -A mbs cpu host_cpu machine
for round in $(seq 1 "$rounds"); do
    for mode in plain tls; do
        for c in $concurrencies; do
            for server in nginx ferry; do
                cell "$server" "$mode" "$c"
                m=$cell_mbs p=$cell_cpu h=$cell_host w=$cell_machine
                printf 'round %d %-5s %-5s c=%-3d %8.0f MB/s %7.3f CPU s/GB (%smachine %.3f)\n' "$round" "$server" "$mode" "$c" "$m" "$p" \
                    "$([ "$net" = veth ] && printf 'host %.3f, ' "$h")" "$w" >&2
                k=$server-$mode-$c
                if [ -z "${mbs[$k]:-}" ] || [ "$(echo "$m > ${mbs[$k]}" | bc)" = 1 ]; then mbs[$k]=$m; fi
                if [ -z "${cpu[$k]:-}" ] || [ "$(echo "$p < ${cpu[$k]}" | bc)" = 1 ]; then cpu[$k]=$p; fi
                if [ -z "${host_cpu[$k]:-}" ] || [ "$(echo "$h < ${host_cpu[$k]}" | bc)" = 1 ]; then host_cpu[$k]=$h; fi
                if [ -z "${machine[$k]:-}" ] || [ "$(echo "$w < ${machine[$k]}" | bc)" = 1 ]; then machine[$k]=$w; fi
            done
        done
    done
done

echo
echo "file: $((size / 1048576)) MiB; $secs s per cell; best of $rounds rounds; $(nproc) cores; NET=$net; MB = 10^6 bytes, GB = 10^9"
printf '%-5s %5s %10s %10s %12s %11s %11s %12s %11s %13s\n' mode conc "nginx MB/s" "ferry MB/s" "ratio (>=1)" "nginx s/GB" "ferry s/GB" "ratio (<=1)" "host ratio" "machine ratio"
met=0 cells=0 missed=()
for mode in plain tls; do
    for c in $concurrencies; do
        n=nginx-$mode-$c f=ferry-$mode-$c
        rt=$(echo "${mbs[$f]} / ${mbs[$n]}" | bc -l)
        rc=$(echo "${cpu[$f]} / ${cpu[$n]}" | bc -l)
        rw=$(echo "${machine[$f]} / ${machine[$n]}" | bc -l)
        # The CPU goal: host under veth, the server's own over loopback (see the top).
        rh=- goal=$rc
        if [ "$net" = veth ]; then
            goal=$(echo "${host_cpu[$f]} / ${host_cpu[$n]}" | bc -l)
            rh=$(printf %.2f "$goal")
        fi
        label=$([ "$mode" = tls ] && echo TLS || echo plain)
        printf '%-5s %5d %10.0f %10.0f %12.2f %11.3f %11.3f %12.2f %11s %13.2f\n' "$label" "$c" "${mbs[$n]}" "${mbs[$f]}" "$rt" "${cpu[$n]}" "${cpu[$f]}" "$rc" "$rh" "$rw"
        cells=$((cells + 2))
        [ "$(echo "$rt >= 1" | bc)" = 1 ] && met=$((met + 1))
        if [ "$(echo "$goal <= 1" | bc)" = 1 ]; then met=$((met + 1)); else missed+=("$label at $c: $(printf %.2f "$goal")"); fi
    done
done
echo
if [ "$net" = veth ]; then
    echo "goals: ferry throughput >= nginx (ratio >= 1.00); ferry host CPU per GB <= nginx (host ratio <= 1.00)"
    echo "host ratio: the server plus its side's receive thread (napi/$link), ferry / nginx"
else
    echo "goals: ferry throughput >= nginx (ratio >= 1.00); ferry CPU per GB <= nginx (ratio <= 1.00)"
fi
echo "machine ratio: the whole machine's CPU per GB, client included, ferry / nginx (not counted as a goal)"
echo "goals met: $met of $cells"
if [ ${#problems[@]} -gt 0 ]; then
    echo
    echo "wrk reported errors (the bytes of failed responses still count above):"
    printf '  %s\n' "${problems[@]}"
fi
# Issue 18's goal is the CPU per GB; throughput varies too much with the client sharing the
# cores to fail a run on.
if [ ${#missed[@]} -gt 0 ]; then
    echo
    echo "MISSED: ferry's $([ "$net" = veth ] && echo "host ")CPU per GB above nginx's (ferry / nginx): $(IFS=';'; echo "${missed[*]}")" >&2
    exit 1
fi
