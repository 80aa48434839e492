#!/usr/bin/env bash
# Start a multi-process training run on this machine's CPU, for testing.
#
#   launch/local.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-l LOG_DIR] \
#     -- --config=configs/synthetic_demo.py --workdir=/tmp/run [FLAGS...]
#
# Starts PROCESSES copies of `python -m cganjax.main` (default 2), each with
# DEVICES simulated CPU devices (default 1). They join one run through a
# coordinator on 127.0.0.1:PORT (default: a free port) and run their
# collectives with gloo over loopback. Process 0 prints to this terminal and
# process i > 0 writes to LOG_DIR/process_<i>.log (default: a new temporary
# directory). The script waits for every process and exits with the first
# non-zero exit code, or 0. Ctrl-C or SIGTERM stops every process.
# Set PYTHON to choose the interpreter (default: python3).
set -euo pipefail

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

processes=2
devices=1
port=''
log_dir=''
while getopts 'n:d:p:l:h' option; do
  case "$option" in
    n) processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    h)
      usage
      exit 0
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
done
shift $((OPTIND - 1))
if [[ "${1:-}" == '--' ]]; then
  shift
fi

check_positive() {
  if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: error: $1 $2 is invalid; pass a positive integer." >&2
    exit 2
  fi
}
check_positive -n "$processes"
check_positive -d "$devices"
if [[ -n "$port" ]]; then
  check_positive -p "$port"
fi
if [[ $# -eq 0 ]]; then
  echo 'local.sh: error: missing training flags; pass them after --, such as -- --config=configs/synthetic_demo.py --workdir=/tmp/run.' >&2
  exit 2
fi

python="${PYTHON:-python3}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$port" ]]; then
  # A port that is free now. Another program could take it before process
  # 0 binds it; pass -p PORT when that happens.
  port="$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi
if [[ -z "$log_dir" ]]; then
  log_dir="$(mktemp -d -t cganjax_local.XXXXXX)"
fi
mkdir -p "$log_dir"

export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

echo "local.sh: $processes processes, $devices devices each, coordinator 127.0.0.1:$port, logs of processes 1 and up in $log_dir" >&2

pids=()
# shellcheck disable=SC2329  # Called from the traps below.
stop_all() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < processes; i++)); do
  command=("$python" -m cganjax.main
    "--coordinator_address=127.0.0.1:$port"
    "--num_processes=$processes"
    "--process_id=$i"
    "$@")
  if ((i == 0)); then
    "${command[@]}" &
  else
    "${command[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
for ((i = 0; i < processes; i++)); do
  code=0
  wait "${pids[$i]}" || code=$?
  if ((code != 0)); then
    echo "local.sh: process $i exited with code $code" >&2
    if ((status == 0)); then
      status=$code
    fi
  fi
done
exit "$status"
