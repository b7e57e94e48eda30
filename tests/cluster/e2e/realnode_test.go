package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
)

// The tests of this file run on the real node (DRAINSCALER_NODE=kubelet):
// kubelet, containerd, kube-proxy and the EndpointSlice controller, with the
// plane in a network namespace of its own.

func kubeletOnly(t *testing.T) {
	t.Helper()
	if cluster.Env["DRAINSCALER_NODE"] != "kubelet" {
		t.Skip("needs the real node: DRAINSCALER_NODE=kubelet scripts/cluster up")
	}
}

func localnodeOnly(t *testing.T) {
	t.Helper()
	if cluster.Env["DRAINSCALER_NODE"] == "kubelet" {
		t.Skip("tests the local node (DRAINSCALER_NODE=localnode)")
	}
}

// netnsExec runs a command in the plane's network namespace.
func netnsExec(t *testing.T, args ...string) string {
	t.Helper()
	script := filepath.Join(clustertest.RepoRoot(), "scripts", "cluster")
	out, err := exec.Command(script, append([]string{"netns-exec"}, args...)...).Output()
	if err != nil {
		t.Fatalf("scripts/cluster netns-exec %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

func TestRealNodeIsReadyOnANetworkThatNothingLeaves(t *testing.T) {
	kubeletOnly(t)
	var node corev1.Node
	out := cluster.Kubectl(t, "get", "node", cluster.Env["DRAINSCALER_NODE_NAME"], "-o", "json")
	if err := json.Unmarshal([]byte(out), &node); err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	if !ready {
		t.Errorf("node %s is not Ready: %+v", node.Name, node.Status.Conditions)
	}
	if rt := node.Status.NodeInfo.ContainerRuntimeVersion; !strings.HasPrefix(rt, "containerd://") {
		t.Errorf("container runtime %q, want containerd", rt)
	}
	if v := node.Status.NodeInfo.KubeletVersion; v != "v1.35.4" {
		t.Errorf("kubelet %q, want the pinned v1.35.4", v)
	}
	_, podNet, err := net.ParseCIDR(cluster.Env["DRAINSCALER_POD_CIDR"])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip := net.ParseIP(a.Address)
		if ip == nil || ip.IsLoopback() || !podNet.Contains(ip) {
			t.Errorf("InternalIP %s: want the pod bridge's address in %s", a.Address, podNet)
		}
	}

	// Every link of the namespace is its loopback, the pod bridge or a port
	// of that bridge (a pod's veth): nothing connects it to another network.
	var links []struct {
		Name   string `json:"ifname"`
		Master string `json:"master"`
	}
	if err := json.Unmarshal([]byte(netnsExec(t, "ip", "-j", "link", "show")), &links); err != nil {
		t.Fatal(err)
	}
	bridge := cluster.Env["DRAINSCALER_BRIDGE"]
	for _, l := range links {
		if l.Name != "lo" && l.Name != bridge && l.Master != bridge {
			t.Errorf("link %s is neither loopback, the pod bridge %s nor a port of it: it could connect the namespace elsewhere", l.Name, bridge)
		}
	}
	// Every route ends on the bridge or loopback.
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
		Gw  string `json:"gateway"`
	}
	if err := json.Unmarshal([]byte(netnsExec(t, "ip", "-j", "-4", "route", "show", "table", "all")), &routes); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dev != bridge && r.Dev != "lo" || r.Gw != "" {
			t.Errorf("route %+v leads off the pod bridge", r)
		}
	}
}

// realApp is the demo session app with a Service that, as in manifests/,
// selects only pods labelled drainscaler.io/serving: "true", and a busybox
// pod to open sessions through the Service's ClusterIP (kube-proxy).
func realApp(ns string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: chat, namespace: %[1]s}
spec:
  replicas: 2
  selector: {matchLabels: {app: chat}}
  template:
    metadata:
      labels: {app: chat, drainscaler.io/serving: "true"}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080"}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: drainscaler/session-app:dev
        args: [--max-sessions=100]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        ports:
        - {name: session, containerPort: 7000}
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /readyz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: chat, namespace: %[1]s}
spec:
  selector: {app: chat, drainscaler.io/serving: "true"}
  ports:
  - {name: session, port: 7000, targetPort: session}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: sh
    image: drainscaler/busybox:dev
    command: [sleep, "3600"]
`, ns)
}

// sliceIPs is the ready endpoints of the Service's EndpointSlices.
func sliceIPs(t *testing.T, ns, service string) []string {
	t.Helper()
	var list discoveryv1.EndpointSliceList
	out := cluster.Kubectl(t, "-n", ns, "get", "endpointslices", "-l", "kubernetes.io/service-name="+service, "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				ips = append(ips, e.Addresses...)
			}
		}
	}
	sort.Strings(ips)
	return ips
}

// sessions opens n short sessions from the client pod through the Service
// and returns how many each pod answered.
func sessions(t *testing.T, ns, clusterIP string, n int) map[string]int {
	t.Helper()
	answered := map[string]int{}
	for i := range n {
		out := cluster.Kubectl(t, "-n", ns, "exec", "client", "--", "sh", "-c",
			fmt.Sprintf("echo 'SESSION s%d 1ms' | nc -w 5 %s 7000", i, clusterIP))
		first, _, _ := strings.Cut(out, "\n")
		pod, ok := strings.CutPrefix(first, "OK ")
		if !ok {
			t.Fatalf("session %d through %s: got %q, want OK <pod>", i, clusterIP, out)
		}
		answered[pod]++
	}
	return answered
}

func TestRealNodeServiceRoutesOnlyToPodsInItsEndpointSlice(t *testing.T) {
	kubeletOnly(t)
	ns := cluster.Namespace(t)
	cluster.KubectlStdin(t, realApp(ns), "apply", "-f", "-")
	cluster.Kubectl(t, "-n", ns, "rollout", "status", "deployment/chat", "--timeout=100s")
	cluster.Kubectl(t, "-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=100s")
	pods := app{ns: ns, name: "chat"}.pods(t)
	if len(pods) != 2 {
		t.Fatalf("%d pods, want 2", len(pods))
	}
	ipOf := map[string]string{}
	var both []string
	for _, p := range pods {
		ipOf[p.Name] = p.Status.PodIP
		both = append(both, p.Status.PodIP)
	}
	sort.Strings(both)
	clustertest.WaitFor(t, time.Minute, "both pods in the Service's EndpointSlice", func() (bool, error) {
		return slices.Equal(sliceIPs(t, ns, "chat"), both), nil
	})
	clusterIP := strings.TrimSpace(cluster.Kubectl(t, "-n", ns, "get", "service", "chat", "-o", "jsonpath={.spec.clusterIP}"))

	// kube-proxy picks an endpoint at random: 24 sessions miss one of two
	// pods with probability 2^-23.
	got := sessions(t, ns, clusterIP, 24)
	if len(got) != 2 {
		t.Fatalf("sessions through the Service reached %v, want both pods", got)
	}

	// drainscaler's drain: serving=false takes the pod out of the Service's
	// slice (the EndpointSlice controller), and kube-proxy stops sending it
	// new sessions.
	leaving, staying := pods[0].Name, pods[1].Name
	cluster.Kubectl(t, "-n", ns, "label", "pod", leaving, "drainscaler.io/serving=false", "--overwrite")
	clustertest.WaitFor(t, time.Minute, leaving+" to leave the Service's EndpointSlice", func() (bool, error) {
		return slices.Equal(sliceIPs(t, ns, "chat"), []string{ipOf[staying]}), nil
	})
	// kube-proxy applies the slice to its rules a moment later: wait until
	// one session lands on the staying pod, then every one must.
	clustertest.WaitFor(t, time.Minute, "kube-proxy to route to "+staying+" only", func() (bool, error) {
		got := sessions(t, ns, clusterIP, 4)
		return got[staying] == 4, nil
	})
	if got := sessions(t, ns, clusterIP, 24); got[staying] != 24 {
		t.Fatalf("after %s left the slice, sessions reached %v, want %s only", leaving, got, staying)
	}

	// The kubelet serves container logs through the API server.
	logs := cluster.Kubectl(t, "-n", ns, "logs", staying)
	if want := "msg=serving sessions=" + ipOf[staying] + ":7000"; !strings.Contains(logs, want) {
		t.Errorf("kubectl logs %s: no %q in %q", staying, want, logs)
	}
}

// requireImage fails unless the node's containerd has drainscaler's image.
func requireDrainscalerImage(t *testing.T) {
	t.Helper()
	out := netnsExec(t, "ctr", "--address", filepath.Join(cluster.StateDir, "run", "containerd.sock"),
		"-n", "k8s.io", "images", "ls", "-q", "name==docker.io/drainscaler/drainscaler:dev")
	if strings.TrimSpace(out) == "" {
		t.Fatal("containerd has no docker.io/drainscaler/drainscaler:dev: run `scripts/cluster drainscaler-image` first")
	}
}

// drainscaler's image (the Dockerfile's final stage) runs as a pod on the
// kubelet; `kubectl logs` reads it.
func TestRealNodeRunsDrainscalersImageAndServesItsLogs(t *testing.T) {
	kubeletOnly(t)
	requireDrainscalerImage(t)
	ns := cluster.Namespace(t)
	cluster.KubectlStdin(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: crd, namespace: %s}
spec:
  restartPolicy: Never
  containers:
  - name: drainscaler
    image: drainscaler/drainscaler:dev
    args: [crd]
`, ns), "apply", "-f", "-")
	clustertest.WaitFor(t, 2*time.Minute, "the crd pod to succeed", func() (bool, error) {
		phase := cluster.Kubectl(t, "-n", ns, "get", "pod", "crd", "-o", "jsonpath={.status.phase}")
		if phase == "Failed" {
			return false, fmt.Errorf("pod failed: %s", cluster.Kubectl(t, "-n", ns, "get", "pod", "crd", "-o", "yaml"))
		}
		return phase == "Succeeded", nil
	})
	want, err := os.ReadFile(filepath.Join(clustertest.RepoRoot(), "crds", "scalingpolicy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cluster.Kubectl(t, "-n", ns, "logs", "crd"); got != string(want) {
		t.Errorf("kubectl logs crd: %d bytes that differ from crds/scalingpolicy.yaml (%d bytes)", len(got), len(want))
	}
}

// manifests/base as a user applies it, with only Prometheus's address
// changed: the controller runs in-cluster from its image with the manifests'
// security context (non-root 65532, read-only root, RuntimeDefault seccomp,
// no capabilities), becomes Ready and takes the lease. It owns the
// drainscaler-system namespace, so it runs on the real-node plane only.
func TestRealNodeRunsManifestsBaseFromTheImage(t *testing.T) {
	kubeletOnly(t)
	requireDrainscalerImage(t)
	base := cluster.Kubectl(t, "kustomize", filepath.Join(clustertest.RepoRoot(), "manifests", "base"))
	u, err := url.Parse(cluster.Prometheus)
	if err != nil {
		t.Fatal(err)
	}
	prom := "http://" + net.JoinHostPort(cluster.Env["DRAINSCALER_NODE_IP"], u.Port())
	if !strings.Contains(base, "http://prometheus.monitoring:9090") {
		t.Fatal("manifests/base no longer names http://prometheus.monitoring:9090; update this test")
	}
	base = strings.ReplaceAll(base, "http://prometheus.monitoring:9090", prom)
	cluster.KubectlStdin(t, base, "apply", "--server-side", "--force-conflicts", "-f", "-")
	t.Cleanup(func() {
		_, _ = cluster.TryKubectl("", "-n", "drainscaler-system", "delete", "deployment", "drainscaler", "--wait=true", "--timeout=60s")
	})
	cluster.Kubectl(t, "-n", "drainscaler-system", "rollout", "status", "deployment/drainscaler", "--timeout=100s")
	clustertest.WaitFor(t, 2*time.Minute, "one drainscaler pod to lead", func() (bool, error) {
		out, err := cluster.TryKubectl("", "-n", "drainscaler-system", "logs", "-l", "app.kubernetes.io/name=drainscaler", "--tail=-1")
		return err == nil && strings.Contains(out, `"leading"`), nil
	})
	// The leader labels itself, so the heartbeat Service has it as its one endpoint.
	clustertest.WaitFor(t, time.Minute, "the heartbeat Service's EndpointSlice to hold the leader", func() (bool, error) {
		return len(sliceIPs(t, "drainscaler-system", "drainscaler-heartbeats")) == 1, nil
	})
	// And it reconciles: a policy for a Deployment that does not exist gets
	// Ready=False TargetNotFound from the pod.
	ns := cluster.Namespace(t)
	cluster.KubectlStdin(t, fmt.Sprintf(`apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: ghost, namespace: %s}
spec:
  targetRef: {kind: Deployment, name: ghost}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - name: sessions
    sessions: {}
    target: {type: AverageValue, averageValue: "10"}
  heartbeat: {source: Push, timeout: 30s}
`, ns), "apply", "-f", "-")
	clustertest.WaitFor(t, time.Minute, "the in-cluster controller to report on the policy", func() (bool, error) {
		reason := cluster.Kubectl(t, "-n", ns, "get", "scalingpolicy", "ghost", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`)
		return reason == "TargetNotFound", nil
	})
}
