# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Shared settings for the local control plane scripts. Sourced, not run.

K8S_VERSION=v1.35.4
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_MOD=$REPO_ROOT/tests/cluster
CACHE=${DRAINSCALER_CACHE:-$HOME/.cache/drainscaler}
# The Kubernetes binaries; a second plane can share the first one's build.
K8S_BIN=${DRAINSCALER_K8S_BIN:-$CACHE/k8s-$K8S_VERSION/bin}
# prometheus-adapter for the HPA side of benches/versus-hpa.sh (scripts/build-adapter).
ADAPTER_MODULE=sigs.k8s.io/prometheus-adapter
ADAPTER_VERSION=v0.12.0
ADAPTER_BIN=${DRAINSCALER_ADAPTER_BIN:-$CACHE/prometheus-adapter-$ADAPTER_VERSION/bin}

# Ports, all on 127.0.0.1. Chosen away from the defaults (2379, 6443, 9090,
# 10257) so a real cluster or another project on this machine does not clash.
ETCD_CLIENT_PORT=${DRAINSCALER_ETCD_PORT:-23790}
ETCD_PEER_PORT=${DRAINSCALER_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${DRAINSCALER_APISERVER_PORT:-16443}
KCM_PORT=${DRAINSCALER_KCM_PORT:-16257}
PROMETHEUS_PORT=${DRAINSCALER_PROMETHEUS_PORT:-19090}
LOCALNODE_PORT=${DRAINSCALER_LOCALNODE_PORT:-16250}

# Which node runs the pods: "kubelet" (the default: a real kubelet, containerd,
# kube-proxy and kube-scheduler, with the whole plane inside a network namespace
# of its own; see tests/cluster/README.md) or "localnode" (tests/cluster/cmd/localnode
# plays the kubelet, scheduler and kube-proxy with local processes on loopback IPs;
# the benches that need thousands of pods or a second plane use it).
NODE_MODE=${DRAINSCALER_NODE:-kubelet}
case $NODE_MODE in
localnode | kubelet) ;;
*)
	printf 'DRAINSCALER_NODE=%s: want kubelet (the default) or localnode\n' "$NODE_MODE" >&2
	exit 2
	;;
esac

# Each node mode keeps its own state (etcd data, certificates for its addresses, pods), so
# that one cache holds both planes and shares their builds; only one of them runs at a time
# on the same ports (`scripts/cluster up` refuses to start beside the other).
STATE_LOCALNODE=$CACHE/cluster
STATE_KUBELET=$CACHE/cluster-node
if [[ $NODE_MODE == kubelet ]]; then
	STATE=$STATE_KUBELET OTHER_STATE=$STATE_LOCALNODE
else
	STATE=$STATE_LOCALNODE OTHER_STATE=$STATE_KUBELET
fi
CLUSTER_BIN=$STATE/bin

if [[ $NODE_MODE == kubelet ]]; then
	# Private ranges that exist only inside the plane's network namespace, where
	# nothing routes them anywhere else.
	SERVICE_CIDR=${DRAINSCALER_SERVICE_CIDR:-10.96.0.0/16}
	POD_CIDR=${DRAINSCALER_POD_CIDR:-10.244.0.0/24}
else
	# Services get ClusterIPs inside loopback so the local node can listen on them.
	SERVICE_CIDR=${DRAINSCALER_SERVICE_CIDR:-127.96.0.0/16}
	# Pod IPs are handed out by the local node from this loopback range.
	POD_CIDR=${DRAINSCALER_POD_CIDR:-127.10.0.0/16}
fi

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Go toolchain the module needs; -mod=mod lets a fresh checkout resolve
# go.sum entries without a separate download step.
go_env() {
	export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
	export CGO_ENABLED=0
}
