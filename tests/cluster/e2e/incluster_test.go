package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
)

const probeRBAC = `apiVersion: v1
kind: ServiceAccount
metadata: {name: probe, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: list-pods, namespace: %[1]s}
rules:
- {apiGroups: [""], resources: [pods], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: probe-lists-pods, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: list-pods}
subjects:
- {kind: ServiceAccount, name: probe, namespace: %[1]s}
`

const probePod = `apiVersion: v1
kind: Pod
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  schedulerName: localnode
  serviceAccountName: %[3]s
  restartPolicy: Never
  containers:
  - name: probe
    image: drainscaler/incluster-probe
`

// runProbe runs the in-cluster probe as a pod to completion and returns
// its phase and log.
func runProbe(t *testing.T, ns, name, sa string) (corev1.PodPhase, string) {
	t.Helper()
	cluster.KubectlStdin(t, fmt.Sprintf(probePod, ns, name, sa), "apply", "-f", "-")
	var phase corev1.PodPhase
	clustertest.WaitFor(t, 60*time.Second, "pod "+name+" to finish", func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	return phase, cluster.Kubectl(t, "-n", ns, "logs", name)
}

func TestInClusterClientsReachTheAPIServerWithTheirServiceAccountsRBAC(t *testing.T) {
	localnodeOnly(t)
	ns := cluster.Namespace(t)
	cluster.KubectlStdin(t, fmt.Sprintf(probeRBAC, ns), "apply", "-f", "-")

	phase, logs := runProbe(t, ns, "allowed", "probe")
	if phase != corev1.PodSucceeded || strings.Count(logs, "OK ") != 2 {
		t.Errorf("probe with RBAC: phase %s, logs:\n%s", phase, logs)
	}
	phase, logs = runProbe(t, ns, "denied", "default")
	if phase != corev1.PodFailed || !strings.Contains(logs, "forbidden") {
		t.Errorf("probe without RBAC: phase %s (want Failed), logs (want forbidden):\n%s", phase, logs)
	}

	// scripts/cluster kubeconfig-for gives a kubeconfig with exactly the
	// ServiceAccount's rights.
	out, err := exec.Command(filepath.Join(clustertest.RepoRoot(), "scripts", "cluster"), "kubeconfig-for", ns, "probe").Output()
	if err != nil {
		t.Fatalf("kubeconfig-for: %v", err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, out, 0o600); err != nil {
		t.Fatal(err)
	}
	can := func(args ...string) string {
		out, _ := exec.Command(cluster.KubectlBin, append([]string{"--kubeconfig", kc, "auth", "can-i"}, args...)...).Output()
		return strings.TrimSpace(string(out))
	}
	if got := can("list", "pods"); got != "yes" {
		t.Errorf("as probe: can-i list pods = %q, want yes", got)
	}
	if got := can("list", "secrets"); got != "no" {
		t.Errorf("as probe: can-i list secrets = %q, want no", got)
	}
	if got := can("list", "pods", "-n", "default"); got != "no" {
		t.Errorf("as probe: can-i list pods in default = %q, want no", got)
	}
}
