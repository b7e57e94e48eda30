package localnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podWorker owns one pod bound to this node: its IP, volumes, processes and
// status, from binding until the pod object is deleted.
type podWorker struct {
	n   *Node
	uid types.UID
	dir string

	mu         sync.Mutex
	pod        *v1.Pod // latest seen
	ip         string
	startTime  *metav1.Time
	setupErr   string // why containers cannot start yet (volumes, images)
	volumesOK  bool
	initDone   bool
	inits      []*container
	containers []*container

	updated chan struct{} // the pod object changed
	goneCh  chan struct{} // the pod object is gone from the API
	goneOne sync.Once
	stopCh  chan struct{} // node shutdown
	stopOne sync.Once
	dirty   chan struct{} // status needs writing
	done    chan struct{} // run returned
	vols    *volumes
}

func newPodWorker(n *Node, pod *v1.Pod) *podWorker {
	w := &podWorker{
		n:       n,
		uid:     pod.UID,
		pod:     pod.DeepCopy(),
		dir:     filepath.Join(n.cfg.StateDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)),
		updated: make(chan struct{}, 1),
		goneCh:  make(chan struct{}),
		stopCh:  make(chan struct{}),
		dirty:   make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	for i := range pod.Spec.InitContainers {
		w.inits = append(w.inits, newContainer(w, pod.Spec.InitContainers[i], true))
	}
	for i := range pod.Spec.Containers {
		c := newContainer(w, pod.Spec.Containers[i], false)
		// A pod that ran before this local node started (it restarted):
		// its containers start again, counted as restarts.
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.Name == c.spec.Name && (cs.State.Running != nil || cs.State.Terminated != nil) {
				c.restarts = cs.RestartCount + 1
				c.last = *cs.State.DeepCopy()
				if c.last.Running != nil {
					c.last = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
						ExitCode: 137, Reason: "NodeRestarted", StartedAt: c.last.Running.StartedAt, FinishedAt: metav1.Now()}}
				}
			}
		}
		w.containers = append(w.containers, c)
	}
	w.vols = newVolumes(w)
	return w
}

func (w *podWorker) key() string { return w.pod.Namespace + "/" + w.pod.Name }

func (w *podWorker) current() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func (w *podWorker) podIP() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ip
}

func (w *podWorker) update(pod *v1.Pod) {
	w.mu.Lock()
	w.pod = pod.DeepCopy()
	w.mu.Unlock()
	select {
	case w.updated <- struct{}{}:
	default:
	}
}

func (w *podWorker) gone()     { w.goneOne.Do(func() { close(w.goneCh) }) }
func (w *podWorker) shutdown() { w.stopOne.Do(func() { close(w.stopCh) }); <-w.done }

func (w *podWorker) markDirty() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

func (w *podWorker) deleting() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod.DeletionTimestamp != nil
}

func (w *podWorker) logf(msg string, args ...any) {
	w.n.log.Info(msg, append([]any{"pod", w.key()}, args...)...)
}

// run is the pod's life on this node.
func (w *podWorker) run() {
	defer close(w.done)
	log := w.n.log.With("pod", w.key())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	statusDone := make(chan struct{})
	go func() { defer close(statusDone); w.statusLoop(ctx) }()

	if w.deleting() {
		// Deleted while no process of it ran here (e.g. the local node was
		// down): nothing to stop.
		w.finish(ctx, cancel, statusDone)
		return
	}
	w.assignIP()
	w.markDirty()
	if err := os.MkdirAll(filepath.Join(w.dir, "logs"), 0o755); err != nil {
		log.Error("create pod dir", "err", err)
	}
	w.writeHosts()

	// Volumes first; retry until they render or the pod goes away.
	for !w.prepareVolumes(ctx) {
		if w.waitOrEnd(2 * time.Second) {
			w.finish(ctx, cancel, statusDone)
			return
		}
	}

	// Init containers, one at a time, each to success. Deletion or node
	// shutdown meanwhile stops them.
	initsOver := make(chan struct{})
	go w.stopInitsOnEnd(initsOver)
	defer func() {
		select {
		case <-initsOver:
		default:
			close(initsOver)
		}
	}()
	for _, c := range w.inits {
		if !c.runToCompletion(ctx) {
			if w.endRequested() {
				w.finish(ctx, cancel, statusDone)
				return
			}
			// restartPolicy Never and an init container failed: pod Failed.
			w.markDirty()
			w.waitEnd()
			w.finish(ctx, cancel, statusDone)
			return
		}
	}
	close(initsOver)
	w.mu.Lock()
	w.initDone = true
	w.mu.Unlock()
	w.markDirty()

	var wg sync.WaitGroup
	for _, c := range w.containers {
		wg.Add(1)
		go func() { defer wg.Done(); c.run(ctx) }()
	}
	allExited := make(chan struct{})
	go func() { wg.Wait(); close(allExited) }()

	refresh := time.NewTicker(time.Second)
	defer refresh.Stop()
	for {
		if pod := w.current(); pod.DeletionTimestamp != nil {
			w.killAll("", graceOf(pod))
			<-allExited
			w.finish(ctx, cancel, statusDone)
			return
		}
		select {
		case <-w.stopCh:
			w.killAll("NodeShutdown", 0)
			<-allExited
			w.finish(ctx, cancel, statusDone)
			return
		case <-w.goneCh:
			w.killAll("PodDeleted", 0)
			<-allExited
			w.finish(ctx, cancel, statusDone)
			return
		case <-allExited:
			// restartPolicy Never/OnFailure and every container finished.
			w.markDirty()
			w.waitEnd()
			w.finish(ctx, cancel, statusDone)
			return
		case <-w.updated:
			w.markDirty()
		case <-refresh.C:
			w.vols.refresh(ctx, false)
		}
	}
}

// stopInitsOnEnd stops the init containers if the pod is deleted or the
// node stops before they are over.
func (w *podWorker) stopInitsOnEnd(over <-chan struct{}) {
	stop := func(reason string, grace time.Duration) {
		for _, c := range w.inits {
			c.stop(reason, grace)
		}
	}
	for {
		if pod := w.current(); pod.DeletionTimestamp != nil {
			stop("", graceOf(pod))
			return
		}
		select {
		case <-over:
			return
		case <-w.stopCh:
			stop("NodeShutdown", 0)
			return
		case <-w.goneCh:
			stop("PodDeleted", 0)
			return
		case <-w.updated:
		}
	}
}

// waitOrEnd waits d; true when the pod is being deleted or the node stops.
func (w *podWorker) waitOrEnd(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		if w.endRequested() {
			return true
		}
		select {
		case <-t.C:
			return w.endRequested()
		case <-w.updated:
		case <-w.goneCh:
			return true
		case <-w.stopCh:
			return true
		}
	}
}

func (w *podWorker) endRequested() bool {
	select {
	case <-w.goneCh:
		return true
	case <-w.stopCh:
		return true
	default:
	}
	return w.deleting()
}

// waitEnd blocks a finished pod until it is deleted or the node stops.
func (w *podWorker) waitEnd() {
	for !w.endRequested() {
		select {
		case <-w.updated:
		case <-w.goneCh:
		case <-w.stopCh:
		}
	}
}

func graceOf(pod *v1.Pod) time.Duration {
	if pod.DeletionGracePeriodSeconds != nil {
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

// killAll stops every container within grace; reason "" means a graceful
// deletion (the record says GracePeriodExpired if a kill was needed).
func (w *podWorker) killAll(reason string, grace time.Duration) {
	w.logf("stopping pod", "grace", grace.String(), "reason", reason)
	var wg sync.WaitGroup
	for _, c := range append(append([]*container{}, w.inits...), w.containers...) {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(reason, grace) }()
	}
	wg.Wait()
}

// finish deletes the pod object (when it is being deleted), releases the IP
// and forgets the pod. On node shutdown the object stays, to be run again.
func (w *podWorker) finish(ctx context.Context, cancel context.CancelFunc, statusDone <-chan struct{}) {
	cancel()
	<-statusDone
	w.vols.stop()
	select {
	case <-w.stopCh:
	default:
		pod := w.current()
		if pod.DeletionTimestamp != nil {
			w.n.deletePodObject(pod)
		}
		// Wait for the informer to see the pod gone (or the node to stop)
		// before giving the IP back, so it is not reused too early.
		select {
		case <-w.goneCh:
		case <-w.stopCh:
		case <-time.After(30 * time.Second):
		}
		_ = os.RemoveAll(w.dir)
	}
	if ip := w.podIP(); ip != "" {
		w.n.ips.release(ip)
	}
	// Remember that this pod ended here unless its object is gone already
	// or the node is stopping (then it runs again on the next start).
	remember := true
	select {
	case <-w.stopCh:
		remember = false
	case <-w.goneCh:
		remember = false
	default:
	}
	w.n.forget(w.uid, remember)
	w.logf("pod finished")
}

func (w *podWorker) assignIP() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ip := w.pod.Status.PodIP; ip != "" && w.n.ips.claim(ip) {
		w.ip = ip
	} else if ip, err := w.n.ips.allocate(); err == nil {
		w.ip = ip
	} else {
		w.setupErr = err.Error()
	}
	if w.pod.Status.StartTime != nil {
		w.startTime = w.pod.Status.StartTime.DeepCopy()
	} else {
		now := metav1.Now()
		w.startTime = &now
	}
}

func (w *podWorker) prepareVolumes(ctx context.Context) bool {
	err := w.vols.setup(ctx)
	w.mu.Lock()
	if err != nil {
		w.setupErr = err.Error()
	} else {
		w.setupErr = ""
		w.volumesOK = true
	}
	w.mu.Unlock()
	w.markDirty()
	if err != nil {
		w.n.log.Warn("volumes not ready", "pod", w.key(), "err", err)
		return false
	}
	return true
}

// sessionPorts lists the ports whose connections count as sessions: the
// pod's localnode.drainscaler.io/session-ports annotation (comma-separated
// numbers) plus container ports named session or sessions.
func sessionPorts(pod *v1.Pod, c *v1.Container) []int {
	seen := map[int]bool{}
	if v := pod.Annotations[AnnotationSessionPorts]; v != "" {
		for _, p := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil && n > 0 {
				seen[n] = true
			}
		}
	}
	for _, cp := range c.Ports {
		if cp.Name == "session" || cp.Name == "sessions" {
			seen[int(cp.ContainerPort)] = true
		}
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// ---------------------------------------------------------------- status

func (w *podWorker) statusLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.dirty:
		}
		// Not ctx: a write in flight when the pod finishes is let complete
		// (finish waits for this loop) rather than aborted mid-request.
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := w.writeStatus(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
			w.n.log.Warn("update pod status", "pod", w.key(), "err", err)
			// Try again shortly.
			go func() {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
					w.markDirty()
				}
			}()
		}
		// Coalesce bursts of changes.
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (w *podWorker) writeStatus(ctx context.Context) error {
	for attempt := 0; attempt < 5; attempt++ {
		pod, err := w.n.pods.Pods(w.current().Namespace).Get(w.current().Name)
		if err != nil || pod.UID != w.uid || attempt > 0 {
			pod, err = w.n.client.CoreV1().Pods(w.current().Namespace).Get(ctx, w.current().Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if pod.UID != w.uid {
				return nil
			}
		}
		status := w.computeStatus(pod)
		if equality.Semantic.DeepEqual(status, pod.Status) {
			return nil
		}
		pod = pod.DeepCopy()
		pod.Status = status
		_, err = w.n.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		return err
	}
	return errors.New("too many conflicts")
}

func (w *podWorker) computeStatus(pod *v1.Pod) v1.PodStatus {
	w.mu.Lock()
	ip, start, setupErr, volumesOK, initDone := w.ip, w.startTime, w.setupErr, w.volumesOK, w.initDone
	w.mu.Unlock()

	st := *pod.Status.DeepCopy()
	st.ObservedGeneration = pod.Generation
	st.HostIP = "127.0.0.1"
	st.HostIPs = []v1.HostIP{{IP: "127.0.0.1"}}
	if ip != "" {
		st.PodIP = ip
		st.PodIPs = []v1.PodIP{{IP: ip}}
	}
	st.StartTime = start

	st.InitContainerStatuses = nil
	for _, c := range w.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, c.status(setupErr))
	}
	st.ContainerStatuses = nil
	allReady, anyRunning, allDone, anyFailed := true, false, true, false
	for _, c := range w.containers {
		cs := c.status(setupErr)
		if !initDone {
			cs.State = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "PodInitializing"}}
			if setupErr != "" {
				cs.State.Waiting = &v1.ContainerStateWaiting{Reason: "ContainerCreating", Message: setupErr}
			}
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		if cs.State.Running != nil {
			anyRunning = true
		}
		if c.finished() {
			if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
				anyFailed = true
			}
		} else {
			allDone = false
		}
	}
	initFailed := false
	for _, c := range w.inits {
		if c.finished() && !c.succeeded() {
			initFailed = true
		}
	}

	switch {
	case initFailed:
		st.Phase = v1.PodFailed
	case initDone && allDone && len(w.containers) > 0:
		st.Phase = v1.PodSucceeded
		if anyFailed {
			st.Phase = v1.PodFailed
		}
	case anyRunning || (initDone && anyStarted(w.containers)):
		st.Phase = v1.PodRunning
	default:
		st.Phase = v1.PodPending
	}

	now := metav1.Now()
	setCond := func(t v1.PodConditionType, ok bool, reason string) {
		s := v1.ConditionFalse
		if ok {
			s = v1.ConditionTrue
			reason = ""
		}
		for i := range st.Conditions {
			if st.Conditions[i].Type == t {
				if st.Conditions[i].Status != s {
					st.Conditions[i].Status = s
					st.Conditions[i].LastTransitionTime = now
				}
				st.Conditions[i].Reason = reason
				st.Conditions[i].ObservedGeneration = pod.Generation
				return
			}
		}
		st.Conditions = append(st.Conditions, v1.PodCondition{Type: t, Status: s, Reason: reason,
			LastTransitionTime: now, ObservedGeneration: pod.Generation})
	}
	ready := initDone && allReady && len(w.containers) > 0 && st.Phase == v1.PodRunning
	setCond(v1.PodReadyToStartContainers, volumesOK, "VolumesNotReady")
	setCond(v1.PodInitialized, initDone, "ContainersNotInitialized")
	setCond(v1.ContainersReady, ready, "ContainersNotReady")
	setCond(v1.PodReady, ready, "ContainersNotReady")
	sort.SliceStable(st.Conditions, func(i, j int) bool {
		return condOrder(st.Conditions[i].Type) < condOrder(st.Conditions[j].Type)
	})
	return st
}

func anyStarted(cs []*container) bool {
	for _, c := range cs {
		if c.everStarted() {
			return true
		}
	}
	return false
}

func condOrder(t v1.PodConditionType) int {
	switch t {
	case v1.PodReadyToStartContainers:
		return 0
	case v1.PodInitialized:
		return 1
	case v1.PodReady:
		return 2
	case v1.ContainersReady:
		return 3
	case v1.PodScheduled:
		return 4
	}
	return 5
}

// event records a Kubernetes event on the pod, as the kubelet does.
func (w *podWorker) event(eventType, reason, format string, args ...any) {
	w.n.events.Eventf(w.current(), eventType, reason, format, args...)
}
