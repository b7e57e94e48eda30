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
# has a status, then over SECONDS of steady state: reconciles per second, mean, p50 and p99
# reconcile time (from the controller's drainscaler_reconcile_duration_seconds histogram, timed
# around the whole reconcile), the API requests it sent per second by verb (its own
# drainscaler_api_requests_total, counted in kube's client, so the other tenants of a shared API
# server do not count), its CPU seconds and peak memory.
#
# 2026-11-23, local plane on 2 shared cores, dev (unoptimised) build, 1,000 x 10, 15s interval:
# all 1,000 reported 56s after their creation began (creating them took ~17s of that); steady
# 63.4 reconciles/s (66.7 expected), mean reconcile 0.19s, 1.08 cores, peak RSS 97 MiB,
# 0 errors. 200 x 10: 12.5 reconciles/s, 0.14s, 0.08 cores, 60 MiB.
#
# 2026-11-23 00:45, release build, same plane with another engineer's e2e tests running (load
# average 2.0-2.4), `benches/controller.sh 1000 10 60`: 10,000 pods took 10m25s to be created
# (kube-controller-manager's client rate limit; not measured), all 1,000 policies reported 16.2s
# after their creation began; steady 66.4 reconciles/s, mean 52 ms, p50 31.8 ms, p99 280 ms;
# 199.8 API requests/s (GET 133.1: the scale subresource and the HPA list, PATCH 66.5: status,
# PUT 0.2: the Lease); 0.22 cores, peak RSS 83 MiB, 0 errors. The p99 misses its 50 ms target
# while the controller uses a fifth of a core: a reconcile waits on three API calls in a row
# (scale GET, HPA LIST, status PATCH) plus a Prometheus query, and the API server's own
# cumulative histograms (since it started; this run and others) put 0.5% of status PATCHes and
# 0.35% of scale GETs and of HPA LISTs above 100 ms server-side (Prometheus: all under 100 ms).
#
# 2026-11-23 02:25-02:33, release build, after the HPA list became a watch, a steady policy stopped
# rewriting its status and the scale GET and Prometheus query ran concurrently (pods now created
# in ~2 minutes: the local controller-manager's client limit was raised). Steady readings:
# all 1,000 reported 15.5s after creation began; 66.6 reconciles/s, mean 7.2 ms, p50 6.0 ms,
# p99 31.6 ms (17.1 ms in an earlier run on a quieter machine); 67.1 API requests/s (GET 66.9:
# the scale subresource, PUT 0.2: the Lease, no PATCH); client-side GET p50 2.4 ms, p99 23.1 ms;
# 0.22 cores, peak RSS 83 MiB, 0 errors. BENCH_CHANGING=1 (a status write per reading):
# 66.2 reconciles/s, mean 20 ms, p50 15.6 ms, p99 81.3 ms; 132.8 API requests/s (GET 66.4,
# PATCH 66.2); GET p50 3.2 / p99 37.5 ms, PATCH p50 7.2 / p99 46.7 ms; 0.24 cores, 83 MiB.
# BENCH_CLUSTER_WIDE=1 (03:35): 64.6 reconciles/s, p50 8.8 ms, p99 24.9 ms, 65.3 API
# requests/s, 0.35 cores, peak RSS 83 MiB, 0 errors.
#
# 2026-11-29 12:20, release build, private plane, load average 13-18 (other engineers' builds and
# e2e runs; benches/reaction.sh beside it), after the pod cache became `CachedPod` (the heap
# profile, heaptrack on the 1,000 x 10 run, showed 24.6 MB of the 53 MB heap in the 10,000
# cached `Pod` structs, 2.4 KB each before any string) and glibc got two malloc arenas:
# peak RSS 52.8 MiB (88.6 MiB for the previous build on the same plane at load 11-14),
# 65.4 reconciles/s, CPU per reconcile 3.2 ms (4.1 ms before), 0.21 cores; reconcile p50 86 ms,
# p99 486 ms, all of it waiting on the overloaded API server (GET p50 51 ms, p99 444 ms).
# `CPU per reconcile` is the controller process's CPU over the window over its reconciles: what
# is ours, apart from the API server's latency (`API wait per reconcile`).
#
# 2026-11-29 14:20-14:53, release build, private plane (`DRAINSCALER_KCM_API_QPS=500`), after a
# reconcile reads its pods through an index by namespace and label and finds conflicts through an
# index of who scales each target (it scanned all 10,000 cached pods and all policies):
#   1,000 x 10, load 10-11: CPU per reconcile 0.73 ms (3.2 ms before), 0.04 cores, 66.7/s,
#     p50 4.4 ms, p99 71.7 ms, 67.7 API requests/s, 0 of 3,997 readings late > 1 s, 55.4 MiB.
#   The same at 15:17 (pod changes matched only against the selectors needing their labels too),
#     load 6-10: 0.63 ms, 0.04 cores, 66.6/s, p50 3.5 ms, p99 25.4 ms, 0 of 4,000 late, 56.9 MiB.
#   BENCH_CHANGING=1, load 8-9: 1.35 ms (3.7 ms before), 0.09 cores, 66.4/s, p50 96 ms, p99 623
#     ms (127 ms of API calls per reconcile), 133.8 API requests/s, 231 of 3,988 late > 1 s,
#     55.3 MiB. The late readings queue behind the 16 reconcile slots (`--concurrency`) while the
#     API server is slow: BENCH_CONCURRENCY=64 at load 4-7 left 73 of 4,029 late but p99 1.67 s.
#   5,000 x 5 (25,000 pods), steady, load 10-14: 310 reconciles/s, p50 28.5 ms, p99 133 ms,
#     311 API requests/s, 0.13 cores, 0.43 ms per reconcile, 131.7 MiB, 0 errors; 3,885 of
#     18,639 readings late > 1 s (the backlog of the 8 minutes of creation, at 16 at once). No
#     client-side throttling in kube-controller-manager's log at DRAINSCALER_KCM_API_QPS=500.
#
# 2026-11-29 17:37-17:50, the image's static musl release build, private plane (load average
# 1-2), BENCH_CHANGING=1 BENCH_SETTLE=20 BENCH_KEEP=1, three builds on the same 10,000 pods:
#   before (a /scale GET per reconcile; each policy reads in the burst it was created in):
#     p50 15.2 / p99 82.7 ms, 134.4 API requests/s (GET 67.2, PATCH 66.7), 1.64 ms CPU.
#   the target from a watch, same bursts: p99 113.5 ms (140-177 ms in three earlier runs),
#     67.7 API requests/s (PATCH 66.7): half the calls, but the status PATCHes still queued.
#   and each policy at its own phase: p50 10.5 / p99 33.4 ms, again p50 10.1 / p99 34.9 ms
#     (PATCH p99 30.0 / 30.6 ms), 67.7 API requests/s, 1.6 ms CPU per reconcile, 0 of 4,002
#     readings late (all within 50 ms), peak RSS 52.2 MiB.
#   Sampled at 4 Hz (the watch build), the bursts were plain: 5 s of every 15 without a
#   reconcile, then 150-200/s.
#   5,000 x 5 (25,000 pods), steady, BENCH_SETTLE=120, 120 s window, the phase build, load 1-2:
#     333.5 reconciles/s, p50 0.8 / p99 2.4 ms, 1.0 API requests/s (nothing per reconcile),
#     0.18 cores, 0.54 ms per reconcile, 0 of 40,026 readings late (all within 50 ms), peak RSS
#     132.6 MiB. The late readings of the first 5,000 run were its start-up backlog.
set -euo pipefail
cd "$(dirname "$0")/.."
# The local node unless told otherwise (the default plane is the real node, tests/cluster/README.md).
export DRAINSCALER_NODE=${DRAINSCALER_NODE:-localnode}

POLICIES=${1:-1000}
PODS=${2:-10}
SECONDS_STEADY=${3:-60}
NS=${BENCH_NAMESPACE:-drainscaler-bench}
PORT=${BENCH_PORT:-18099}
METRICS_PORT=${BENCH_METRICS_PORT:-18100}
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/bench.sh
. scripts/lib/bench.sh
# BENCH_PROFILE=dev for a quick check of the script itself.
BIN=$(bench_binary "${BENCH_PROFILE:-release}")

# BENCH_KEEP=1 keeps the namespace and its deployments (and so their pods) for the next run with
# the same POLICIES and PODS, which then skips creating them; only the policies are deleted.
cleanup() {
	[[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	if [[ -n ${BENCH_KEEP:-} ]]; then
		bench_release_policies
		"$KUBECTL" -n "$NS" delete scalingpolicies --all --wait=false >/dev/null 2>&1 || true
	else
		bench_delete_namespace
	fi
	[[ -n ${WINDOW:-} ]] && rm -rf "$WINDOW"
}
trap cleanup EXIT

reuse=
if [[ -n ${BENCH_KEEP:-} ]] && "$KUBECTL" get namespace "$NS" -o jsonpath='{.status.phase}' 2>/dev/null | grep -qx Active; then
	reuse=1
	"$KUBECTL" apply --server-side --force-conflicts -f crds/scalingpolicy.yaml >/dev/null
	bench_release_policies
	"$KUBECTL" -n "$NS" delete scalingpolicies --all >/dev/null
else
	bench_fresh_namespace
fi

# BENCH_CHANGING=1: the value moves on every reading (within the tolerance, so the count stays),
# which makes every reading a status write: the busiest steady state.
if [[ -n ${BENCH_CHANGING:-} ]]; then
	QUERY="vector($((PODS * 100)) + time() % 10)"
else
	QUERY="vector($((PODS * 100)))"
fi

[[ -n $reuse ]] && log "reusing namespace $NS"
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
    prometheus: {query: "$QUERY"}
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

# BENCH_CLUSTER_WIDE=1 watches every namespace, as manifests/base deploys it (stop any other
# controller on the plane first, such as the demo's, or both reconcile its policies).
SCOPE=(--namespace "$NS")
[[ -n ${BENCH_CLUSTER_WIDE:-} ]] && SCOPE=()
"$BIN" run "${SCOPE[@]}" --lease-namespace "$NS" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
	${PROMETHEUS_URL:+--prometheus-url "$PROMETHEUS_URL"} ${BENCH_CONCURRENCY:+--concurrency "$BENCH_CONCURRENCY"} --log-format json \
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

# BENCH_SETTLE=SECONDS waits that long after every policy reported before the window opens, so
# that the backlog of the first reconciles (all policies at once, at --concurrency) is not
# counted as late readings of the steady state.
if [[ -n ${BENCH_SETTLE:-} ]]; then
	log "settling for ${BENCH_SETTLE}s"
	sleep "$BENCH_SETTLE"
fi

scrape() { curl -s "127.0.0.1:$METRICS_PORT/metrics"; }
metric() { awk -v m="$2" '$1 == m {print $2}' "$1"; }
# The q-quantile over the window of the histogram NAME (its buckets with LABEL, if given;
# interpolated within the bucket, as Prometheus' histogram_quantile does), in milliseconds.
#   quantile BEFORE AFTER Q [NAME [LABEL]]
quantile() {
	awk -v q="$3" -v name="${4:-drainscaler_reconcile_duration_seconds}_bucket{" -v label="${5:-}" '
		index($1, name) == 1 && index($1, label) > 0 {
			le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
			if (FILENAME == ARGV[1]) before[le] = $2; else { after[le] = $2; order[n++] = le }
		}
		END {
			total = after["+Inf"] - before["+Inf"]
			if (total <= 0) { print "n/a"; exit }
			prev_le = 0; prev = 0
			for (i = 0; i < n; i++) {
				le = order[i]; c = after[le] - before[le]
				if (c >= q * total) {
					if (le == "+Inf") { printf ">%.1f\n", prev_le * 1000; exit }
					printf "%.1f\n", (prev_le + (le - prev_le) * (q * total - prev) / (c - prev)) * 1000
					exit
				}
				prev_le = le; prev = c
			}
		}' "$1" "$2"
}
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$PID/stat"; }
# API requests by verb over the window, per second; a watch counts once, when it is opened.
api_rates() {
	awk -v s="$SECONDS_STEADY" '
		/^drainscaler_api_requests_total\{/ {
			v = $1; sub(/.*verb="/, "", v); sub(/".*/, "", v)
			if (FILENAME == ARGV[1]) before[v] = $2; else after[v] = $2
		}
		END {
			for (v in after) { d = after[v] - before[v]; total += d; out = out sprintf(" %s %.1f", v, d / s) }
			printf "%.1f/s (%s )\n", total / s, out
		}' "$1" "$2"
}
API=drainscaler_api_request_duration_seconds
WINDOW=$(mktemp -d)
scrape >"$WINDOW/before"; cpu0=$(cpu)
sleep "$SECONDS_STEADY" # the measurement window itself
scrape >"$WINDOW/after"; cpu1=$(cpu)
rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$PID/status")
rss_now=$(awk '/VmRSS/ {print $2 / 1024}' "/proc/$PID/status")
# Seconds spent waiting on the API server over the window (every verb that is timed), per
# reconcile: what a reconcile waits for that is not ours.
api_wait() {
	awk -v m="${API}_sum{" '
		index($1, m) == 1 { if (FILENAME == ARGV[1]) b += $2; else a += $2 }
		END { print a - b }' "$1" "$2"
}
# Readings of a policy taken more than 1 s after their interval, and the bucket of the latest.
late() {
	awk -v m="drainscaler_read_lateness_seconds_bucket{" '
		index($1, m) == 1 {
			le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
			if (FILENAME == ARGV[1]) b[le] = $2; else { a[le] = $2; order[n++] = le }
		}
		END {
			total = a["+Inf"] - b["+Inf"]; worst = order[0]
			for (i = 0; i < n; i++) {
				le = order[i]; c = a[le] - b[le]
				if (le != "+Inf" && le + 0 == 1) within = c
				if (c < total) worst = order[i + 1]
			}
			printf "%d of %d readings more than 1 s after their interval (the latest within %s s)\n", total - within, total, worst
		}' "$1" "$2"
}
errors=$(awk '/^drainscaler_reconcile_errors_total/ {n += $2} END {print n + 0}' "$WINDOW/after")
r0=$(metric "$WINDOW/before" drainscaler_reconciles_total); r1=$(metric "$WINDOW/after" drainscaler_reconciles_total)
s0=$(metric "$WINDOW/before" drainscaler_reconcile_duration_seconds_sum); s1=$(metric "$WINDOW/after" drainscaler_reconcile_duration_seconds_sum)
c0=$(metric "$WINDOW/before" drainscaler_reconcile_duration_seconds_count); c1=$(metric "$WINDOW/after" drainscaler_reconcile_duration_seconds_count)

cat <<REPORT
policies:                 $POLICIES
pods:                     $((POLICIES * PODS))
all reported after:       ${first}s
reconciles/s (steady):    $(echo "scale=1; ($r1 - $r0) / $SECONDS_STEADY" | bc)
mean reconcile:           $(echo "scale=4; ($s1 - $s0) / ($c1 - $c0)" | bc)s
reconcile p50 / p99:      $(quantile "$WINDOW/before" "$WINDOW/after" 0.5) / $(quantile "$WINDOW/before" "$WINDOW/after" 0.99) ms
API GET p50 / p99:        $(quantile "$WINDOW/before" "$WINDOW/after" 0.5 $API 'verb="GET"') / $(quantile "$WINDOW/before" "$WINDOW/after" 0.99 $API 'verb="GET"') ms
API PATCH p50 / p99:      $(quantile "$WINDOW/before" "$WINDOW/after" 0.5 $API 'verb="PATCH"') / $(quantile "$WINDOW/before" "$WINDOW/after" 0.99 $API 'verb="PATCH"') ms
API requests (steady):    $(api_rates "$WINDOW/before" "$WINDOW/after")
controller CPU (steady):  $(echo "scale=2; ($cpu1 - $cpu0) / $SECONDS_STEADY" | bc) cores
CPU per reconcile:        $(echo "scale=2; ($cpu1 - $cpu0) * 1000 / ($r1 - $r0)" | bc) ms (the whole process over the window, watches included)
API wait per reconcile:   $(echo "scale=2; $(api_wait "$WINDOW/before" "$WINDOW/after") * 1000 / ($r1 - $r0)" | bc) ms (summed over its calls; some run concurrently)
reads late:               $(late "$WINDOW/before" "$WINDOW/after")
peak RSS:                 ${rss} MiB (${rss_now} MiB at the end)
load average:             $(cut -d' ' -f1-3 /proc/loadavg)
reconcile errors:         $errors
REPORT
