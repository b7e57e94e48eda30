#!/usr/bin/env bash
# drainscaler next to the real HorizontalPodAutoscaler, on one plane, under one traffic wave.
#
# Two copies of the demo app (manifests/example) run side by side on the local node:
#   - namespace demo:     scaled by drainscaler, exactly as scripts/demo runs it (examples/demo:
#                         sessions from heartbeats, 10 a pod, decide every 5s, scale-down
#                         stabilization 30s, drains before removing);
#   - namespace demo-hpa: scaled by kube-controller-manager's own HPA controller
#                         (benches/versus-hpa/hpa: autoscaling/v2, Pods metric
#                         app_active_sessions served by prometheus-adapter from the plane's
#                         Prometheus, 10 a pod, 2-20 replicas, scale-down stabilization 30s,
#                         every other behavior field the default; the HPA controller decides every
#                         $DRAINSCALER_HPA_SYNC_PERIOD, default 5s here, like the policy).
# Both get the same traffic at the same time: two traffic generators with the same wave
# (examples/demo/wave.csv, 240s, mean session 20s, at most 90s) and the same seed, so the same
# arrivals and lengths. Then it prints one table: sessions opened, cut and rejected;
# replica-seconds (the Deployment's spec.replicas over time) and pod-seconds (pods that exist,
# terminating ones included); peak replicas; the time from each step up of the wave to the first
# scale-up after it. Sessions cut are the generator's per-connection count, checked connection by
# connection against the local node's record of the connections it destroyed when it killed a
# pod ($DRAINSCALER_DROPPED_LOG); a mismatch fails the run (exit 1).
#
#   benches/versus-hpa.sh [SEED]            (default seed 7, the demo's)
#   VERSUS_MEAN_LENGTH=60s VERSUS_MAX_LENGTH=300s benches/versus-hpa.sh   (longer sessions)
#
# On a fresh machine it brings the plane up (scripts/cluster up, which builds Kubernetes the
# first time), builds prometheus-adapter once (scripts/build-adapter) and drainscaler (debug, as
# scripts/demo). A plane is chosen by the environment, as for scripts/cluster (a private one:
# tests/cluster/README.md, "A second, private plane"). The HPA sync period is a flag of
# kube-controller-manager: if the plane is already running with another one, the script stops
# and says how to restart it. The local node only (DRAINSCALER_NODE=localnode). About 6 minutes
# with everything built (11 with the longer sessions below). It replaces whatever scripts/demo
# left in namespace demo. The plane keeps running afterwards; the run's files stay in
# $DRAINSCALER_CACHE/versus-hpa.
set -euo pipefail
cd "$(dirname "$0")/.."
# The local node unless told otherwise (the default plane is the real node, tests/cluster/README.md).
export DRAINSCALER_NODE=${DRAINSCALER_NODE:-localnode}
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/common.sh
. scripts/lib/common.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export DRAINSCALER_HPA_SYNC_PERIOD=${DRAINSCALER_HPA_SYNC_PERIOD:-5s}
seed=${1:-7}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
[[ $seed =~ ^[0-9]+$ ]] || die "usage: benches/versus-hpa.sh [SEED]  (SEED a number)"
[[ $NODE_MODE == localnode ]] || die "benches/versus-hpa.sh runs on the local node only (DRAINSCALER_NODE=$NODE_MODE)"

wave=examples/demo/wave.csv
duration=240
# The demo's sessions (scripts/demo); VERSUS_MEAN_LENGTH and VERSUS_MAX_LENGTH change them.
mean_length=${VERSUS_MEAN_LENGTH:-20s}
max_length=${VERSUS_MAX_LENGTH:-90s}
ds_ns=demo
hpa_ns=demo-hpa
adapter_image=registry.k8s.io/prometheus-adapter/prometheus-adapter:$ADAPTER_VERSION
run=$CACHE/versus-hpa
mkdir -p "$run"
# The table goes to stdout (and $run/table.md); everything else to stderr.
exec 3>&1 1>&2

say() { printf '\n== %s\n' "$*" >&2; }

say "local control plane (scripts/cluster up)"
scripts/cluster up
env=$(scripts/cluster env) # not inside eval, where set -e would not see it fail
eval "$env"

# kube-controller-manager must run the HPA controller, deciding as often as the policy.
kcm_cmdline=$(tr '\0' ' ' <"/proc/$(<"$STATE/run/kube-controller-manager.pid")/cmdline")
controllers=$(sed -n 's/.*--controllers \([^ ]*\).*/\1/p' <<<"$kcm_cmdline")
case ",$controllers," in
*,-horizontal-pod-autoscaler-controller,* | *,-horizontalpodautoscaling,*)
	die "kube-controller-manager runs without the HPA controller (--controllers $controllers; DRAINSCALER_KCM_CONTROLLERS)" ;;
*,\*,* | *,horizontal-pod-autoscaler-controller,* | *,horizontalpodautoscaling,*) ;;
*) die "kube-controller-manager runs without the HPA controller (--controllers $controllers; DRAINSCALER_KCM_CONTROLLERS)" ;;
esac
sync=$(sed -n 's/.*--horizontal-pod-autoscaler-sync-period \([^ ]*\).*/\1/p' <<<"$kcm_cmdline")
sync=${sync:-15s}
if [[ $sync != "$DRAINSCALER_HPA_SYNC_PERIOD" ]]; then
	die "this plane's HPA controller decides every $sync, not $DRAINSCALER_HPA_SYNC_PERIOD: restart it with
  scripts/cluster down && DRAINSCALER_HPA_SYNC_PERIOD=$DRAINSCALER_HPA_SYNC_PERIOD scripts/cluster up
or run with DRAINSCALER_HPA_SYNC_PERIOD=$sync"
fi

say "prometheus-adapter $ADAPTER_VERSION (scripts/build-adapter)"
scripts/build-adapter
scripts/cluster image-map "$adapter_image" "$ADAPTER_BIN/adapter" >/dev/null

say "building drainscaler"
cargo build --locked --bin drainscaler
scripts/cluster image-map drainscaler/drainscaler "$CARGO_TARGET_DIR/debug/drainscaler" >/dev/null

# Overlays with this plane's Prometheus (examples/demo names the shared plane's port).
overlay() {
	local dir=$run/$1 base=$2 patch=$3
	mkdir -p "$dir"
	printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\npatches:\n%s\n' \
		"$(realpath --relative-to="$dir" "$base")" "$patch" >"$dir/kustomization.yaml"
	echo "$dir"
}

say "prometheus-adapter on the plane, serving custom.metrics.k8s.io"
kubectl apply -k "$(overlay adapter benches/versus-hpa/adapter "  - target: {kind: Deployment, name: prometheus-adapter}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/env/0/value
        value: $PROMETHEUS_URL/")" >/dev/null
# A binary rebuilt at the same path runs only in a new container.
kubectl -n custom-metrics rollout restart deployment/prometheus-adapter >/dev/null
kubectl -n custom-metrics rollout status deployment/prometheus-adapter --timeout=180s
kubectl wait --for=condition=Available --timeout=120s \
	apiservice/v1beta2.custom.metrics.k8s.io apiservice/v1beta1.custom.metrics.k8s.io

say "the two workloads: $ds_ns (drainscaler) and $hpa_ns (HPA)"
for ns in "$ds_ns" "$hpa_ns"; do
	kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null
	# A policy whose controller is gone keeps its finalizer; the pods go with the namespace anyway.
	kubectl -n "$ns" get scalingpolicies -o name 2>/dev/null |
		xargs -r kubectl -n "$ns" patch --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
done
for ns in "$ds_ns" "$hpa_ns"; do
	kubectl wait --for=delete "namespace/$ns" --timeout=180s >/dev/null 2>&1 || true
done
kubectl apply --server-side -f crds/scalingpolicy.yaml >/dev/null
kubectl wait --for condition=Established --timeout=60s crd/scalingpolicies.drainscaler.io >/dev/null
kubectl apply -k "$(overlay drainscaler examples/demo "  - target: {kind: Deployment, name: drainscaler}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args/3
        value: --prometheus-url=$PROMETHEUS_URL")" >/dev/null
kubectl apply -k benches/versus-hpa/hpa >/dev/null
kubectl -n drainscaler-system rollout restart deployment/drainscaler >/dev/null
kubectl -n drainscaler-system rollout status deployment/drainscaler --timeout=180s
kubectl -n "$ds_ns" rollout status deployment/chat --timeout=120s
kubectl -n "$hpa_ns" rollout status deployment/chat --timeout=120s

# Both autoscalers must be reading their metric before the load starts: the policy has heard
# the pods' heartbeats, the HPA has a value from the adapter (which finds new series when it
# lists them again, every minute).
# shellcheck disable=SC2317 # called through wait_for
policy_ready() {
	kubectl -n "$ds_ns" get scalingpolicy chat -o json |
		jq -e '(.status.conditions // [] | map(select(.type == "Ready" and .status == "True")) | length == 1)
			and (.status.instances.ready // 0) >= 2' >/dev/null
}
# shellcheck disable=SC2317 # called through wait_for
hpa_reading() {
	kubectl -n "$hpa_ns" get hpa chat -o json |
		jq -e '.status.currentMetrics[0].pods.current.averageValue != null
			and (.status.conditions // [] | map(select(.type == "ScalingActive" and .status == "True")) | length == 1)' >/dev/null
}
wait_for() {
	local secs=$1 what=$2 deadline
	shift 2
	deadline=$(($(date +%s) + secs))
	until "$@"; do
		(($(date +%s) < deadline)) || die "timed out after ${secs}s waiting for $what"
		sleep 1
	done
}
wait_for 120 "the ScalingPolicy to be Ready with 2 instances heartbeating" policy_ready
wait_for 180 "the HPA to read app_active_sessions through prometheus-adapter" hpa_reading

# Recorders, each line stamped with the wall clock: spec.replicas of each Deployment, and the
# pods' watch events (pod-seconds run from a pod's first event to its DELETED event).
pids=()
cleanup() { ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null; true; }
trap cleanup EXIT
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
rm -f "$run"/*.replicas "$run"/*.pods "$run"/*.result.json "$run"/*.sessions.json "$run/table.md"
for ns in "$ds_ns" "$hpa_ns"; do
	kubectl -n "$ns" get deployment chat -w -o 'jsonpath={.spec.replicas}{"\n"}' > >(stamp >"$run/$ns.replicas") &
	pids+=($!)
	kubectl -n "$ns" get pods -l app=chat -w --output-watch-events \
		-o 'jsonpath={.type} {.object.metadata.name}{"\n"}' > >(stamp >"$run/$ns.pods") &
	pids+=($!)
done
# shellcheck disable=SC2317 # called through wait_for
recording() { [[ -s $run/$ds_ns.replicas && -s $run/$hpa_ns.replicas && -s $run/$ds_ns.pods && -s $run/$hpa_ns.pods ]]; }
wait_for 60 "the recorders' first lines (the state before the load)" recording
base_dropped=$(wc -l 2>/dev/null <"$DRAINSCALER_DROPPED_LOG" || echo 0)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started_at=$(date -u +%FT%TZ)

say "traffic: $wave for ${duration}s, mean length $mean_length, seed $seed, to both at once"
traffic_pids=()
for ns in "$ds_ns" "$hpa_ns"; do
	traffic -n "$ns" -service chat -port session -shape "trace:$wave" -duration "${duration}s" \
		-mean-length "$mean_length" -max-length "$max_length" -seed "$seed" -out "$run/$ns.sessions.json" \
		>"$run/$ns.result.json" 2>"$run/$ns.traffic.log" &
	traffic_pids+=($!)
done
pids+=("${traffic_pids[@]}")
t0=$EPOCHREALTIME

last_replicas() {
	local r
	r=$(tail -n 1 "$1" 2>/dev/null | cut -d' ' -f2)
	echo "${r:--}"
}
node_cut() {
	tail -n +"$((base_dropped + 1))" "$DRAINSCALER_DROPPED_LOG" 2>/dev/null |
		jq -s --arg ns "$1" '[.[] | select(.namespace == $ns) | .sessions] | add // 0'
}
rate_at() { awk -F, -v t="$1" '$1 <= t {r=$2} END {print r+0}' "$wave"; }
settled_ds() {
	[[ $(last_replicas "$run/$ds_ns.replicas") == 2 ]] &&
		kubectl -n "$ds_ns" get scalingpolicy chat -o json | jq -e '(.status.instances.draining // 0) == 0' >/dev/null
}
settled_hpa() {
	[[ $(last_replicas "$run/$hpa_ns.replicas") == 2 ]] &&
		kubectl -n "$hpa_ns" get pods -l app=chat -o json | jq -e '[.items[] | select(.metadata.deletionTimestamp)] | length == 0' >/dev/null
}

printf '\n%6s %7s | %-24s | %-24s\n' "" "" "drainscaler ($ds_ns)" "HPA ($hpa_ns)" >&2
printf '%6s %7s | %9s %14s | %9s %14s\n' time "load/s" replicas "cut (node)" replicas "cut (node)" >&2
end=
while :; do
	now=$(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN {printf "%d", a - b}')
	running=false
	for p in "${traffic_pids[@]}"; do kill -0 "$p" 2>/dev/null && running=true; done
	load=0
	((now <= duration)) && load=$(rate_at "$now")
	printf '%5ss %7s | %9s %14s | %9s %14s\n' "$now" "$load" \
		"$(last_replicas "$run/$ds_ns.replicas")" "$(node_cut "$ds_ns")" \
		"$(last_replicas "$run/$hpa_ns.replicas")" "$(node_cut "$hpa_ns")" >&2
	if ! $running && settled_ds && settled_hpa; then
		end=$EPOCHREALTIME
		break
	fi
	if ((now > 900)); then
		end=$EPOCHREALTIME
		log "not settled 900s after the load began; the figures stop here"
		break
	fi
	sleep 10
done
for p in "${traffic_pids[@]}"; do wait "$p" || die "the traffic generator failed: $(cat "$run"/*.traffic.log)"; done
sleep 1 # the recorders' last lines
cleanup
trap - EXIT
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- figures

# Each side's clock starts when its generator started (within milliseconds of the other's).
started() { date -d "$(jq -r .started "$run/$1.result.json")" +%s.%N; }

# "REPLICA_SECONDS PEAK" over [t0, end] from the stamped spec.replicas lines (the first line is
# the Deployment as the watch began, before the load).
replica_figures() {
	awk -v t0="$2" -v end="$end" '
		function close_to(t) { area += cur * (t - from); from = t }
		{ t = $1; r = $2 }
		t <= t0 { cur = r; next }
		t > end { exit }
		{ if (from == "") { from = t0; peak = cur } close_to(t); cur = r; if (r > peak) peak = r }
		END { if (from == "") { from = t0; peak = cur } close_to(end); printf "%.0f %d\n", area, peak }
	' "$run/$1.replicas"
}

# pod-seconds over [t0, end]: each pod from its first watch event to its DELETED event.
pod_seconds() {
	awk -v t0="$2" -v end="$end" '
		$2 != "DELETED" && !($3 in from) { from[$3] = $1 }
		$2 == "DELETED" && ($3 in from) { to[$3] = $1 }
		END {
			for (p in from) {
				a = from[p] < t0 ? t0 : from[p]
				b = (p in to) ? to[p] : end
				if (b > end) b = end
				if (b > a) s += b - a
			}
			printf "%.0f\n", s
		}' "$run/$1.pods"
}

# For each step up of the wave (a row whose rate is above the previous one's), the seconds from
# the step to the first increase of spec.replicas at or after it; "none" when the next step up
# (or the end of the wave) came first.
step_to_scale_up() {
	local steps
	steps=$(awk -F, 'NR > 1 && $2 > prev && $1 > 0 {print $1} {prev = $2}' "$wave" | paste -sd' ')
	awk -v t0="$2" -v steps="$steps" -v duration="$duration" '
		{ t = $1 - t0; r = $2; if (seen && r > prev) ups[++n] = t; prev = r; seen = 1 }
		END {
			k = split(steps, s, " ")
			for (i = 1; i <= k; i++) {
				next_step = i < k ? s[i + 1] : duration
				found = "none"
				for (j = 1; j <= n; j++) if (ups[j] >= s[i]) { if (ups[j] < next_step) found = sprintf("%.1fs", ups[j] - s[i]); break }
				out = out (i > 1 ? ", " : "") "+" s[i] "s: " found
			}
			print out
		}' "$run/$1.replicas"
}

# Sessions cut: the generator's dropped connections (its client addresses) and the local node's
# kill records for the namespace (the clients' addresses of the connections it destroyed).
generator_cut() { jq -r '.sessions[] | select(.outcome == "dropped") | .local' "$run/$1.sessions.json" | sort; }
node_cut_addrs() {
	tail -n +"$((base_dropped + 1))" "$DRAINSCALER_DROPPED_LOG" 2>/dev/null |
		jq -r --arg ns "$1" 'select(.namespace == $ns) | .dropped[]?.remote' | sort
}

failed=0
declare -A fig=()
for ns in "$ds_ns" "$hpa_ns"; do
	s=$(started "$ns")
	read -r rs peak < <(replica_figures "$ns" "$s")
	fig[$ns.rs]=$rs fig[$ns.peak]=$peak
	fig[$ns.ps]=$(pod_seconds "$ns" "$s")
	fig[$ns.steps]=$(step_to_scale_up "$ns" "$s")
	fig[$ns.opened]=$(jq .opened "$run/$ns.result.json")
	fig[$ns.cut]=$(jq .dropped "$run/$ns.result.json")
	fig[$ns.rejected]=$(jq .rejected "$run/$ns.result.json")
	fig[$ns.abandoned]=$(jq .abandoned "$run/$ns.result.json")
	fig[$ns.node]=$(node_cut "$ns")
	fig[$ns.window]=$(awk -v a="$end" -v b="$s" 'BEGIN {printf "%.0f", a - b}')
	if ! diff <(generator_cut "$ns") <(node_cut_addrs "$ns") >"$run/$ns.cut.diff"; then
		log "$ns: the generator's cut connections (<) and the node's kill records (>) differ:"
		cat "$run/$ns.cut.diff" >&2
		failed=1
	fi
	[[ $(generator_cut "$ns" | wc -l) == "${fig[$ns.cut]}" ]] || { log "$ns: the generator's dropped count is not its dropped sessions"; failed=1; }
done

row() { printf '| %s | %s | %s |\n' "$1" "${fig[$ds_ns.$2]}" "${fig[$hpa_ns.$2]}"; }
{
cat <<TXT

drainscaler ($commit) vs the HPA, $started_at, $(nproc) shared cores, load average $load_before before, $load_after after
wave $wave (${duration}s, mean session $mean_length, max $max_length), seed $seed, both workloads at once; 2-20 replicas,
10 sessions a pod, scale-down stabilization 30s; drainscaler decides every 5s (heartbeats every 2s),
the HPA controller every $sync (Prometheus scrapes every 2s, prometheus-adapter $ADAPTER_VERSION);
terminationGracePeriodSeconds 30 on both. Figures over ${fig[$ds_ns.window]}s: from the first session until the last one ended and both were back at 2 replicas.

| | drainscaler | HPA |
|---|---|---|
TXT
row "sessions opened" opened
printf '| sessions cut (generator / node) | %s / %s | %s / %s |\n' "${fig[$ds_ns.cut]}" "${fig[$ds_ns.node]}" "${fig[$hpa_ns.cut]}" "${fig[$hpa_ns.node]}"
row "sessions rejected" rejected
row "replica-seconds (spec.replicas)" rs
row "pod-seconds (terminating pods too)" ps
row "peak replicas" peak
row "step up of the load to the first scale-up" steps
[[ ${fig[$ds_ns.abandoned]}${fig[$hpa_ns.abandoned]} == 00 ]] ||
	echo "abandoned (still open when the generator gave up): ${fig[$ds_ns.abandoned]} / ${fig[$hpa_ns.abandoned]}"
if ((failed)); then
	echo "FAIL: sessions cut by the generator and by the node's records differ (above; files in $run)"
fi
} | tee "$run/table.md" >&3
exit "$failed"
