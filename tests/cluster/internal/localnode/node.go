// Package localnode plays the kubelet (and a scheduler and a kube-proxy) for
// one Node whose pods are local processes. See tests/cluster/README.md for
// what it supports and how it differs from a real kubelet.
package localnode

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
)

// SchedulerName is the opt-in: pods with spec.schedulerName set to it are
// bound to this node (there is no other scheduler). Pods already bound to
// the node by spec.nodeName run too.
const SchedulerName = "localnode"

// Annotations the local node reads.
const (
	AnnotationScrape       = "prometheus.io/scrape"
	AnnotationScrapePort   = "prometheus.io/port"
	AnnotationScrapePath   = "prometheus.io/path"
	AnnotationSessionPorts = "localnode.drainscaler.io/session-ports"
)

// KubeletVersion is what the Node reports.
const KubeletVersion = "v1.35.4"

// Config is everything the node needs, from flags.
type Config struct {
	NodeName      string
	StateDir      string
	Images        *ImageMap
	PodCIDR       *net.IPNet
	ServiceCIDR   *net.IPNet
	APIServerHost string
	APIServerPort int
	CAFile        string
	FileSD        string
	DroppedLog    string
	Listen        string // kubelet-like HTTPS endpoint (healthz, container logs)
	TLSCertFile   string
	TLSKeyFile    string
	// RestartBackoff is the first back-off after a container exits; it
	// doubles up to MaxRestartBackoff (the kubelet uses 10s and 5m).
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// Self is this executable, re-run as the exec shim inside each pod's
	// mount namespace.
	Self string
	Log  *slog.Logger
}

// Node is the running local node.
type Node struct {
	cfg     Config
	client  kubernetes.Interface
	log     *slog.Logger
	factory informers.SharedInformerFactory
	pods    corelisters.PodLister
	svcs    corelisters.ServiceLister
	ips     *ipAllocator
	drops   *dropLog
	caData  []byte
	events  record.EventRecorder
	// binder's events come from "localnode-scheduler", like default-scheduler's.
	schedEvents record.EventRecorder

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	// done holds pods that ran here and ended; they are never run again
	// (a late informer event must not restart them).
	done map[types.UID]bool

	// changed is poked whenever pods or services change, to rewrite the
	// Prometheus targets, the proxy listeners and the pods' /etc/hosts.
	changed chan struct{}
	proxy   *proxy
	ready   chan struct{} // closed once the Node is registered and caches synced
}

// New checks the configuration and prepares the node; Run starts it.
func New(cfg Config, client kubernetes.Interface) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "pods"), 0o755); err != nil {
		return nil, err
	}
	drops, err := openDropLog(cfg.DroppedLog)
	if err != nil {
		return nil, err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	n := &Node{
		cfg:     cfg,
		client:  client,
		log:     cfg.Log,
		factory: factory,
		pods:    factory.Core().V1().Pods().Lister(),
		svcs:    factory.Core().V1().Services().Lister(),
		ips:     newIPAllocator(cfg.PodCIDR),
		drops:   drops,
		caData:  ca,
		workers: map[types.UID]*podWorker{},
		done:    map[types.UID]bool{},
		changed: make(chan struct{}, 1),
		ready:   make(chan struct{}),
	}
	n.proxy = newProxy(n)
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	n.events = broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: cfg.NodeName})
	n.schedEvents = broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: SchedulerName})
	return n, nil
}

// Ready is closed once the node is registered and its caches are in sync.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Run registers the Node and runs pods until ctx ends; then it stops every
// pod's processes (they are recorded as killed by a node shutdown).
func (n *Node) Run(ctx context.Context) error {
	if err := n.register(ctx); err != nil {
		return err
	}
	podInformer := n.factory.Core().V1().Pods().Informer()
	svcInformer := n.factory.Core().V1().Services().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.onPod(obj) },
		UpdateFunc: func(_, obj any) { n.onPod(obj) },
		DeleteFunc: func(obj any) { n.onPodDeleted(obj) },
	}); err != nil {
		return err
	}
	if _, err := svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { n.poke() },
		UpdateFunc: func(any, any) { n.poke() },
		DeleteFunc: func(any) { n.poke() },
	}); err != nil {
		return err
	}
	n.factory.Start(ctx.Done())
	for typ, ok := range n.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("cache for %v did not sync", typ)
		}
	}
	close(n.ready)
	n.log.Info("node ready", "node", n.cfg.NodeName)

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); n.heartbeatLoop(ctx) }()
	go func() { defer wg.Done(); n.syncLoop(ctx) }()
	go func() { defer wg.Done(); n.proxy.run(ctx) }()
	<-ctx.Done()
	n.shutdown()
	wg.Wait()
	return nil
}

func (n *Node) poke() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// syncLoop rewrites derived state (targets, proxy, hosts files) after
// changes, at most every 200ms, and at least every 5s.
func (n *Node) syncLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.changed:
		case <-t.C:
		}
		if err := n.writeTargets(); err != nil {
			n.log.Error("write prometheus targets", "err", err)
		}
		n.proxy.sync()
		n.mu.Lock()
		ws := make([]*podWorker, 0, len(n.workers))
		for _, w := range n.workers {
			ws = append(ws, w)
		}
		n.mu.Unlock()
		for _, w := range ws {
			w.writeHosts()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) onPod(obj any) {
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	defer n.poke()
	if pod.Spec.NodeName == "" {
		if pod.Spec.SchedulerName == SchedulerName && pod.DeletionTimestamp == nil {
			n.bind(pod)
		}
		return
	}
	if pod.Spec.NodeName != n.cfg.NodeName {
		return
	}
	n.mu.Lock()
	w, ok := n.workers[pod.UID]
	if !ok {
		if n.done[pod.UID] || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			n.mu.Unlock()
			if pod.DeletionTimestamp != nil {
				n.deletePodObject(pod)
			}
			return
		}
		w = newPodWorker(n, pod)
		n.workers[pod.UID] = w
		n.mu.Unlock()
		go w.run()
		return
	}
	n.mu.Unlock()
	w.update(pod)
}

func (n *Node) onPodDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	defer n.poke()
	n.mu.Lock()
	w := n.workers[pod.UID]
	delete(n.done, pod.UID)
	n.mu.Unlock()
	if w != nil {
		w.gone()
	}
}

func (n *Node) forget(uid types.UID, ended bool) {
	n.mu.Lock()
	delete(n.workers, uid)
	if ended {
		n.done[uid] = true
	}
	n.mu.Unlock()
	n.poke()
}

// bind plays the scheduler for pods that opted in.
func (n *Node) bind(pod *v1.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := n.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     v1.ObjectReference{Kind: "Node", Name: n.cfg.NodeName},
	}, metav1.CreateOptions{})
	switch {
	case err == nil:
		n.log.Info("bound pod", "pod", pod.Namespace+"/"+pod.Name)
		n.schedEvents.Eventf(pod, v1.EventTypeNormal, "Scheduled", "Successfully assigned %s/%s to %s", pod.Namespace, pod.Name, n.cfg.NodeName)
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		// Already bound, or gone; the informer will tell.
	default:
		n.log.Error("bind pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

func (n *Node) deletePodObject(pod *v1.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := n.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		n.log.Error("delete pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

func (n *Node) shutdown() {
	n.mu.Lock()
	ws := make([]*podWorker, 0, len(n.workers))
	for _, w := range n.workers {
		ws = append(ws, w)
	}
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.shutdown() }()
	}
	wg.Wait()
}

// ---------------------------------------------------------------- the Node object

func (n *Node) nodeStatus(now metav1.Time) v1.NodeStatus {
	cpu := resource.MustParse(fmt.Sprint(runtime.NumCPU()))
	mem := resource.MustParse(fmt.Sprint(totalMemory()))
	pods := resource.MustParse("250")
	capacity := v1.ResourceList{v1.ResourceCPU: cpu, v1.ResourceMemory: mem, v1.ResourcePods: pods}
	cond := func(t v1.NodeConditionType, s v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	_, port := splitPort(n.cfg.Listen)
	return v1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Conditions: []v1.NodeCondition{
			cond(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", "localnode does not track memory pressure"),
			cond(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", "localnode does not track disk pressure"),
			cond(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", "localnode does not track PID pressure"),
			cond(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "localnode is running pods as local processes"),
		},
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: v1.NodeHostName, Address: n.cfg.NodeName},
		},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: int32(port)}},
		NodeInfo: v1.NodeSystemInfo{
			MachineID:               "localnode",
			SystemUUID:              "localnode",
			BootID:                  bootID(),
			KernelVersion:           kernelVersion(),
			OSImage:                 "drainscaler localnode",
			ContainerRuntimeVersion: "localnode://1",
			KubeletVersion:          KubeletVersion,
			OperatingSystem:         runtime.GOOS,
			Architecture:            runtime.GOARCH,
		},
	}
}

func (n *Node) register(ctx context.Context) error {
	nodes := n.client.CoreV1().Nodes()
	node, err := nodes.Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err = nodes.Create(ctx, &v1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name: n.cfg.NodeName,
				Labels: map[string]string{
					"kubernetes.io/hostname":           n.cfg.NodeName,
					"kubernetes.io/os":                 runtime.GOOS,
					"kubernetes.io/arch":               runtime.GOARCH,
					"node.kubernetes.io/instance-type": "localnode",
				},
			},
			Spec: v1.NodeSpec{PodCIDR: n.cfg.PodCIDR.String(), PodCIDRs: []string{n.cfg.PodCIDR.String()}},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	node.Status = n.nodeStatus(metav1.Now())
	if _, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set node status: %w", err)
	}
	return n.renewLease(ctx)
}

// heartbeatLoop renews the node Lease every 10s and the Ready condition
// every minute, as the kubelet does, so the node lifecycle controller keeps
// the node Ready.
func (n *Node) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := n.renewLease(ctx); err != nil && ctx.Err() == nil {
			n.log.Error("renew node lease", "err", err)
		}
		if time.Since(last) < time.Minute {
			continue
		}
		node, err := n.client.CoreV1().Nodes().Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
		if err == nil {
			node.Status = n.nodeStatus(metav1.Now())
			_, err = n.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			n.log.Error("update node status", "err", err)
			continue
		}
		last = time.Now()
	}
}

func (n *Node) renewLease(ctx context.Context) error {
	leases := n.client.CoordinationV1().Leases(v1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.cfg.NodeName, Namespace: v1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(n.cfg.NodeName),
				LeaseDurationSeconds: ptr.To[int32](40),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

func totalMemory() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			return kb * 1024
		}
	}
	return 8 << 30
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return string(trimNL(b))
}

func kernelVersion() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return string(trimNL(b))
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func splitPort(hostport string) (string, int) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport, 0
	}
	var port int
	fmt.Sscan(p, &port)
	return h, port
}
