package localnode

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A KillRecord is one line of the dropped-sessions log: a pod's process was
// killed (SIGKILL) while the kernel still held connections on its session
// ports. The node stops the process (SIGSTOP) first so nothing changes, then
// destroys those sockets (sock_diag SOCK_DESTROY, `ss -K`: the peer gets a
// reset) and records them, then kills. A connection the app had answered
// (it wrote bytes) is a dropped session; one still waiting in the accept
// queue, unanswered, is listed apart.
type KillRecord struct {
	Time         time.Time    `json:"time"`
	Node         string       `json:"node"`
	Namespace    string       `json:"namespace"`
	Pod          string       `json:"pod"`
	UID          string       `json:"uid"`
	Container    string       `json:"container"`
	PodIP        string       `json:"podIP"`
	Reason       string       `json:"reason"` // GracePeriodExpired, PodDeleted, LivenessProbeFailed, NodeShutdown
	SessionPorts []int        `json:"sessionPorts"`
	Sessions     int          `json:"sessions"` // len(Dropped)
	Dropped      []Connection `json:"dropped"`
	Unanswered   []Connection `json:"unanswered"`
	Error        string       `json:"error,omitempty"` // the sockets could not be listed
}

// Connection is one TCP connection as the server side saw it.
type Connection struct {
	Local     string `json:"local"`  // podIP:port
	Remote    string `json:"remote"` // the client's ip:port
	BytesSent int64  `json:"bytesSent"`
}

type dropLog struct {
	mu   sync.Mutex
	path string
}

func openDropLog(path string) (*dropLog, error) {
	if path == "" {
		return &dropLog{}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open dropped-sessions log: %w", err)
	}
	f.Close()
	return &dropLog{path: path}, nil
}

func (d *dropLog) write(r KillRecord) error {
	if d.path == "" {
		return nil
	}
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := os.OpenFile(d.path, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(line, '\n'))
	return err
}

// destroySessions destroys the established TCP connections on ip:port for
// each port and returns them, split into answered and unanswered.
func destroySessions(ip string, ports []int) (dropped, unanswered []Connection, err error) {
	for _, port := range ports {
		// -K destroys every socket it lists; with a state filter ss omits
		// the State column.
		out, runErr := exec.Command("ss", "-K", "-t", "-n", "-i", "-H", "state", "established",
			"src", ip+":"+strconv.Itoa(port)).Output()
		if runErr != nil {
			return dropped, unanswered, fmt.Errorf("ss -K on %s:%d: %w", ip, port, runErr)
		}
		for _, c := range parseSS(string(out)) {
			if c.BytesSent > 0 {
				dropped = append(dropped, c)
			} else {
				unanswered = append(unanswered, c)
			}
		}
	}
	return dropped, unanswered, nil
}

// parseSS reads `ss -t -n -i -H state ...` output: a line per socket
// (Recv-Q Send-Q Local Peer) followed by an indented line of key:value
// details, where bytes_sent is absent when zero.
func parseSS(out string) []Connection {
	var conns []Connection
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(conns) == 0 {
				continue
			}
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "bytes_sent:"); ok {
					if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > conns[len(conns)-1].BytesSent {
						conns[len(conns)-1].BytesSent = n
					}
				}
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		c := Connection{Local: f[2], Remote: f[3]}
		// Bytes written but not yet sent still count as an answer.
		if q, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			c.BytesSent = q
		}
		conns = append(conns, c)
	}
	return conns
}
