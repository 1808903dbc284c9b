#!/usr/bin/env bash
# The transparent path against the kernel path, in one run: from a client namespace,
# iperf3 (1 stream) and new connections/s (wrk, `Connection: close`, against nginx) to
#   direct  — the backend's own address (routed through the node),
#   dnat    — a VIP DNATed by a plain nftables rule on the node (the path kube-proxy uses),
#   wao-lb  — a VIP TPROXYed to wao-lb on the node (`redirect: tproxy`).
# Needs root, iperf3, nginx, wrk. Usage: bash bench/tproxy-compare.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
t=wb$$
work=$(mktemp -d)
cleanup() {
  for ns in cl nd bk; do ip netns pids "$t$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  sleep 0.3
  for ns in cl nd bk; do ip netns del "$t$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p wao-lb

for ns in cl nd bk; do ip netns add "$t$ns"; ip -n "$t$ns" link set lo up; done
ip link add "${t}a" netns "${t}nd" type veth peer name "${t}b" netns "${t}cl"
ip link add "${t}c" netns "${t}nd" type veth peer name "${t}d" netns "${t}bk"
ip -n "${t}nd" addr add 10.77.1.1/24 dev "${t}a"; ip -n "${t}nd" link set "${t}a" up
ip -n "${t}nd" addr add 10.77.2.1/24 dev "${t}c"; ip -n "${t}nd" link set "${t}c" up
ip -n "${t}cl" addr add 10.77.1.2/24 dev "${t}b"; ip -n "${t}cl" link set "${t}b" up
ip -n "${t}bk" addr add 10.77.2.2/24 dev "${t}d"; ip -n "${t}bk" link set "${t}d" up
ip -n "${t}cl" route add default via 10.77.1.1
ip -n "${t}bk" route add default via 10.77.2.1
ip -n "${t}nd" route add default via 10.77.1.2
ip netns exec "${t}nd" sysctl -qw net.ipv4.ip_forward=1
# Many short connections: wide port ranges and TIME_WAIT reuse, so no target runs out of ports.
for ns in cl nd; do
  ip netns exec "$t$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
done

# Backend: iperf3 and nginx.
ip netns exec "${t}bk" iperf3 -s -p 5201 -D
cat > "$work/nginx.conf" <<CFG
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 8080 reuseport backlog=4096; location / { return 200 "ok"; } } }
CFG
ip netns exec "${t}bk" nginx -c "$work/nginx.conf"

# Plain DNAT VIP 10.96.0.20 on the node, as kube-proxy's nftables mode would do it.
ip netns exec "${t}nd" nft -f - <<NFT
table ip bench-dnat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.20 tcp dport 5201 dnat to 10.77.2.2:5201
    ip daddr 10.96.0.20 tcp dport 80 dnat to 10.77.2.2:8080
  }
}
NFT
# wao-lb on VIP 10.96.0.10.
cat > "$work/lb.yaml" <<YAML
admin: {listen: 127.0.0.1:10349}
redirect: tproxy
services:
  - {name: iperf, address: "10.96.0.10:5201", backends: [{address: "10.77.2.2:5201", node: bk}]}
  - {name: http, address: "10.96.0.10:80", backends: [{address: "10.77.2.2:8080", node: bk}]}
YAML
ip netns exec "${t}nd" taskset -c 1 ./target/release/wao-lb run --config "$work/lb.yaml" 2>"$work/lb.log" &
sleep 1.5

gbits() { ip netns exec "${t}cl" taskset -c 0 iperf3 -c "$1" -p 5201 -t "$secs" -J \
  | python3 -c "import json,sys;print(round(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9,2))"; }
rate() { ip netns exec "${t}cl" taskset -c 0 wrk -t1 -c32 -d"${secs}s" -H "Connection: close" "http://$1:$2/" \
  | awk '/Requests\/sec/ {print $2}'; }

printf "%-8s %12s %14s\n" target "iperf3 Gbit/s" "new conn/s"
for row in "direct 10.77.2.2 8080" "dnat 10.96.0.20 80" "wao-lb 10.96.0.10 80"; do
  set -- $row
  printf "%-8s %12s %14s\n" "$1" "$(gbits "$2")" "$(rate "$2" "$3")"
  sleep 2
done
