#!/usr/bin/env bash
# iperf3 throughput in one run: direct, through wao-lb, and through HAProxy (mode tcp,
# option splice-auto, one thread). Each proxy runs alone on core 1; iperf3 client and
# server share core 0. Reports Gbit/s and the proxy's own CPU seconds per GB.
# Usage: bash bench/iperf3-compare.sh [seconds]   (needs iperf3 and haproxy; run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -q -p wao-lb
taskset -c 0 iperf3 -s -p 15201 -D --logfile "$work/iperf3-server.log"
sleep 0.3
pids+=("$(pgrep -n -f 'iperf3 -s -p 15201')")

cat > "$work/wao-lb.yaml" <<YAML
admin: {listen: 127.0.0.1:0}
services:
  - name: iperf
    address: 127.0.0.1:15202
    backends: [{address: 127.0.0.1:15201, node: a}]
YAML
cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  option splice-auto
listen iperf
  bind 127.0.0.1:15203
  server s1 127.0.0.1:15201
CFG

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # name port proxy_pid
  local before after gbits bytes secs_cpu
  [ -n "$3" ] && before=$(cpu_ticks "$3")
  taskset -c 0 iperf3 -c 127.0.0.1 -p "$2" -t "$secs" -J > "$work/$1.json"
  gbits=$(python3 -c "import json;d=json.load(open('$work/$1.json'));print(round(d['end']['sum_received']['bits_per_second']/1e9,2))")
  bytes=$(python3 -c "import json;d=json.load(open('$work/$1.json'));print(d['end']['sum_received']['bytes'])")
  if [ -n "$3" ]; then
    after=$(cpu_ticks "$3")
    secs_cpu=$(python3 -c "print(round(($after-$before)/$(getconf CLK_TCK)/($bytes/1e9),3))")
    printf "%-10s %8s Gbit/s   %6s CPU s per GB relayed\n" "$1" "$gbits" "$secs_cpu"
  else
    printf "%-10s %8s Gbit/s\n" "$1" "$gbits"
  fi
}

taskset -c 1 ./target/release/wao-lb run --config "$work/wao-lb.yaml" 2>"$work/wao-lb.log" &
lb=$!; pids+=("$lb")
taskset -c 1 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
hp=$!; pids+=("$hp")
sleep 1

echo "iperf3 -t $secs, 1 stream, loopback; proxies pinned to core 1, load to core 0"
run direct 15201 ""
run wao-lb 15202 "$lb"
run haproxy 15203 "$hp"
