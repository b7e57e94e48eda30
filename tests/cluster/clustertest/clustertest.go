// Package clustertest helps tests use the local control plane started by
// scripts/cluster: it brings the plane up (or reuses a running one), gives
// each test its own namespace, runs the built kubectl, queries Prometheus,
// reads the local node's dropped-session records, and waits on conditions
// with deadlines.
package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drainscaler/drainscaler/tests/cluster/internal/localnode"
)

// Cluster is the running local control plane.
type Cluster struct {
	Env        map[string]string // from `scripts/cluster env`
	Kubeconfig string
	Prometheus string
	KubectlBin string
	StateDir   string
	DroppedLog string
	Client     kubernetes.Interface
	Rest       *rest.Config
}

// RepoRoot finds the repository root from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// Up runs `scripts/cluster up` (idempotent; quick when already running) and
// reads `scripts/cluster env`.
func Up() (*Cluster, error) {
	script := filepath.Join(RepoRoot(), "scripts", "cluster")
	up := exec.Command(script, "up")
	up.Stdout, up.Stderr = os.Stderr, os.Stderr
	if err := up.Run(); err != nil {
		return nil, fmt.Errorf("scripts/cluster up: %w", err)
	}
	out, err := exec.Command(script, "env").Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/cluster env: %w", err)
	}
	env := map[string]string{}
	re := regexp.MustCompile(`^export ([A-Z_]+)=(.*)$`)
	for _, line := range strings.Split(string(out), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			env[m[1]] = m[2]
		}
	}
	c := &Cluster{
		Env:        env,
		Kubeconfig: env["KUBECONFIG"],
		Prometheus: env["PROMETHEUS_URL"],
		KubectlBin: env["DRAINSCALER_KUBECTL"],
		StateDir:   env["DRAINSCALER_CLUSTER_STATE"],
		DroppedLog: env["DRAINSCALER_DROPPED_LOG"],
	}
	if c.Kubeconfig == "" || c.KubectlBin == "" {
		return nil, fmt.Errorf("scripts/cluster env gave no KUBECONFIG or DRAINSCALER_KUBECTL: %q", out)
	}
	c.Rest, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, err
	}
	c.Client, err = kubernetes.NewForConfig(c.Rest)
	return c, err
}

// KubectlStdin runs kubectl with stdin and returns stdout; it fails the
// test on error.
func (c *Cluster) KubectlStdin(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	out, err := c.TryKubectl(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// Kubectl runs kubectl and returns stdout; it fails the test on error.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	return c.KubectlStdin(t, "", args...)
}

// TryKubectl runs kubectl and returns stdout, or an error with stderr.
func (c *Cluster) TryKubectl(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.KubectlBin, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

var nonName = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace for the test and deletes it (waiting until
// it is gone) when the test ends.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	base := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	name := fmt.Sprintf("%s-%04x", base, rand.Uint32()&0xffff)
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("DRAINSCALER_KEEP_FAILED") != "" {
			t.Logf("keeping namespace %s of a failed test", name)
			return
		}
		if err := c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
			return
		}
		WaitFor(t, 2*time.Minute, "namespace "+name+" to be deleted", func() (bool, error) {
			_, err := c.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
	})
	// Pods need the namespace's default ServiceAccount (made by the
	// serviceaccount controller) and its kube-root-ca.crt ConfigMap.
	WaitFor(t, 30*time.Second, "default ServiceAccount in "+name, func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	return name
}

// WaitFor polls cond until it returns true, an error, or the deadline
// passes; it fails the test in the last two cases.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if err != nil {
			lastErr = err
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(200 * time.Millisecond) // between polls of a real condition
	}
}

// Sample is one series of a Prometheus instant vector.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Query runs an instant PromQL query.
func (c *Cluster) Query(ctx context.Context, q string) ([]Sample, error) {
	u := c.Prometheus + "/api/v1/query?query=" + url.QueryEscape(q)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", body, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s", r.Error)
	}
	var out []Sample
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, Sample{Labels: s.Metric, Value: v})
	}
	return out, nil
}

// KillRecords reads the local node's dropped-session records for a namespace.
func (c *Cluster) KillRecords(namespace string) ([]localnode.KillRecord, error) {
	f, err := os.Open(c.DroppedLog)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []localnode.KillRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r localnode.KillRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", c.DroppedLog, err)
		}
		if r.Namespace == namespace {
			out = append(out, r)
		}
	}
	return out, sc.Err()
}
