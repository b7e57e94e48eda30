# shellcheck shell=bash
# Set-up shared by the benchmarks that run `drainscaler run` on the local control plane
# (benches/controller.sh, benches/reaction.sh). Sourced, not run; the script sets NS (its
# namespace) and may set KUBECTL first.

KUBECTL=${DRAINSCALER_KUBECTL:-kubectl}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${DRAINSCALER_CACHE:-$HOME/.cache/drainscaler}/target}

: "${KUBECONFIG:?run eval \"\$(scripts/cluster env)\" first}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The drainscaler binary to run, printed: BENCH_BIN when set (to compare two builds on the same
# objects), else a fresh build of PROFILE (release unless told).
#   BIN=$(bench_binary [PROFILE])
bench_binary() {
	local profile=${1:-release}
	if [[ -n ${BENCH_BIN:-} ]]; then
		[[ -x $BENCH_BIN ]] || { log "error: BENCH_BIN=$BENCH_BIN is not an executable file"; return 1; }
		echo "$BENCH_BIN"
		return
	fi
	cargo build --profile "$profile" --locked --bin drainscaler >&2
	echo "$CARGO_TARGET_DIR/$([[ $profile == dev ]] && echo debug || echo "$profile")/drainscaler"
}

# Removes the finalizers of NS's policies: the controller that would release them is stopped.
bench_release_policies() {
	"$KUBECTL" -n "$NS" get scalingpolicies -o name 2>/dev/null |
		xargs -r -n 50 -P 8 "$KUBECTL" -n "$NS" patch --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
}

# Deletes NS without waiting, and lets its policies go.
bench_delete_namespace() {
	"$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
	bench_release_policies
}

# Applies the CRD and creates NS afresh, once a previous run's namespace has gone.
bench_fresh_namespace() {
	"$KUBECTL" apply --server-side --force-conflicts -f crds/scalingpolicy.yaml >/dev/null
	"$KUBECTL" wait --for=delete "namespace/$NS" --timeout=300s >/dev/null 2>&1 || true
	"$KUBECTL" create namespace "$NS" >/dev/null
}
