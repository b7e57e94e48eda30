package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
)

func TestDemoAppRunsAsReadyPodsThatPrometheusScrapes(t *testing.T) {
	localnodeOnly(t)
	a := app{ns: cluster.Namespace(t), name: "chat", replicas: 2, grace: 5}
	a.apply(t)
	_, podCIDR, err := net.ParseCIDR(cluster.Env["DRAINSCALER_POD_CIDR"])
	if err != nil {
		t.Fatalf("DRAINSCALER_POD_CIDR: %v", err)
	}
	nodeName := cluster.Env["DRAINSCALER_NODE_NAME"]

	pods := a.pods(t)
	if len(pods) != 2 {
		t.Fatalf("want 2 pods, got %d", len(pods))
	}
	seen := map[string]bool{}
	for _, p := range pods {
		ip := net.ParseIP(p.Status.PodIP)
		if p.Status.Phase != "Running" || !podReady(&p) {
			t.Errorf("pod %s: phase %s ready %v, want Running and Ready", p.Name, p.Status.Phase, podReady(&p))
		}
		if ip == nil || !podCIDR.Contains(ip) || seen[p.Status.PodIP] {
			t.Errorf("pod %s: IP %q is not a unique address in %s", p.Name, p.Status.PodIP, podCIDR)
		}
		seen[p.Status.PodIP] = true
		if p.Spec.NodeName != nodeName {
			t.Errorf("pod %s: bound to %q, want %s", p.Name, p.Spec.NodeName, nodeName)
		}
		if cs := p.Status.ContainerStatuses; len(cs) != 1 || !cs[0].Ready || cs[0].State.Running == nil || cs[0].RestartCount != 0 {
			t.Errorf("pod %s: container status %+v, want one ready running container with no restarts", p.Name, cs)
		}
	}

	// What a person sees.
	table := cluster.Kubectl(t, "-n", a.ns, "get", "pods", "-o", "wide")
	for _, p := range pods {
		if !strings.Contains(table, p.Name) || strings.Count(table, "1/1") != 2 || strings.Count(table, "Running") != 2 {
			t.Errorf("kubectl get pods does not show both pods 1/1 Running:\n%s", table)
			break
		}
	}
	logs := cluster.Kubectl(t, "-n", a.ns, "logs", pods[0].Name)
	if !strings.Contains(logs, "serving") {
		t.Errorf("kubectl logs %s: want the app's start-up line, got %q", pods[0].Name, logs)
	}

	// Prometheus scrapes every pod, labelled by pod and namespace.
	ctx := context.Background()
	clustertest.WaitFor(t, 60*time.Second, "Prometheus to scrape app_active_sessions from both pods", func() (bool, error) {
		samples, err := cluster.Query(ctx, fmt.Sprintf(`app_active_sessions{namespace=%q}`, a.ns))
		if err != nil {
			return false, err
		}
		got := map[string]bool{}
		for _, s := range samples {
			got[s.Labels["pod"]] = true
		}
		return len(got) == 2 && got[pods[0].Name] && got[pods[1].Name], nil
	})

	// The local node proxies the Service's ClusterIP to a ready pod.
	svc, err := cluster.Client.CoreV1().Services(a.ns).Get(ctx, a.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, 20*time.Second, "the ClusterIP to answer", func() (bool, error) {
		resp, err := http.Get("http://" + net.JoinHostPort(svc.Spec.ClusterIP, "8080") + "/healthz")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && strings.TrimSpace(string(body)) == "ok", nil
	})
}

func TestAContainerThatDiesIsRestartedAndItsStatusSaysSo(t *testing.T) {
	localnodeOnly(t)
	a := app{ns: cluster.Namespace(t), name: "chat", replicas: 1, grace: 5}
	a.apply(t)
	pod := a.pods(t)[0]
	pid := containerPID(t, pod.Status.ContainerStatuses[0].ContainerID)

	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill pid %d: %v", pid, err)
	}
	clustertest.WaitFor(t, 60*time.Second, "the container to be restarted and Ready again", func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(a.ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount == 1 && cs.Ready && podReady(p), nil
	})
	p, err := cluster.Client.CoreV1().Pods(a.ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated
	if last == nil || last.ExitCode != 137 || last.Reason != "Error" {
		t.Errorf("lastState.terminated = %+v, want exit code 137 (SIGKILL), reason Error", last)
	}
	if p.Status.PodIP != pod.Status.PodIP {
		t.Errorf("pod IP changed across a container restart: %s -> %s", pod.Status.PodIP, p.Status.PodIP)
	}
}

// containerPID reads the pid out of a localnode container ID.
func containerPID(t *testing.T, id string) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimPrefix(id, "localnode://"))
	if err != nil || pid <= 0 {
		t.Fatalf("container ID %q is not localnode://PID", id)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatalf("container pid %d is not running: %v", pid, err)
	}
	return pid
}
