#!/usr/bin/env bash
# Reaction time of `drainscaler run`, end to end on the local control plane: from a load step
# that crosses the target to the `/scale` write that follows it.
#
#   scripts/cluster up && eval "$(scripts/cluster env)"
#   benches/reaction.sh [STEPS] [POLICIES] [INTERVAL_SECONDS]
#
# POLICIES policies (default 10), each over a Deployment of pending pods, read one Prometheus
# query whose value is a square wave of Prometheus' own clock: 100 and 500 in turn, every PERIOD
# seconds (INTERVAL + 5 by default), each policy shifted by a fraction of PERIOD. With a target of
# 100 per replica, every edge of the wave is a load step that asks for 1 or 5 replicas. The steps
# are known to the millisecond (the value changes when Prometheus' `time()` crosses them), so
# nothing waits on a scrape: the figure is the controller's own, from its next reading of the
# metric through the scale write. The policies scale at once both ways (no stabilization, no
# drain: `drain.timeout: 0s`), as the HPA would.
#
# The writes are seen by a watch on the Deployments (`kubectl get --watch`), stamped when the
# watch line arrives, so the figure includes the watch's delivery. Prints the count of steps
# measured, the reaction time's p50, p90, p99 and maximum, and how many steps were answered with
# an unexpected count or not at all. A policy reads its metrics once per INTERVAL, so the
# reaction is spread over [0, INTERVAL]; the bound to check is p99 <= INTERVAL + 100 ms.
#
# 2026-11-29, private plane on 2 shared cores, `benches/reaction.sh 50 10 15`: release build,
# load average 15-17: 50 steps, 0 missed, p50 7.4 s, p90 14.4 s, p99 14.88 s. The build before
# (every requeue ran 0.5 s of debounce plus the reconcile's own time late): p99 15.77 s over 49
# steps at load 20.
# 18:06, the image's musl build after each policy reads at its own phase of the interval (the
# reading after an off-phase one comes at most interval + 100 ms later), load average 6-8 (a
# CI run beside it): 50 steps, 0 missed, p50 7.0 s, p90 12.5 s, p99 14.45 s.
set -euo pipefail
cd "$(dirname "$0")/.."
# The local node unless told otherwise (the default plane is the real node, tests/cluster/README.md).
export DRAINSCALER_NODE=${DRAINSCALER_NODE:-localnode}

STEPS=${1:-50}
POLICIES=${2:-10}
INTERVAL=${3:-15}
PERIOD=${BENCH_PERIOD:-$((INTERVAL + 5))}
NS=${BENCH_NAMESPACE:-drainscaler-reaction}
PORT=${BENCH_PORT:-18199}
METRICS_PORT=${BENCH_METRICS_PORT:-18200}
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/bench.sh
. scripts/lib/bench.sh
: "${PROMETHEUS_URL:?run eval \"\$(scripts/cluster env)\" first}"
BIN=$(bench_binary release)

WORK=$(mktemp -d)
cleanup() {
	[[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	[[ -n ${WATCH:-} ]] && kill "$WATCH" 2>/dev/null || true
	bench_delete_namespace
	rm -rf "$WORK"
}
trap cleanup EXIT

bench_fresh_namespace

# Policy i's wave is shifted by i/POLICIES of a period, so that the steps of all the policies
# fall at different phases of their reading intervals.
offset() { echo "scale=3; $1 * $PERIOD / $POLICIES" | bc; }
objects() {
	local i
	for ((i = 0; i < POLICIES; i++)); do
		cat <<YAML
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec:
      schedulerName: drainscaler-bench-unscheduled
      containers: [{name: app, image: drainscaler/session-app:dev}]
---
apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: app-$i, namespace: $NS}
spec:
  targetRef: {kind: Deployment, name: app-$i}
  minReplicas: 1
  maxReplicas: 10
  interval: ${INTERVAL}s
  drain: {timeout: 0s}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
  metrics:
  - name: rps
    prometheus: {query: "100 + 400 * (floor((vector(time()) + $(offset "$i")) / $PERIOD) % 2)"}
    target: {type: AverageValue, averageValue: "100"}
YAML
	done
}

# Every change of a Deployment's spec.replicas, stamped on arrival (Unix seconds).
"$KUBECTL" -n "$NS" get deployments --watch -o 'custom-columns=N:.metadata.name,R:.spec.replicas' --no-headers |
	while read -r name replicas; do
		printf '%s %s %s\n' "$(date +%s.%N)" "$name" "$replicas"
	done >"$WORK/writes" &
WATCH=$!

"$BIN" run --namespace "$NS" --lease-namespace "$NS" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
	--prometheus-url "$PROMETHEUS_URL" --log-format json >"${TMPDIR:-/tmp}/drainscaler-reaction.log" 2>&1 &
PID=$!
objects | "$KUBECTL" apply --server-side -f - >/dev/null
# The first reading of each policy is its creation's, not a step's: measure from one period on.
start=$(($(date +%s) + PERIOD))
# Each policy steps once a period.
wait_s=$(((STEPS + POLICIES - 1) / POLICIES * PERIOD + 2 * PERIOD + INTERVAL + 2))
log "$POLICIES policies, interval ${INTERVAL}s, a step every ${PERIOD}s each; measuring for ${wait_s}s"
sleep "$wait_s"
end=$(($(date +%s) - PERIOD))
kill "$WATCH" 2>/dev/null || true
WATCH=

# The steps of every policy inside [start, end], in time order, the first STEPS of them: policy
# i steps where floor((time + offset_i) / PERIOD) changes, to 500 (5 replicas) when the new floor
# is odd, to 100 (1 replica) when even. For each, the first write of that count after it and
# before the next step: its reaction time in seconds, or "missed".
awk -v period="$PERIOD" -v policies="$POLICIES" -v start="$start" -v end="$end" '
	BEGIN {
		for (i = 0; i < policies; i++) {
			off = sprintf("%.3f", i * period / policies) + 0
			for (m = int((start + off) / period); m * period - off <= end; m++) {
				s = m * period - off
				if (s >= start) printf "%.3f %d %d\n", s, i, (m % 2 == 1 ? 5 : 1)
			}
		}
	}' | sort -n | head -n "$STEPS" >"$WORK/steps"
awk -v period="$PERIOD" '
	FNR == NR { n = split($2, parts, "-"); i = parts[n]; c = ++count[i]; t[i, c] = $1; r[i, c] = $3; next }
	{
		s = $1; i = $2; want = $3; found = ""
		for (j = 1; j <= count[i]; j++)
			if (t[i, j] > s && t[i, j] < s + period && r[i, j] == want) { found = t[i, j] - s; break }
		print (found == "" ? "missed" : found)
	}' "$WORK/writes" "$WORK/steps" >"$WORK/reactions"

measured=$(grep -vc missed "$WORK/reactions" || true)
missed=$(grep -c missed "$WORK/reactions" || true)
pct() { grep -v missed "$WORK/reactions" | sort -g | awk -v q="$1" '{ v[NR] = $1 } END { i = int(q * NR + 0.999999); if (i < 1) i = 1; printf "%.3f", v[i] }'; }
errors=$(curl -s "127.0.0.1:$METRICS_PORT/metrics" | awk '/^drainscaler_reconcile_errors_total/ {n += $2} END {print n + 0}')
cat <<REPORT
policies:                 $POLICIES (interval ${INTERVAL}s, a step every ${PERIOD}s)
steps measured:           $measured (missed or answered wrongly: $missed)
reaction p50 / p90:       $(pct 0.5) / $(pct 0.9) s
reaction p99 / max:       $(pct 0.99) / $(pct 1) s
bound (interval + 0.1 s): $(echo "$INTERVAL + 0.1" | bc) s
load average:             $(cut -d' ' -f1-3 /proc/loadavg)
reconcile errors:         $errors
REPORT
