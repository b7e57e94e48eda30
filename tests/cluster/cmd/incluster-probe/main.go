// Command incluster-probe checks, from inside a pod, what an in-cluster
// client (client-go here, kube-rs in drainscaler; both read the same
// KUBERNETES_SERVICE_HOST/PORT and /var/run/secrets/kubernetes.io/serviceaccount
// files) needs: it lists pods in its own namespace through the API server,
// once at the address the environment gives and once at
// https://kubernetes.default.svc (the local node's /etc/hosts and proxy).
// It prints one line per check and exits 1 if any failed.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func main() {
	ns, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		fmt.Println("FAIL read namespace:", err)
		os.Exit(1)
	}
	namespace := strings.TrimSpace(string(ns))
	cfg, err := rest.InClusterConfig()
	if err != nil {
		fmt.Println("FAIL in-cluster config:", err)
		os.Exit(1)
	}
	failed := false
	for _, host := range []string{cfg.Host, "https://kubernetes.default.svc"} {
		c := rest.CopyConfig(cfg)
		c.Host = host
		c.Timeout = 10 * time.Second
		n, err := countPods(c, namespace)
		if err != nil {
			failed = true
			fmt.Printf("FAIL %s: %v\n", host, err)
			continue
		}
		fmt.Printf("OK %s: listed %d pods in %s\n", host, n, namespace)
	}
	if failed {
		os.Exit(1)
	}
}

func countPods(c *rest.Config, namespace string) (int, error) {
	client, err := kubernetes.NewForConfig(c)
	if err != nil {
		return 0, err
	}
	list, err := client.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	return len(list.Items), nil
}
