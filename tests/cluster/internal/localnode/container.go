package localnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// container is one container of a pod: a sequence of processes, restarted
// per the pod's restartPolicy with back-off.
type container struct {
	w    *podWorker
	spec v1.Container
	init bool

	mu       sync.Mutex
	proc     *process
	restarts int32
	state    v1.ContainerState
	last     v1.ContainerState
	ready    bool
	started  bool // startup probe passed (or none)
	ever     bool // a process has started at least once
	done     bool // will not run again
	success  bool // done with exit code 0
	stopping bool
	stopCh   chan struct{}
	waitErr  string // why the process cannot start (image, command)
}

func newContainer(w *podWorker, spec v1.Container, init bool) *container {
	return &container{
		w:      w,
		spec:   spec,
		init:   init,
		stopCh: make(chan struct{}),
		state:  v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}},
	}
}

func (c *container) finished() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func (c *container) succeeded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done && c.success
}

func (c *container) everStarted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ever
}

func (c *container) logPath(restarts int32) string {
	return filepath.Join(c.w.dir, "logs", fmt.Sprintf("%s-%d.log", c.spec.Name, restarts))
}

func (c *container) status(setupErr string) v1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	image, _ := c.w.n.cfg.Images.Resolve(c.spec.Image)
	cs := v1.ContainerStatus{
		Name:                 c.spec.Name,
		Image:                c.spec.Image,
		ImageID:              "localnode://" + image,
		RestartCount:         c.restarts,
		Ready:                c.ready,
		Started:              &c.started,
		State:                *c.state.DeepCopy(),
		LastTerminationState: *c.last.DeepCopy(),
	}
	if c.proc != nil {
		cs.ContainerID = fmt.Sprintf("localnode://%d", c.proc.pid)
	}
	if cs.State.Waiting != nil && cs.State.Waiting.Reason == "ContainerCreating" && c.waitErr == "" && setupErr != "" {
		cs.State.Waiting.Message = setupErr
	}
	return cs
}

func (c *container) setState(f func()) {
	c.mu.Lock()
	f()
	c.mu.Unlock()
	c.w.markDirty()
}

// run keeps an app container's process running per restartPolicy until
// stop is called or the policy says it is done.
func (c *container) run(ctx context.Context) {
	backoff := c.w.n.cfg.RestartBackoff
	for {
		p, ok := c.startOnce(ctx)
		if !ok {
			if c.isStopping() {
				return
			}
			if !c.sleep(backoff) {
				return
			}
			backoff = min(backoff*2, c.w.n.cfg.MaxRestartBackoff)
			continue
		}
		probeCtx, cancelProbes := context.WithCancel(ctx)
		go c.runProbes(probeCtx, p)
		<-p.done
		cancelProbes()
		code := c.recordExit(p)
		if c.isStopping() || !c.shouldRestart(code) {
			c.setState(func() { c.done, c.success = true, code == 0 })
			return
		}
		if time.Since(p.started) > 10*time.Minute {
			backoff = c.w.n.cfg.RestartBackoff
		}
		c.w.event(v1.EventTypeWarning, "BackOff", "Back-off %s restarting failed container %s", backoff, c.spec.Name)
		c.setState(func() {
			c.last = c.state
			c.restarts++
			c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{
				Reason:  "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", backoff, c.spec.Name, c.w.key()),
			}}
		})
		if !c.sleep(backoff) {
			return
		}
		backoff = min(backoff*2, c.w.n.cfg.MaxRestartBackoff)
	}
}

// runToCompletion runs an init container until it exits 0 (retrying per
// restartPolicy); false if it failed for good or the pod is going away.
func (c *container) runToCompletion(ctx context.Context) bool {
	backoff := c.w.n.cfg.RestartBackoff
	for {
		p, ok := c.startOnce(ctx)
		if ok {
			<-p.done
			code := c.recordExit(p)
			if code == 0 {
				c.setState(func() { c.done, c.success, c.ready = true, true, false })
				return true
			}
			if c.isStopping() || c.w.current().Spec.RestartPolicy == v1.RestartPolicyNever {
				c.setState(func() { c.done = true })
				return false
			}
			c.setState(func() { c.last = c.state; c.restarts++ })
		} else if c.isStopping() {
			return false
		}
		if !c.sleep(backoff) {
			return false
		}
		backoff = min(backoff*2, c.w.n.cfg.MaxRestartBackoff)
	}
}

func (c *container) shouldRestart(code int) bool {
	switch c.w.current().Spec.RestartPolicy {
	case v1.RestartPolicyNever:
		return false
	case v1.RestartPolicyOnFailure:
		return code != 0
	default:
		return true
	}
}

func (c *container) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

// sleep waits d unless the container is stopped; false when stopped.
func (c *container) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.stopCh:
		return false
	}
}

// startOnce starts one process for the container. Under c.mu so that stop
// either sees the process or prevents it.
func (c *container) startOnce(ctx context.Context) (*process, bool) {
	pod := c.w.current()
	argv, env, mounts, err := c.w.buildCommand(ctx, pod, &c.spec)
	c.mu.Lock()
	defer c.w.markDirty()
	defer c.mu.Unlock()
	if c.stopping {
		return nil, false
	}
	if err != nil {
		c.waitErr = err.Error()
		reason := "CreateContainerConfigError"
		if ie, ok := err.(imageError); ok {
			reason = "ErrImagePull"
			err = ie.error
		}
		c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: err.Error()}}
		c.w.n.log.Warn("container cannot start", "pod", c.w.key(), "container", c.spec.Name, "err", err)
		c.w.event(v1.EventTypeWarning, "Failed", "Error: %s", err)
		return nil, false
	}
	c.waitErr = ""
	logFile, err := os.OpenFile(c.logPath(c.restarts), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}}
		return nil, false
	}
	p, err := startProcess(c.w.n.cfg.Self, c.w.hostname(pod), c.spec.WorkingDir, argv, env, mounts, logFile)
	logFile.Close()
	if err != nil {
		c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}}
		c.w.n.log.Warn("container failed to start", "pod", c.w.key(), "container", c.spec.Name, "err", err)
		c.w.event(v1.EventTypeWarning, "Failed", "Error: %s", err)
		return nil, false
	}
	c.proc = p
	c.ever = true
	c.ready = false
	c.started = c.spec.StartupProbe == nil
	if c.spec.ReadinessProbe == nil && c.started && !c.init {
		c.ready = true
	}
	c.state = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: metav1.NewTime(p.started)}}
	c.w.n.log.Info("container started", "pod", c.w.key(), "container", c.spec.Name, "pid", p.pid, "argv", argv)
	c.w.event(v1.EventTypeNormal, "Started", "Started container %s (pid %d)", c.spec.Name, p.pid)
	return p, true
}

func (c *container) recordExit(p *process) int {
	code, reason := p.exitStatus()
	c.setState(func() {
		c.ready = false
		c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
			ExitCode:    int32(code),
			Reason:      reason,
			StartedAt:   metav1.NewTime(p.started),
			FinishedAt:  metav1.NewTime(p.finished),
			ContainerID: fmt.Sprintf("localnode://%d", p.pid),
		}}
	})
	c.w.n.log.Info("container exited", "pod", c.w.key(), "container", c.spec.Name, "pid", p.pid, "exitCode", code)
	return code
}

// stop ends the container for good: reason "" is a graceful pod deletion
// (preStop hook, SIGTERM, and SIGKILL when grace runs out).
func (c *container) stop(reason string, grace time.Duration) {
	c.mu.Lock()
	if !c.stopping {
		c.stopping = true
		close(c.stopCh)
	}
	p := c.proc
	c.mu.Unlock()
	if p == nil || p.exited() {
		return
	}
	c.terminate(p, reason, grace, reason == "")
}

// terminate ends one process: preStop hook (when asked), SIGTERM, then at
// the deadline SIGSTOP, destroy and record the session sockets, SIGKILL.
func (c *container) terminate(p *process, reason string, grace time.Duration, preStop bool) {
	deadline := time.Now().Add(grace)
	c.w.event(v1.EventTypeNormal, "Killing", "Stopping container %s (grace period %s)", c.spec.Name, grace)
	if preStop && grace > 0 && c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		if err := c.w.runHandler(ctx, &c.spec, c.spec.Lifecycle.PreStop); err != nil {
			c.w.n.log.Warn("preStop hook failed", "pod", c.w.key(), "container", c.spec.Name, "err", err)
		}
		cancel()
		// The kubelet gives at least 2s after a hook that used up the grace.
		if time.Until(deadline) < 2*time.Second {
			deadline = time.Now().Add(2 * time.Second)
		}
	}
	if grace > 0 {
		p.signal(syscall.SIGTERM)
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-p.done:
			t.Stop()
			return
		case <-t.C:
		}
	}
	if reason == "" {
		reason = "GracePeriodExpired"
	}
	c.killAndRecord(p, reason)
}

func (c *container) killAndRecord(p *process, reason string) {
	if p.exited() {
		return // it went by itself meanwhile (or another kill got it)
	}
	pod := c.w.current()
	rec := KillRecord{
		Time:       time.Now().UTC(),
		Node:       c.w.n.cfg.NodeName,
		Namespace:  pod.Namespace,
		Pod:        pod.Name,
		UID:        string(pod.UID),
		Container:  c.spec.Name,
		PodIP:      c.w.podIP(),
		Reason:     reason,
		Dropped:    []Connection{},
		Unanswered: []Connection{},
	}
	rec.SessionPorts = sessionPorts(pod, &c.spec)
	p.signal(syscall.SIGSTOP)
	if len(rec.SessionPorts) > 0 && rec.PodIP != "" {
		dropped, unanswered, err := destroySessions(rec.PodIP, rec.SessionPorts)
		if err != nil {
			rec.Error = err.Error()
		}
		if dropped != nil {
			rec.Dropped = dropped
		}
		if unanswered != nil {
			rec.Unanswered = unanswered
		}
	}
	rec.Sessions = len(rec.Dropped)
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		c.w.n.log.Error("process did not die after SIGKILL", "pod", c.w.key(), "pid", p.pid)
	}
	if err := c.w.n.drops.write(rec); err != nil {
		c.w.n.log.Error("write dropped-sessions record", "err", err)
	}
	c.w.n.log.Info("killed container", "pod", c.w.key(), "container", c.spec.Name, "reason", reason,
		"droppedSessions", rec.Sessions, "unanswered", len(rec.Unanswered))
	c.w.event(v1.EventTypeWarning, "Killed", "Container %s killed (%s) holding %d sessions", c.spec.Name, reason, rec.Sessions)
}
