#!/usr/bin/env bash
# The fault-injection soak (tests/e2e_chaos.rs, tests/chaos/) for many rounds: each round plays
# waves of long sessions through the demo app while faults land at seeded times (leader SIGKILL,
# leader SIGSTOP past the lease, partitions of the heartbeat path in either direction for all
# pods or some, Prometheus down, pods not Ready, the policy edited, paused and deleted mid-drain,
# and with --private-plane API server restarts), then checks that no session was cut (the traffic
# generator's count and the node's record, connection by connection), that no pod was removed
# while it held sessions, that replicas stayed in [min, max], and that the steady state came back.
#
#   scripts/cluster up && eval "$(scripts/cluster env)"
#   benches/chaos.sh ROUNDS [SEED] [--private-plane]
#
# Round i uses seed SEED+i (default SEED 1000); a failing round prints its seed, and
# `benches/chaos.sh 1 SEED` replays it. Prints a table: faults injected by kind with the
# violations under each and the seeds that failed, then sessions opened, cut (generator/node),
# early removals and the longest time from the last fault to the steady state. Each round's JSON
# goes to $CHAOS_OUT (default a temporary file, named at the end).
#
#   benches/chaos.sh --report FILE...
#
# prints the table over rounds already run, from their JSON files (several runs, e.g. one on
# each plane, make one table), and fails if any round failed.
#
# --private-plane runs on a second plane of its own (tests/cluster/README.md, "A second, private
# plane"; state in $CHAOS_PLANE_CACHE, default /tmp/drainscaler-chaos-plane), started here and
# stopped at the end (CHAOS_KEEP_PLANE=1 keeps it), and adds the apiserver-restart fault, which
# must never hit the shared plane. Environment: DRAINSCALER_CHAOS_FAULTS=partition,leader-kill
# limits the faults; DRAINSCALER_CHAOS_PHASE_SECS (default 60) is each round's fault phase.
#
# A round takes about 3 minutes (setup, 20s warm-up, the fault phase, recovery, the load's
# last minute and its sessions' end).
set -euo pipefail
cd "$(dirname "$0")/.."
# The local node unless told otherwise (the default plane is the real node, tests/cluster/README.md).
export DRAINSCALER_NODE=${DRAINSCALER_NODE:-localnode}

private=false
report=()
args=()
for a in "$@"; do
	case $a in
	--private-plane) private=true ;;
	--report) report=(--report) ;;
	-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	*) args+=("$a") ;;
	esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${DRAINSCALER_CACHE:-$HOME/.cache/drainscaler}/target}
if ((${#report[@]})); then
	if ((${#args[@]} == 0)); then
		echo "usage: benches/chaos.sh --report FILE...  (the JSON files of earlier runs)" >&2
		exit 2
	fi
	files=$(IFS=:; echo "${args[*]}")
	exec env DRAINSCALER_CHAOS_REPORT="$files" \
		cargo test --locked --test e2e_chaos -- chaos_report --exact --nocapture
fi
ROUNDS=${args[0]:-}
SEED=${args[1]:-1000}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ && $SEED =~ ^[0-9]+$ ]]; then
	echo "usage: benches/chaos.sh ROUNDS [SEED] [--private-plane]  (ROUNDS a positive number, SEED a number)" >&2
	exit 2
fi

if $private; then
	export DRAINSCALER_K8S_BIN=${DRAINSCALER_K8S_BIN:-${DRAINSCALER_CACHE:-$HOME/.cache/drainscaler}/k8s-v1.35.4/bin}
	export DRAINSCALER_CACHE=${CHAOS_PLANE_CACHE:-/tmp/drainscaler-chaos-plane}
	export DRAINSCALER_ETCD_PORT=33790 DRAINSCALER_ETCD_PEER_PORT=33800 DRAINSCALER_APISERVER_PORT=26443 \
		DRAINSCALER_KCM_PORT=26257 DRAINSCALER_PROMETHEUS_PORT=29090 DRAINSCALER_LOCALNODE_PORT=26250 \
		DRAINSCALER_POD_CIDR=127.11.0.0/16 DRAINSCALER_SERVICE_CIDR=127.97.0.0/16
	scripts/cluster up >&2
	if [[ -z ${CHAOS_KEEP_PLANE:-} ]]; then
		trap 'scripts/cluster down >&2' EXIT
	fi
	eval "$(scripts/cluster env)"
	export DRAINSCALER_CHAOS_APISERVER=1
else
	: "${KUBECONFIG:?run scripts/cluster up and eval \"\$(scripts/cluster env)\" first, or use --private-plane}"
fi

OUT=${CHAOS_OUT:-$(mktemp /tmp/drainscaler-chaos-XXXXXX.jsonl)}
echo "chaos: $ROUNDS rounds from seed $SEED; rounds' JSON in $OUT" >&2
status=0
DRAINSCALER_E2E=1 DRAINSCALER_CHAOS_ROUNDS=$ROUNDS DRAINSCALER_CHAOS_SEED=$SEED DRAINSCALER_CHAOS_OUT=$OUT \
	cargo test --locked --test e2e_chaos -- chaos_rounds --exact --nocapture || status=$?
echo "rounds' JSON: $OUT" >&2
exit "$status"
