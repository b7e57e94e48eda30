#!/usr/bin/env bash
# Load benchmark for the heartbeat server of `drainscaler run` on the local control plane:
# authenticated heartbeats (projected-style pod-bound tokens, audience drainscaler, reviewed by
# TokenReview and then cached) from CONNECTIONS keep-alive connections for SECONDS, over PODS
# pods, each pod's token reused as in steady state. Loopback only; stops by itself.
#
#   scripts/cluster up && eval "$(scripts/cluster env)"
#   benches/heartbeats.sh [PODS] [CONNECTIONS] [SECONDS] [FLOOD_CONNECTIONS]
#
# With FLOOD_CONNECTIONS > 0 the load runs twice: alone, then while FLOOD_CONNECTIONS more
# connections send heartbeats with forged tokens (JWT-shaped, audience drainscaler, unexpired,
# each one new, so none is refused unread or from the cache). It prints the legitimate
# throughput and p99 of both runs and the TokenReviews per second the flood caused.
#
# The pods name a scheduler that does not exist, so they stay Pending: the server needs only the
# pod in its cache and the token's bound-pod claims (name and UID). The controller runs as the
# only candidate for its own Lease in the bench namespace, so it leads. The load client
# (examples/heartbeat_load.rs) runs on one thread, so client and server share the 2 cores.
# Prints throughput, p50/p99/max latency, error answers, the server's heartbeat counters by
# result, its TokenReviews sent (POSTs to the API) and its CPU and peak RSS.
#
# 2026-11-23 00:49, release build, local plane on 2 shared cores with another engineer's e2e
# tests running (load average 2.7-3.8; client and server on the same 2 cores):
#   benches/heartbeats.sh 100 32 20:  73,448 heartbeats/s, p50 0.40 ms, p99 1.03 ms,
#     max 19.7 ms, 0 errors, 0 TokenReviews during the load (all cached), server 0.89 cores,
#     peak RSS 17 MiB.
#   benches/heartbeats.sh 100 256 20: 72,619 heartbeats/s, p50 3.24 ms, p99 10.04 ms,
#     max 56.4 ms, 0 errors, 0.92 cores, 23 MiB. The same throughput: with 256 requests always
#     in flight, the extra latency is queueing (256 / 72,600/s = 3.5 ms), not the server.
#
# 2026-11-29 06:07, release build, load average 9 (other engineers' builds and tests):
#   benches/heartbeats.sh 100 32 20 64: alone 25,794 heartbeats/s, p50 0.71 ms, p99 6.34 ms,
#     0 errors, 0 TokenReviews. With 64 connections flooding forged tokens (13,646 requests/s,
#     answered 429 or 401): 7,121 real heartbeats/s, p50 3.71 ms, p99 15.57 ms, 0 errors;
#     1,199 TokenReviews in 20 s (59.9/s: 50/s plus the burst of 200). Server 0.35-0.39 cores,
#     peak RSS 19 MiB. The one-threaded client now sends the flood too, so real heartbeats get a
#     smaller share of the same total.
set -euo pipefail
cd "$(dirname "$0")/.."
# The local node unless told otherwise (the default plane is the real node, tests/cluster/README.md).
export DRAINSCALER_NODE=${DRAINSCALER_NODE:-localnode}

PODS=${1:-100}
CONNECTIONS=${2:-32}
SECONDS_LOAD=${3:-20}
FLOOD=${4:-0}
NS=${BENCH_NAMESPACE:-drainscaler-bench-heartbeats}
PORT=${BENCH_PORT:-18098}
METRICS_PORT=${BENCH_METRICS_PORT:-18097}
KUBECTL=${DRAINSCALER_KUBECTL:-kubectl}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${DRAINSCALER_CACHE:-$HOME/.cache/drainscaler}/target}

: "${KUBECONFIG:?run eval \"\$(scripts/cluster env)\" first}"
PROFILE=${BENCH_PROFILE:-release}
cargo build --profile "$PROFILE" --locked --bin drainscaler --example heartbeat_load >&2
DIR=$CARGO_TARGET_DIR/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
WORK=$(mktemp -d)

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cleanup() {
	[[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	"$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# A previous run's namespace may still be terminating.
"$KUBECTL" wait --for=delete "namespace/$NS" --timeout=120s >/dev/null 2>&1 || true
"$KUBECTL" create namespace "$NS" >/dev/null
"$KUBECTL" -n "$NS" create serviceaccount app >/dev/null 2>&1 || true
log "creating $PODS pending pods"
for ((i = 0; i < PODS; i++)); do
	cat <<YAML
---
apiVersion: v1
kind: Pod
metadata: {name: app-$i, namespace: $NS, labels: {app: app}}
spec:
  serviceAccountName: app
  schedulerName: drainscaler-bench-unscheduled
  containers: [{name: app, image: drainscaler/session-app:dev}]
YAML
done | "$KUBECTL" apply --server-side -f - >/dev/null

log "requesting one pod-bound token (audience drainscaler) per pod"
seq 0 $((PODS - 1)) | xargs -P 4 -I{} sh -c \
	'"$0" -n "$1" create token app --audience drainscaler --duration 1h \
		--bound-object-kind Pod --bound-object-name app-{} >"$2/token-{}"' \
	"$KUBECTL" "$NS" "$WORK"
awk 1 "$WORK"/token-* >"$WORK/tokens" # one a line
(( $(wc -l <"$WORK/tokens") == PODS )) || { log "expected $PODS tokens"; exit 1; }

"$DIR/drainscaler" run --namespace "$NS" --lease-namespace "$NS" --lease-name bench \
	--listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" --log-format json >"$WORK/drainscaler.log" 2>&1 &
PID=$!
# Leading once the server stops answering 503 (not the leader) to an unauthenticated heartbeat.
deadline=$((SECONDS + 60))
until [[ $(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"sessions":0}' \
	"127.0.0.1:$PORT/v1/heartbeats") == 401 ]]; do
	(( SECONDS < deadline )) || { log "not leading after 60s"; cat "$WORK/drainscaler.log" >&2; exit 1; }
	sleep 0.5
done
log "leading; warming the TokenReview cache with one heartbeat per pod"
"$DIR/examples/heartbeat_load" "127.0.0.1:$PORT" "$WORK/tokens" 4 1 >/dev/null

metric() { curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk -v m="$1" '$1 == m {n += $2} END {print n + 0}'; }
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$PID/stat"; }
load() { # FLOOD_CONNECTIONS
	local reviews0 cpu0 reviews1 cpu1
	reviews0=$(metric 'drainscaler_api_requests_total{verb="POST"}'); cpu0=$(cpu)
	"$DIR/examples/heartbeat_load" "127.0.0.1:$PORT" "$WORK/tokens" "$CONNECTIONS" "$SECONDS_LOAD" "$1"
	reviews1=$(metric 'drainscaler_api_requests_total{verb="POST"}'); cpu1=$(cpu)
	echo "TokenReviews during load: $((reviews1 - reviews0)) ($(echo "scale=1; ($reviews1 - $reviews0) / $SECONDS_LOAD" | bc)/s)"
	echo "server CPU (load):        $(echo "scale=2; ($cpu1 - $cpu0) / $SECONDS_LOAD" | bc) cores"
}
log "driving heartbeats from $CONNECTIONS connections for ${SECONDS_LOAD}s"
load 0
if (( FLOOD > 0 )); then
	log "again, while $FLOOD connections send forged tokens"
	echo "--- with a flood of forged tokens from $FLOOD connections"
	load "$FLOOD"
fi
rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$PID/status")

cat <<REPORT
server heartbeats:        $(curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk '/^drainscaler_heartbeats_total/ {printf "%s ", $0}')
server token reviews:     $(curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk '/^drainscaler_token_reviews_total/ {printf "%s ", $0}')
server peak RSS:          ${rss} MiB
load average:             $(cut -d' ' -f1-3 /proc/loadavg)
REPORT
