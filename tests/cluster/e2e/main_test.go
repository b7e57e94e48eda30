// Package e2e checks the local control plane itself: the local node runs
// the demo app as real pods, Prometheus scrapes them, the traffic generator
// and the node agree on every dropped session, and pod-bound tokens work.
package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
)

var cluster *clustertest.Cluster

func TestMain(m *testing.M) {
	var err error
	cluster, err = clustertest.Up()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bring up the local control plane:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// app describes a Deployment of the demo session app and its Service.
type app struct {
	ns       string
	name     string
	replicas int
	grace    int // terminationGracePeriodSeconds
	args     []string
	env      map[string]string
}

func (a app) manifest() string {
	var args, env strings.Builder
	for _, x := range a.args {
		fmt.Fprintf(&args, "        - %q\n", x)
	}
	for k, v := range a.env {
		fmt.Fprintf(&env, "        - {name: %s, value: %q}\n", k, v)
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  replicas: %[3]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata:
      labels: {app: %[1]s}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "8080"
    spec:
      schedulerName: localnode
      terminationGracePeriodSeconds: %[4]d
      containers:
      - name: app
        image: drainscaler/session-app:dev
        args:
%[5]s        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
%[6]s        ports:
        - {name: session, containerPort: 7000}
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /readyz, port: http}
          periodSeconds: 1
          failureThreshold: 1
        livenessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 5
        volumeMounts:
        - {name: drainscaler-token, mountPath: /var/run/secrets/drainscaler.io/serviceaccount, readOnly: true}
      volumes:
      - name: drainscaler-token
        projected:
          sources:
          - serviceAccountToken: {audience: drainscaler, expirationSeconds: 600, path: token}
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[1]s}
  ports:
  - {name: session, port: 7000, targetPort: session}
  - {name: http, port: 8080, targetPort: http}
`, a.name, a.ns, a.replicas, a.grace, args.String(), env.String())
}

func (a app) apply(t *testing.T) {
	t.Helper()
	if len(a.args) == 0 {
		a.args = []string{"--max-sessions=100"}
	}
	cluster.KubectlStdin(t, a.manifest(), "apply", "-f", "-")
	a.waitRolledOut(t)
}

func (a app) waitRolledOut(t *testing.T) {
	t.Helper()
	cluster.Kubectl(t, "-n", a.ns, "rollout", "status", "deployment/"+a.name, "--timeout=90s")
}

func (a app) scale(t *testing.T, n int) {
	t.Helper()
	cluster.Kubectl(t, "-n", a.ns, "scale", "deployment/"+a.name, fmt.Sprintf("--replicas=%d", n))
}

// pods lists the app's pods through kubectl.
func (a app) pods(t *testing.T) []corev1.Pod {
	t.Helper()
	out := cluster.Kubectl(t, "-n", a.ns, "get", "pods", "-l", "app="+a.name, "-o", "json")
	var list corev1.PodList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("decode kubectl get pods: %v", err)
	}
	return list.Items
}

// waitPodCount waits until exactly n of the app's pods exist.
func (a app) waitPodCount(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	clustertest.WaitFor(t, timeout, fmt.Sprintf("%d pods of %s", n, a.name), func() (bool, error) {
		return len(a.pods(t)) == n, nil
	})
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
