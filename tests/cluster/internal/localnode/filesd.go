package localnode

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	v1 "k8s.io/api/core/v1"
)

type sdGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// writeTargets writes the Prometheus file_sd targets: one group per pod on
// this node annotated prometheus.io/scrape: "true" that has an IP and a
// running process, at podIP:prometheus.io/port (or the first container
// port), path prometheus.io/path, with labels namespace, pod, node and the
// pod's labels (names sanitised).
func (n *Node) writeTargets() error {
	if n.cfg.FileSD == "" {
		return nil
	}
	pods, err := n.pods.List(everything())
	if err != nil {
		return err
	}
	groups := []sdGroup{}
	for _, pod := range pods {
		if pod.Spec.NodeName != n.cfg.NodeName || pod.Annotations[AnnotationScrape] != "true" {
			continue
		}
		n.mu.Lock()
		w := n.workers[pod.UID]
		n.mu.Unlock()
		if w == nil || !w.anyRunning() {
			continue
		}
		ip := w.podIP()
		port := pod.Annotations[AnnotationScrapePort]
		if port == "" {
			port = firstPort(pod)
		}
		if ip == "" || port == "" {
			continue
		}
		labels := map[string]string{}
		for k, v := range pod.Labels {
			name := invalidLabelChars.ReplaceAllString(k, "_")
			if name == "" || name[0] == '_' || name == "job" || name == "instance" {
				continue
			}
			labels[name] = v
		}
		labels["namespace"] = pod.Namespace
		labels["pod"] = pod.Name
		labels["node"] = n.cfg.NodeName
		if p := pod.Annotations[AnnotationScrapePath]; p != "" {
			labels["__metrics_path__"] = p
		}
		groups = append(groups, sdGroup{Targets: []string{net.JoinHostPort(ip, port)}, Labels: labels})
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].Targets[0] < groups[j].Targets[0] })
	data, err := json.MarshalIndent(groups, "", "  ")
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(n.cfg.FileSD); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(n.cfg.FileSD), 0o755); err != nil {
		return err
	}
	return writeFile(n.cfg.FileSD, data, 0o644)
}

func firstPort(pod *v1.Pod) string {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			return strconv.Itoa(int(p.ContainerPort))
		}
	}
	return ""
}

func (w *podWorker) anyRunning() bool {
	for _, c := range w.containers {
		c.mu.Lock()
		running := c.proc != nil && !c.proc.exited()
		c.mu.Unlock()
		if running {
			return true
		}
	}
	return false
}
