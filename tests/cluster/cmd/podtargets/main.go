// Command podtargets writes Prometheus file_sd targets for the pods a real
// kubelet runs (scripts/cluster with DRAINSCALER_NODE=kubelet). Debian's
// Prometheus is built without the Kubernetes service discovery, so this does
// its part: one target per pod annotated prometheus.io/scrape: "true" that has
// an IP and a running container (by the kubelet's status), at
// podIP:prometheus.io/port (or the first container port), path
// prometheus.io/path, with labels namespace, pod, node and the pod's labels
// (names sanitised) — the same targets the local node writes. A terminating
// pod stays a target while a container runs, so a draining pod's sessions
// stay visible.
//
//	podtargets -kubeconfig admin.kubeconfig -out prometheus/targets/pods.json
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

type group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "podtargets:", err)
		os.Exit(1)
	}
}

func run() error {
	var kubeconfig, out string
	flag.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	flag.StringVar(&out, "out", "", "the file_sd JSON file to write")
	flag.Parse()
	if out == "" {
		return fmt.Errorf("-out is required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	factory := informers.NewSharedInformerFactory(client, 0)
	pods := factory.Core().V1().Pods()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, n any) { poke(n) },
		DeleteFunc: poke,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced) {
		return fmt.Errorf("pods never synced")
	}
	log.Printf("writing targets to %s", out)
	for {
		list, err := pods.Lister().List(labels.Everything())
		if err != nil {
			return err
		}
		if err := write(out, targets(list)); err != nil {
			log.Printf("write %s: %v", out, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(30 * time.Second):
		}
	}
}

func targets(pods []*v1.Pod) []group {
	groups := []group{}
	for _, pod := range pods {
		if pod.Annotations["prometheus.io/scrape"] != "true" || pod.Status.PodIP == "" || !anyRunning(pod) {
			continue
		}
		port := pod.Annotations["prometheus.io/port"]
		if port == "" {
			port = firstPort(pod)
		}
		if port == "" {
			continue
		}
		l := map[string]string{}
		for k, v := range pod.Labels {
			name := invalidLabelChars.ReplaceAllString(k, "_")
			if name == "" || name[0] == '_' || name == "job" || name == "instance" {
				continue
			}
			l[name] = v
		}
		l["namespace"] = pod.Namespace
		l["pod"] = pod.Name
		l["node"] = pod.Spec.NodeName
		if p := pod.Annotations["prometheus.io/path"]; p != "" {
			l["__metrics_path__"] = p
		}
		groups = append(groups, group{Targets: []string{net.JoinHostPort(pod.Status.PodIP, port)}, Labels: l})
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].Targets[0] < groups[j].Targets[0] })
	return groups
}

func anyRunning(pod *v1.Pod) bool {
	for _, s := range pod.Status.ContainerStatuses {
		if s.State.Running != nil {
			return true
		}
	}
	return false
}

func firstPort(pod *v1.Pod) string {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			return strconv.Itoa(int(p.ContainerPort))
		}
	}
	return ""
}

// write replaces the file atomically, and only when it changes, so
// Prometheus reloads it only then.
func write(path string, groups []group) error {
	data, err := json.MarshalIndent(groups, "", "  ")
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
