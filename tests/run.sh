#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need when it is missing, so that it
# passes on a fresh machine: Debian packages (nftables, iproute2, iperf3, node-exporter,
# HAProxy and nginx, the peers of the wao-bench smoke run, and user-mode Linux with
# ipvsadm for the real IPVS kernel of tests/ipvs.rs) and the
# Python packages in tests/requirements.txt (MLServer, scikit-learn), in a virtual env in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nftables iproute2 iperf3 prometheus-node-exporter haproxy nginx libnginx-mod-stream
  user-mode-linux ipvsadm kmod python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
export PATH="$PWD/.venv/bin:$PATH"

# Every test binary runs even when one fails; the summary lists each binary's result and
# every failed test, and the exit code is cargo's.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
echo
echo "== summary =="
grep -E "^     Running |^   Doc-tests |^test result:" "$log" | sed -E 's/^ +//' | paste - - | \
  sed -E 's/^(Running|Doc-tests) ([^(\t]*[^( \t]) *(\([^)]*\))?\ttest result: ([A-Za-z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\4 \2: \5 passed, \6 failed/' || true
grep -E "^test .* FAILED$" "$log" | sed 's/^/  /' || true
exit "$status"
