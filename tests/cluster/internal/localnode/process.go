package localnode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// mount is a bind mount made inside the process's mount namespace.
type mount struct {
	Source   string
	Target   string
	ReadOnly bool
}

// process is one run of a container: the exec shim's pid, which becomes the
// container's main process after the shim sets up its mounts and execs.
type process struct {
	pid      int
	started  time.Time
	done     chan struct{}
	mu       sync.Mutex
	finished time.Time
	state    *os.ProcessState
}

// startProcess runs argv in a new mount and UTS namespace, in its own
// process group, killed if the local node dies.
func startProcess(self, hostname, workdir string, argv, env []string, mounts []mount, out *os.File) (*process, error) {
	args := []string{ShimCommand, "--hostname", hostname}
	if workdir != "" {
		args = append(args, "--workdir", workdir)
	}
	// Parents before children, so a mount inside another mount's target
	// is not hidden by it.
	sort.SliceStable(mounts, func(i, j int) bool {
		return strings.Count(mounts[i].Target, "/") < strings.Count(mounts[j].Target, "/")
	})
	for _, m := range mounts {
		spec := m.Source + "=" + m.Target
		if m.ReadOnly {
			spec += "=ro"
		}
		args = append(args, "--mount", spec)
	}
	args = append(args, "--")
	args = append(args, argv...)
	cmd := exec.Command(self, args...)
	cmd.Env = env
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:      true,
		Pdeathsig:    syscall.SIGKILL,
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", argv, err)
	}
	p := &process{pid: cmd.Process.Pid, started: time.Now(), done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.mu.Lock()
		p.finished = time.Now()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the whole process group.
func (p *process) signal(sig syscall.Signal) {
	if p.exited() {
		return
	}
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(p.pid, sig)
	}
}

// exitStatus is the exit code as the kubelet reports it (128+signal when
// killed) and the termination reason.
func (p *process) exitStatus() (int, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return -1, "Unknown"
	}
	code := p.state.ExitCode()
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	if code == 0 {
		return 0, "Completed"
	}
	return code, "Error"
}
