#!/usr/bin/env bash
# Load benchmark for `drainscaler run`: POLICIES ScalingPolicies over POLICIES Deployments of
# PODS pods each (default 1,000 x 10 = 10,000 pods) on the local control plane.
#
#   scripts/cluster up && eval "$(scripts/cluster env)"
#   benches/controller.sh [POLICIES] [PODS] [SECONDS]
#
# The pods name a scheduler that does not exist, so they stay Pending: the API server and the
# controller see 10,000 pods without the local node running 10,000 processes. Each policy reads
# one Prometheus query that asks for exactly PODS replicas, so the steady state changes nothing
# and the numbers measure observing, deciding and reporting. Reports the time until every policy
# has a status, then over SECONDS of steady state: reconciles per second, mean reconcile time,
# the controller's CPU seconds and peak memory.
#
# 2026-11-23, local plane on 2 shared cores, dev (unoptimised) build, 1,000 x 10, 15s interval:
# all 1,000 reported 56s after their creation began (creating them took ~17s of that); steady
# 63.4 reconciles/s (66.7 expected), mean reconcile 0.19s, 1.08 cores, peak RSS 97 MiB,
# 0 errors. 200 x 10: 12.5 reconciles/s, 0.14s, 0.08 cores, 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

POLICIES=${1:-1000}
PODS=${2:-10}
SECONDS_STEADY=${3:-60}
NS=${BENCH_NAMESPACE:-drainscaler-bench}
PORT=${BENCH_PORT:-18099}
KUBECTL=${DRAINSCALER_KUBECTL:-kubectl}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${DRAINSCALER_CACHE:-$HOME/.cache/drainscaler}/target}

: "${KUBECONFIG:?run eval \"\$(scripts/cluster env)\" first}"
# BENCH_PROFILE=dev for a quick check of the script itself.
PROFILE=${BENCH_PROFILE:-release}
cargo build --profile "$PROFILE" --locked --bin drainscaler >&2
BIN=$CARGO_TARGET_DIR/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/drainscaler

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cleanup() {
	[[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	"$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$KUBECTL" apply --server-side --force-conflicts -f crds/scalingpolicy.yaml >/dev/null
"$KUBECTL" create namespace "$NS" >/dev/null 2>&1 || true

log "creating $POLICIES deployments of $PODS pending pods each"
objects() {
	local kind=$1 i
	for ((i = 0; i < POLICIES; i++)); do
		if [[ $kind == deployments ]]; then
			cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: $NS}
spec:
  replicas: $PODS
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec:
      schedulerName: drainscaler-bench-unscheduled
      containers: [{name: app, image: drainscaler/session-app:dev}]
YAML
		else
			cat <<YAML
---
apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: app-$i, namespace: $NS}
spec:
  targetRef: {kind: Deployment, name: app-$i}
  minReplicas: 1
  maxReplicas: $((PODS * 2))
  interval: 15s
  metrics:
  - name: rps
    prometheus: {query: "vector($((PODS * 100)))"}
    target: {type: AverageValue, averageValue: "100"}
YAML
		fi
	done
}
objects deployments | "$KUBECTL" apply --server-side -f - >/dev/null
until (( $("$KUBECTL" -n "$NS" get pods --no-headers 2>/dev/null | wc -l) >= POLICIES * PODS )); do
	sleep 2
done
log "$((POLICIES * PODS)) pods exist"

"$BIN" run --namespace "$NS" --lease-namespace "$NS" --listen "127.0.0.1:$PORT" \
	${PROMETHEUS_URL:+--prometheus-url "$PROMETHEUS_URL"} --log-format json \
	>"${TMPDIR:-/tmp}/drainscaler-bench.log" 2>&1 &
PID=$!
start=$(date +%s.%N)
objects policies | "$KUBECTL" apply --server-side -f - >/dev/null
log "created $POLICIES policies; waiting until every one has a status"
until [[ $("$KUBECTL" -n "$NS" get scalingpolicies -o jsonpath='{range .items[*]}{.status.observedGeneration}{"\n"}{end}' | grep -c .) -ge $POLICIES ]]; do
	sleep 1
done
first=$(echo "$(date +%s.%N) - $start" | bc)
log "every policy reported after ${first}s"

metric() { curl -s "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$PID/stat"; }
r0=$(metric drainscaler_reconciles_total); s0=$(metric drainscaler_reconcile_duration_seconds_sum)
c0=$(metric drainscaler_reconcile_duration_seconds_count); cpu0=$(cpu)
sleep "$SECONDS_STEADY" # the measurement window itself
r1=$(metric drainscaler_reconciles_total); s1=$(metric drainscaler_reconcile_duration_seconds_sum)
c1=$(metric drainscaler_reconcile_duration_seconds_count); cpu1=$(cpu)
rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$PID/status")
errors=$(curl -s "127.0.0.1:$PORT/metrics" | awk '/^drainscaler_reconcile_errors_total/ {n += $2} END {print n + 0}')

cat <<REPORT
policies:                 $POLICIES
pods:                     $((POLICIES * PODS))
all reported after:       ${first}s
reconciles/s (steady):    $(echo "scale=1; ($r1 - $r0) / $SECONDS_STEADY" | bc)
mean reconcile:           $(echo "scale=4; ($s1 - $s0) / ($c1 - $c0)" | bc)s
controller CPU (steady):  $(echo "scale=2; ($cpu1 - $cpu0) / $SECONDS_STEADY" | bc) cores
peak RSS:                 ${rss} MiB
reconcile errors:         $errors
REPORT
