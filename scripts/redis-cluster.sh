#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback for tests and the fleet demo.
#
#   scripts/redis-cluster.sh start DIR [BASE_PORT] [NODES]   # prints redis://127.0.0.1:BASE_PORT
#   scripts/redis-cluster.sh stop DIR                        # stops every node started in DIR
#
# Each node is `redis-server --cluster-enabled yes` with its files under DIR/<port>/, no
# persistence (a test cluster starts empty), and cluster-require-full-coverage off: when one
# node dies the slots of the others keep serving, which is what the fleet's fault tests check.
set -euo pipefail

cmd=${1:?usage: redis-cluster.sh start|stop DIR [BASE_PORT] [NODES]}
dir=${2:?usage: redis-cluster.sh start|stop DIR [BASE_PORT] [NODES]}
base=${3:-7100}
nodes=${4:-3}

case "$cmd" in
start)
    command -v redis-server >/dev/null || { echo "redis-server not on PATH (apt-get install redis-server)" >&2; exit 1; }
    mkdir -p "$dir"
    addrs=()
    for ((i = 0; i < nodes; i++)); do
        port=$((base + i))
        mkdir -p "$dir/$port"
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout 2000 \
            --cluster-require-full-coverage no --save '' --appendonly no \
            --dir "$dir/$port" --daemonize yes --pidfile "$dir/$port/redis.pid" \
            --logfile "$dir/$port/redis.log"
        addrs+=("127.0.0.1:$port")
    done
    for addr in "${addrs[@]}"; do  # every node answers before the cluster is formed
        for _ in $(seq 100); do
            redis-cli -h "${addr%:*}" -p "${addr#*:}" ping >/dev/null 2>&1 && break
            sleep 0.05
        done
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
        || { cat "$dir/create.log" >&2; exit 1; }
    for _ in $(seq 200); do  # slots assigned is not enough: wait until every node says ok
        ok=1
        for addr in "${addrs[@]}"; do
            redis-cli -h "${addr%:*}" -p "${addr#*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
        done
        [ "$ok" = 1 ] && break
        sleep 0.05
    done
    [ "$ok" = 1 ] || { echo "cluster did not reach cluster_state:ok" >&2; exit 1; }
    echo "redis://127.0.0.1:$base"
    ;;
stop)
    for pidfile in "$dir"/*/redis.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    ;;
*)
    echo "unknown command $cmd; valid: start, stop" >&2
    exit 2
    ;;
esac
