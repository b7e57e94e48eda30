package localnode

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func everything() labels.Selector { return labels.Everything() }

func openDevNull() (*os.File, error) { return os.OpenFile(os.DevNull, os.O_WRONLY, 0) }

// probeClient is shared by all HTTP probes; like the kubelet's it keeps no
// connections open and does not verify HTTPS certificates.
var probeClient = &http.Client{
	Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // probes never verify, as in the kubelet
	},
}

// runProbes runs the startup, readiness and liveness probes of one process
// until ctx ends (the process exited).
func (c *container) runProbes(ctx context.Context, p *process) {
	spec := c.spec
	if spec.StartupProbe != nil {
		if !c.probeLoop(ctx, p, spec.StartupProbe, "startup", func(ok bool) bool {
			if ok {
				c.setState(func() {
					c.started = true
					if spec.ReadinessProbe == nil {
						c.ready = true
					}
				})
				return false // stop this loop
			}
			return true
		}) {
			return
		}
	}
	if spec.ReadinessProbe != nil {
		go c.probeLoop(ctx, p, spec.ReadinessProbe, "readiness", func(ok bool) bool {
			c.mu.Lock()
			changed := c.ready != ok
			c.ready = ok
			c.mu.Unlock()
			if changed {
				c.w.markDirty()
			}
			return true
		})
	}
	if spec.LivenessProbe != nil {
		go c.probeLoop(ctx, p, spec.LivenessProbe, "liveness", func(ok bool) bool { return true })
	}
	<-ctx.Done()
}

// probeLoop runs a probe every period and calls report with the result once
// the thresholds are met; report returns false to stop. It returns false if
// the process was killed because the probe failed (liveness, startup).
func (c *container) probeLoop(ctx context.Context, p *process, pr *v1.Probe, kind string, report func(bool) bool) bool {
	period := secondsOr(pr.PeriodSeconds, 10)
	timeout := secondsOr(pr.TimeoutSeconds, 1)
	success := int(max(pr.SuccessThreshold, 1))
	failure := int(max(pr.FailureThreshold, 3))
	delay := time.Duration(pr.InitialDelaySeconds) * time.Second
	if kind == "liveness" {
		// Like the kubelet's start-up jitter: do not judge liveness before
		// the process had one period to start listening.
		delay += period
	}
	select {
	case <-ctx.Done():
		return true
	case <-time.After(delay):
	}
	okRun, failRun := 0, 0
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.probeOnce(pctx, pr)
		cancel()
		if ctx.Err() != nil {
			return true
		}
		if err == nil {
			okRun, failRun = okRun+1, 0
			if okRun >= success && !report(true) {
				return true
			}
		} else {
			okRun, failRun = 0, failRun+1
			c.w.event(v1.EventTypeWarning, "Unhealthy", "%s%s probe failed: %s", strings.ToUpper(kind[:1]), kind[1:], err)
			if failRun >= failure {
				switch kind {
				case "liveness", "startup":
					c.w.n.log.Info("probe failed, restarting container", "pod", c.w.key(), "container", c.spec.Name, "probe", kind, "err", err)
					grace := graceOf(c.w.current())
					if pr.TerminationGracePeriodSeconds != nil {
						grace = time.Duration(*pr.TerminationGracePeriodSeconds) * time.Second
					}
					reason := "LivenessProbeFailed"
					if kind == "startup" {
						reason = "StartupProbeFailed"
					}
					go c.terminate(p, reason, grace, true)
					return false
				default:
					if !report(false) {
						return true
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return true
		case <-t.C:
		}
	}
}

func secondsOr(v int32, def int) time.Duration {
	if v <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(v) * time.Second
}

func (c *container) probeOnce(ctx context.Context, pr *v1.Probe) error {
	switch {
	case pr.HTTPGet != nil:
		_, err := c.w.httpGet(ctx, &c.spec, pr.HTTPGet)
		return err
	case pr.TCPSocket != nil:
		return c.w.tcpCheck(ctx, &c.spec, pr.TCPSocket.Host, pr.TCPSocket.Port)
	case pr.Exec != nil:
		_, err := c.w.execIn(ctx, &c.spec, pr.Exec.Command)
		return err
	case pr.GRPC != nil:
		return fmt.Errorf("grpc probes are not supported by localnode")
	}
	return fmt.Errorf("probe has no handler")
}
