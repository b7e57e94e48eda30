package localnode

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	v1 "k8s.io/api/core/v1"
)

// writeHosts writes the /etc/hosts bind-mounted into the pod's containers:
// the pod's own name, and every Service's ClusterIP under its cluster DNS
// names (there is no cluster DNS server; names resolve through this file).
// The file is rewritten in place because it is bind-mounted by inode.
func (w *podWorker) writeHosts() {
	pod := w.current()
	var b bytes.Buffer
	b.WriteString("# Written by the drainscaler local node.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if ip := w.podIP(); ip != "" {
		name := w.hostname(pod)
		if pod.Spec.Subdomain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.cluster.local\t%s\n", ip, name, pod.Spec.Subdomain, pod.Namespace, name)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", ip, name)
		}
	}
	svcs, _ := w.n.svcs.List(everything())
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].Namespace != svcs[j].Namespace {
			return svcs[i].Namespace < svcs[j].Namespace
		}
		return svcs[i].Name < svcs[j].Name
	})
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == v1.ClusterIPNone {
			continue
		}
		fmt.Fprintf(&b, "%s\t%s.%s.svc.cluster.local\t%s.%s.svc\t%s.%s", ip, s.Name, s.Namespace, s.Name, s.Namespace, s.Name, s.Namespace)
		if s.Namespace == pod.Namespace {
			fmt.Fprintf(&b, "\t%s", s.Name)
		}
		b.WriteString("\n")
	}
	path := filepath.Join(w.dir, "hosts")
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b.Bytes()) {
		return
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil && !os.IsNotExist(err) {
		w.n.log.Warn("write hosts file", "pod", w.key(), "err", err)
	}
}
