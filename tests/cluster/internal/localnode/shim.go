package localnode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// ShimCommand is the hidden subcommand of the localnode binary that runs in
// a container's fresh mount namespace: it makes the bind mounts, sets the
// hostname and execs the container's command.
const ShimCommand = "exec-shim"

// Shim implements ShimCommand; it only returns on error.
func Shim(args []string) error {
	var hostname, workdir string
	var mounts []mount
	for len(args) > 0 {
		a := args[0]
		args = args[1:]
		if a == "--" {
			break
		}
		if len(args) == 0 {
			return fmt.Errorf("flag %s needs a value", a)
		}
		v := args[0]
		args = args[1:]
		switch a {
		case "--hostname":
			hostname = v
		case "--workdir":
			workdir = v
		case "--mount":
			parts := strings.Split(v, "=")
			if len(parts) < 2 {
				return fmt.Errorf("bad --mount %q", v)
			}
			mounts = append(mounts, mount{Source: parts[0], Target: parts[1], ReadOnly: len(parts) > 2 && parts[2] == "ro"})
		default:
			return fmt.Errorf("unknown flag %s", a)
		}
	}
	if len(args) == 0 {
		return errors.New("no command")
	}
	for _, m := range mounts {
		if err := bindMount(m); err != nil {
			return err
		}
	}
	if hostname != "" {
		if err := syscall.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	if workdir != "" {
		if err := os.MkdirAll(workdir, 0o755); err != nil {
			return err
		}
		if err := os.Chdir(workdir); err != nil {
			return err
		}
	}
	path := args[0]
	if !strings.Contains(path, "/") {
		// Look the command up in the container's PATH, like a runtime does.
		_ = os.Setenv("PATH", envOrDefault("PATH", defaultPath))
		p, err := exec.LookPath(path)
		if err != nil {
			return fmt.Errorf("command %q not found in PATH: %w", path, err)
		}
		path = p
	}
	return syscall.Exec(path, args, os.Environ())
}

func envOrDefault(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func bindMount(m mount) error {
	st, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("mount source: %w", err)
	}
	// The target must exist. It is created on the host's file system (the
	// namespace shares it); empty directories and files are left behind.
	if st.IsDir() {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount target: %w", err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
			return fmt.Errorf("mount target: %w", err)
		}
		if _, err := os.Stat(m.Target); errors.Is(err, os.ErrNotExist) {
			f, err := os.OpenFile(m.Target, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return fmt.Errorf("mount target: %w", err)
			}
			f.Close()
		}
	}
	if err := syscall.Mount(m.Source, m.Target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := syscall.Mount("", m.Target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", m.Target, err)
		}
	}
	return nil
}
