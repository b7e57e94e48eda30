package localnode

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	resourcehelper "k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageError marks a container that cannot start because its image is not
// mapped to a local binary (shown as ErrImagePull).
type imageError struct{ error }

func (w *podWorker) hostname(pod *v1.Pod) string {
	h := pod.Name
	if pod.Spec.Hostname != "" {
		h = pod.Spec.Hostname
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// buildCommand resolves the container's argv, environment and mounts.
//
// The image names a local executable (the image map), which plays the
// image's ENTRYPOINT. Without a command, argv is that executable plus args.
// With a command, argv is command plus args, except that a command whose
// first word has the same base name as the mapped executable (say
// ["/drainscaler", "run"] for an image mapped to .../target/debug/drainscaler)
// runs the mapped executable, so manifests written for a real image work.
func (w *podWorker) buildCommand(ctx context.Context, pod *v1.Pod, c *v1.Container) ([]string, []string, []mount, error) {
	binary, err := w.n.cfg.Images.Resolve(c.Image)
	if err != nil {
		return nil, nil, nil, imageError{err}
	}
	env, envMap, err := w.buildEnv(ctx, pod, c)
	if err != nil {
		return nil, nil, nil, err
	}
	mapping := expansion.MappingFuncFor(envMap)
	var argv []string
	if len(c.Command) > 0 {
		for _, a := range c.Command {
			argv = append(argv, expansion.Expand(a, mapping))
		}
		if filepath.Base(argv[0]) == filepath.Base(binary) {
			argv[0] = binary
		}
	} else {
		argv = []string{binary}
	}
	for _, a := range c.Args {
		argv = append(argv, expansion.Expand(a, mapping))
	}
	mounts, err := w.buildMounts(c, mapping)
	if err != nil {
		return nil, nil, nil, err
	}
	return argv, env, mounts, nil
}

func (w *podWorker) buildMounts(c *v1.Container, mapping func(string) string) ([]mount, error) {
	var mounts []mount
	hostsMounted := false
	for _, vm := range c.VolumeMounts {
		src, err := w.vols.path(vm.Name)
		if err != nil {
			return nil, err
		}
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expansion.Expand(vm.SubPathExpr, mapping)
		}
		if sub != "" {
			if filepath.IsAbs(sub) || strings.Contains(sub, "..") {
				return nil, fmt.Errorf("volume mount %s: subPath %q must be relative and stay inside the volume", vm.Name, sub)
			}
			src = filepath.Join(src, sub)
		}
		if vm.MountPath == "/etc/hosts" {
			hostsMounted = true
		}
		mounts = append(mounts, mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	if !hostsMounted {
		mounts = append(mounts, mount{Source: filepath.Join(w.dir, "hosts"), Target: "/etc/hosts", ReadOnly: true})
	}
	return mounts, nil
}

// buildEnv returns the environment as KEY=VALUE and as a map for $(VAR)
// expansion. Order of precedence as in the kubelet: service variables, then
// envFrom, then env (each entry may refer to the ones before it).
func (w *podWorker) buildEnv(ctx context.Context, pod *v1.Pod, c *v1.Container) ([]string, map[string]string, error) {
	ip := w.podIP()
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", defaultPath)
	set("HOME", "/root")
	set("HOSTNAME", w.hostname(pod))
	for _, kv := range w.serviceEnv(pod) {
		set(kv[0], kv[1])
	}
	for _, ef := range c.EnvFrom {
		data, err := w.envFromSource(ctx, pod.Namespace, ef)
		if err != nil {
			return nil, nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := ef.Prefix + k
			if len(validation.IsEnvVarName(name)) > 0 {
				continue // the kubelet skips invalid names too
			}
			set(name, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expansion.Expand(e.Value, expansion.MappingFuncFor(vars)))
			continue
		}
		v, skip, err := w.envValueFrom(ctx, pod, c, e.ValueFrom, ip)
		if err != nil {
			return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if !skip {
			set(e.Name, v)
		}
	}
	// The contract with the Rust side: every process knows its pod IP.
	if _, ok := vars["POD_IP"]; !ok && ip != "" {
		set("POD_IP", ip)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, vars, nil
}

// serviceEnv gives the docker-links style variables for the Services in the
// pod's namespace, plus the API server's. KUBERNETES_SERVICE_HOST/PORT point
// straight at the API server on 127.0.0.1 rather than at the `kubernetes`
// ClusterIP, so in-cluster clients do not depend on the local proxy.
func (w *podWorker) serviceEnv(pod *v1.Pod) [][2]string {
	var out [][2]string
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		svcs, _ := w.n.svcs.Services(pod.Namespace).List(everything())
		sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
		for _, s := range svcs {
			if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == v1.ClusterIPNone || len(s.Spec.Ports) == 0 {
				continue
			}
			if pod.Namespace == metav1.NamespaceDefault && s.Name == "kubernetes" {
				continue
			}
			out = append(out, serviceVars(s.Name, s.Spec.ClusterIP, s.Spec.Ports)...)
		}
	}
	host, port := w.n.cfg.APIServerHost, strconv.Itoa(w.n.cfg.APIServerPort)
	out = append(out,
		[2]string{"KUBERNETES_SERVICE_HOST", host},
		[2]string{"KUBERNETES_SERVICE_PORT", port},
		[2]string{"KUBERNETES_SERVICE_PORT_HTTPS", port},
		[2]string{"KUBERNETES_PORT", "tcp://" + net.JoinHostPort(host, port)},
	)
	return out
}

func serviceVars(name, ip string, ports []v1.ServicePort) [][2]string {
	prefix := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	out := [][2]string{
		{prefix + "_SERVICE_HOST", ip},
		{prefix + "_SERVICE_PORT", strconv.Itoa(int(ports[0].Port))},
	}
	for _, p := range ports {
		if p.Name != "" {
			out = append(out, [2]string{prefix + "_SERVICE_PORT_" + strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port))})
		}
	}
	first := ports[0]
	proto := strings.ToLower(string(first.Protocol))
	if proto == "" {
		proto = "tcp"
	}
	out = append(out, [2]string{prefix + "_PORT", fmt.Sprintf("%s://%s", proto, net.JoinHostPort(ip, strconv.Itoa(int(first.Port))))})
	for _, p := range ports {
		pr := strings.ToLower(string(p.Protocol))
		if pr == "" {
			pr = "tcp"
		}
		base := fmt.Sprintf("%s_PORT_%d_%s", prefix, p.Port, strings.ToUpper(pr))
		out = append(out,
			[2]string{base, fmt.Sprintf("%s://%s", pr, net.JoinHostPort(ip, strconv.Itoa(int(p.Port))))},
			[2]string{base + "_PROTO", pr},
			[2]string{base + "_PORT", strconv.Itoa(int(p.Port))},
			[2]string{base + "_ADDR", ip},
		)
	}
	return out
}

func (w *podWorker) envFromSource(ctx context.Context, ns string, ef v1.EnvFromSource) (map[string]string, error) {
	switch {
	case ef.ConfigMapRef != nil:
		cm, err := w.n.client.CoreV1().ConfigMaps(ns).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
		if err != nil {
			if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
				return nil, nil
			}
			return nil, fmt.Errorf("envFrom configmap %s: %w", ef.ConfigMapRef.Name, err)
		}
		return cm.Data, nil
	case ef.SecretRef != nil:
		s, err := w.n.client.CoreV1().Secrets(ns).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
		if err != nil {
			if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
				return nil, nil
			}
			return nil, fmt.Errorf("envFrom secret %s: %w", ef.SecretRef.Name, err)
		}
		out := map[string]string{}
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

// envValueFrom resolves a valueFrom; skip is true for a missing optional key.
func (w *podWorker) envValueFrom(ctx context.Context, pod *v1.Pod, c *v1.Container, src *v1.EnvVarSource, ip string) (string, bool, error) {
	switch {
	case src.FieldRef != nil:
		v, err := podField(pod, src.FieldRef.FieldPath, ip)
		return v, false, err
	case src.ResourceFieldRef != nil:
		name := src.ResourceFieldRef.ContainerName
		if name == "" {
			name = c.Name
		}
		v, err := resourcehelper.ExtractResourceValueByContainerNameAndNodeAllocatable(
			src.ResourceFieldRef, pod, name, w.n.nodeStatus(metav1.Now()).Allocatable)
		return v, false, err
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm, err := w.n.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configmap %s: %w", ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configmap %s has no key %s", ref.Name, ref.Key)
		}
		return v, false, nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		s, err := w.n.client.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %s: %w", ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %s has no key %s", ref.Name, ref.Key)
		}
		return string(v), false, nil
	}
	return "", false, fmt.Errorf("unsupported valueFrom")
}

// podField resolves a downward API field path.
func podField(pod *v1.Pod, path, ip string) (string, error) {
	switch path {
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1", nil
	case "status.podIP", "status.podIPs":
		return ip, nil
	}
	return fieldpath.ExtractFieldPathAsString(pod, path)
}

// runHandler runs a lifecycle hook (exec, httpGet, sleep, tcpSocket).
func (w *podWorker) runHandler(ctx context.Context, c *v1.Container, h *v1.LifecycleHandler) error {
	switch {
	case h.Exec != nil:
		_, err := w.execIn(ctx, c, h.Exec.Command)
		return err
	case h.HTTPGet != nil:
		_, err := w.httpGet(ctx, c, h.HTTPGet)
		return err
	case h.Sleep != nil:
		select {
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		case <-ctx.Done():
		}
		return nil
	case h.TCPSocket != nil:
		return w.tcpCheck(ctx, c, h.TCPSocket.Host, h.TCPSocket.Port)
	}
	return fmt.Errorf("unsupported lifecycle handler")
}

// execIn runs a command with the container's mounts and environment, as
// exec probes and hooks do, and returns its exit code.
func (w *podWorker) execIn(ctx context.Context, c *v1.Container, command []string) (int, error) {
	if len(command) == 0 {
		return -1, fmt.Errorf("empty command")
	}
	pod := w.current()
	env, _, err := w.buildEnv(ctx, pod, c)
	if err != nil {
		return -1, err
	}
	mounts, err := w.buildMounts(c, expansion.MappingFuncFor(map[string]string{}))
	if err != nil {
		return -1, err
	}
	devnull, err := openDevNull()
	if err != nil {
		return -1, err
	}
	defer devnull.Close()
	p, err := startProcess(w.n.cfg.Self, w.hostname(pod), c.WorkingDir, command, env, mounts, devnull)
	if err != nil {
		return -1, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.signal(9)
		<-p.done
		return -1, ctx.Err()
	}
	code, _ := p.exitStatus()
	if code != 0 {
		return code, fmt.Errorf("command %v exited with %d", command, code)
	}
	return 0, nil
}

func (w *podWorker) resolvePort(c *v1.Container, port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("no container port named %q", port.StrVal)
}

func (w *podWorker) httpGet(ctx context.Context, c *v1.Container, g *v1.HTTPGetAction) (int, error) {
	port, err := w.resolvePort(c, g.Port)
	if err != nil {
		return 0, err
	}
	host := g.Host
	if host == "" {
		host = w.podIP()
	}
	scheme := strings.ToLower(string(g.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := g.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), path), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "kube-probe/1.35")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "host") {
			req.Host = h.Value
			continue
		}
		req.Header.Add(h.Name, h.Value)
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return resp.StatusCode, fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}

func (w *podWorker) tcpCheck(ctx context.Context, c *v1.Container, host string, p intstr.IntOrString) error {
	port, err := w.resolvePort(c, p)
	if err != nil {
		return err
	}
	if host == "" {
		host = w.podIP()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return conn.Close()
}
