package localnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Serve runs the node's HTTPS endpoint: /healthz, and the kubelet's
// /containerLogs/{namespace}/{pod}/{container} so `kubectl logs` works
// (the API server connects to the node's InternalIP and kubelet port).
// Requests are not authenticated: it listens on loopback only.
func (n *Node) Serve(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-n.ready:
			_, _ = io.WriteString(w, "ok")
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", n.serveLogs)
	srv := &http.Server{Addr: n.cfg.Listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.ListenAndServeTLS(n.cfg.TLSCertFile, n.cfg.TLSKeyFile)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (n *Node) serveLogs(w http.ResponseWriter, r *http.Request) {
	ns, name, cname := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container")
	pod, err := n.pods.Pods(ns).Get(name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	n.mu.Lock()
	pw := n.workers[pod.UID]
	n.mu.Unlock()
	if pw == nil {
		http.Error(w, "pod is not running on this node", http.StatusNotFound)
		return
	}
	var c *container
	for _, cc := range append(append([]*container{}, pw.inits...), pw.containers...) {
		if cc.spec.Name == cname {
			c = cc
		}
	}
	if c == nil {
		http.Error(w, fmt.Sprintf("container %s is not valid for pod %s", cname, name), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	c.mu.Lock()
	restarts := c.restarts
	c.mu.Unlock()
	if q.Get("previous") == "true" {
		if restarts == 0 {
			http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", cname, name), http.StatusBadRequest)
			return
		}
		restarts--
	}
	f, err := os.Open(c.logPath(restarts))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	var out io.Writer = w
	if lb, err := strconv.ParseInt(q.Get("limitBytes"), 10, 64); err == nil && lb > 0 {
		out = &limitWriter{w: w, n: lb}
	}
	if tl, err := strconv.Atoi(q.Get("tailLines")); err == nil && tl >= 0 {
		data, _ := io.ReadAll(f)
		lines := strings.SplitAfter(string(data), "\n")
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		if len(lines) > tl {
			lines = lines[len(lines)-tl:]
		}
		_, _ = io.WriteString(out, strings.Join(lines, ""))
	} else {
		_, _ = io.Copy(out, bufio.NewReader(f))
	}
	if q.Get("follow") != "true" {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-pw.done:
			_, _ = io.Copy(out, f)
			return
		case <-time.After(300 * time.Millisecond):
		}
		if _, err := io.Copy(out, f); err != nil {
			return
		}
	}
}

type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	k, err := l.w.Write(p)
	l.n -= int64(k)
	return k, err
}
