// Command session-app is drainscaler's demo workload: a server that holds
// sessions, exports Prometheus metrics and sends drainscaler heartbeats
// (DESIGN.md §4). It uses the standard library only so it builds in seconds.
//
// Session protocol (TCP, one session per connection, lines end in "\n"):
//
//	client: SESSION <id> <length>     length is a Go duration ("1500ms") or milliseconds
//	server: OK <pod>                  the session is open and counted
//	server: END                       sent when the length has elapsed, then the server closes
//	server: NO <reason>               refused (draining, terminating, full, bad-request), then closes
//
// A session completed when the client read END and then a clean end of
// stream. Anything else after OK (a reset, or an end of stream without END)
// means the session was dropped. The server closes a session's socket only
// after writing END, so "the socket is still established on the server" and
// "the client will not see a clean END" are the same fact; the local node
// relies on that to count dropped sessions from the kernel's socket table.
//
// On SIGTERM it logs "terminating" with the sessions it holds (open=N and their
// ids), then "session over after SIGTERM" (its id, open=N) as each ends, then
// "no sessions left, exiting". A pod killed before the last line died holding
// its last open=N, the sessions not logged as over:
// on a real kubelet that log is how sessions cut are counted from the server's
// side (scripts/demo reads it with kubectl logs).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "session-app:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(cfg, logger); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(1)
	}
}

type config struct {
	listenIP          string
	sessionPort       int
	httpPort          int
	maxSessions       int
	maxSessionLength  time.Duration
	heartbeatURL      string
	heartbeatInterval time.Duration
	heartbeatSource   string // local address heartbeats are sent from; empty lets the OS choose
	tokenFile         string
	pod               string // "namespace/name", sent only in dev mode
	podName           string
	drainingFile      string
	heartbeatCAFile   string
	heartbeatTLS      *tls.Config // from heartbeatCAFile; nil uses the system roots
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(key)); err == nil {
		return v
	}
	return def
}

func parseConfig(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("session-app", flag.ContinueOnError)
	fs.StringVar(&c.listenIP, "listen-ip", envOr("POD_IP", "127.0.0.1"), "address to listen on (env POD_IP)")
	fs.IntVar(&c.sessionPort, "session-port", envInt("SESSION_PORT", 7000), "TCP port for sessions (env SESSION_PORT)")
	fs.IntVar(&c.httpPort, "http-port", envInt("HTTP_PORT", 8080), "HTTP port for /metrics, /healthz, /readyz (env HTTP_PORT)")
	fs.IntVar(&c.maxSessions, "max-sessions", envInt("MAX_SESSIONS", 0), "most sessions held at once, 0 for no limit (env MAX_SESSIONS)")
	fs.DurationVar(&c.maxSessionLength, "max-session-length", envDuration("MAX_SESSION_LENGTH", time.Hour), "longest session length a client may ask for")
	fs.StringVar(&c.heartbeatURL, "heartbeat-url", os.Getenv("HEARTBEAT_URL"), "drainscaler base URL; heartbeats go to {url}/v1/heartbeats; empty disables (env HEARTBEAT_URL)")
	fs.DurationVar(&c.heartbeatInterval, "heartbeat-interval", envDuration("HEARTBEAT_INTERVAL", 5*time.Second), "time between heartbeats (env HEARTBEAT_INTERVAL)")
	fs.StringVar(&c.heartbeatSource, "heartbeat-source-ip", os.Getenv("HEARTBEAT_SOURCE_IP"),
		"send heartbeats from this local IP (e.g. the pod IP, so that a network policy or a test's proxy can tell pods apart); empty lets the OS choose (env HEARTBEAT_SOURCE_IP)")
	fs.StringVar(&c.tokenFile, "token-file", envOr("HEARTBEAT_TOKEN_FILE", "/var/run/secrets/drainscaler.io/serviceaccount/token"),
		"projected ServiceAccount token (audience drainscaler), read before every heartbeat; when it does not exist heartbeats are unauthenticated and name the pod (dev mode) (env HEARTBEAT_TOKEN_FILE)")
	fs.StringVar(&c.heartbeatCAFile, "heartbeat-ca-file", os.Getenv("HEARTBEAT_CA_FILE"),
		"PEM CA bundle that signs drainscaler's heartbeat certificate, for an https -heartbeat-url (env HEARTBEAT_CA_FILE)")
	fs.StringVar(&c.drainingFile, "draining-file", os.Getenv("DRAINING_FILE"), "optional downward API file of the pod's annotations; drainscaler.io/draining=\"true\" there also drains (env DRAINING_FILE)")
	ns := envOr("POD_NAMESPACE", "default")
	fs.StringVar(&c.podName, "pod-name", envOr("POD_NAME", hostname()), "this instance's pod name (env POD_NAME)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if net.ParseIP(c.listenIP) == nil {
		return c, fmt.Errorf("-listen-ip %q is not an IP address", c.listenIP)
	}
	if c.heartbeatSource != "" && net.ParseIP(c.heartbeatSource) == nil {
		return c, fmt.Errorf("-heartbeat-source-ip %q is not an IP address", c.heartbeatSource)
	}
	if c.heartbeatInterval <= 0 {
		return c, errors.New("-heartbeat-interval must be positive")
	}
	if c.heartbeatCAFile != "" {
		pem, err := os.ReadFile(c.heartbeatCAFile)
		if err != nil {
			return c, fmt.Errorf("-heartbeat-ca-file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return c, fmt.Errorf("-heartbeat-ca-file %s holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", c.heartbeatCAFile)
		}
		if !strings.HasPrefix(c.heartbeatURL, "https://") {
			return c, fmt.Errorf("-heartbeat-ca-file is set but -heartbeat-url %q is not https://: the token would cross the network in clear text", c.heartbeatURL)
		}
		c.heartbeatTLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	c.pod = ns + "/" + c.podName
	return c, nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "session-app"
	}
	return h
}

// server is the whole mutable state, guarded by mu.
type server struct {
	cfg    config
	log    *slog.Logger
	mu     sync.Mutex
	open   map[string]*session
	seq    uint64
	drain  drainState
	closed bool // SIGTERM received
	// unready is set by POST /ready?on=false: readiness fails while sessions are still taken
	// and heartbeats still sent, as when a dependency check fails.
	unready bool
	// zero is closed (and replaced) whenever the open count drops to zero.
	zero chan struct{}
	m    metrics
}

type drainState struct {
	heartbeat  bool // the last heartbeat reply said drain
	annotation bool // drainscaler.io/draining="true" in the downward API file
	manual     bool // POST /drain
}

func (d drainState) on() bool { return d.heartbeat || d.annotation || d.manual }

type session struct {
	ID      string        `json:"id"`
	Remote  string        `json:"remote"`
	Started time.Time     `json:"started"`
	Length  time.Duration `json:"lengthNanos"`
}

type metrics struct {
	requests   uint64
	started    uint64
	completed  uint64
	abandoned  uint64
	rejected   map[string]uint64
	heartbeats map[string]uint64
}

func run(cfg config, log *slog.Logger) error {
	s := &server{
		cfg:  cfg,
		log:  log,
		open: map[string]*session{},
		zero: make(chan struct{}),
		m:    metrics{rejected: map[string]uint64{}, heartbeats: map[string]uint64{}},
	}
	close(s.zero) // no sessions yet

	sessAddr := net.JoinHostPort(cfg.listenIP, strconv.Itoa(cfg.sessionPort))
	ln, err := net.Listen("tcp", sessAddr)
	if err != nil {
		return fmt.Errorf("listen for sessions: %w", err)
	}
	httpAddr := net.JoinHostPort(cfg.listenIP, strconv.Itoa(cfg.httpPort))
	hln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return fmt.Errorf("listen for http: %w", err)
	}
	hs := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(hln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	go s.acceptLoop(ln)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if cfg.heartbeatURL != "" {
		go s.heartbeatLoop(ctx)
	}
	if cfg.drainingFile != "" {
		go s.watchDrainingFile(ctx)
	}
	log.Info("serving", "sessions", sessAddr, "http", httpAddr, "maxSessions", cfg.maxSessions,
		"heartbeatURL", cfg.heartbeatURL, "heartbeatInterval", cfg.heartbeatInterval)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	got := <-sig
	// Keep the listener open: new sessions get an explicit "NO terminating"
	// instead of a reset, and readiness fails so Services stop routing here.
	s.mu.Lock()
	s.closed = true
	held := make([]string, 0, len(s.open))
	for key := range s.open {
		held = append(held, key)
	}
	zero := s.zero
	s.mu.Unlock()
	sort.Strings(held)
	log.Info("terminating: refusing new sessions, waiting for open ones to end", "signal", got.String(),
		"open", len(held), "sessions", strings.Join(held, ","))
	<-zero
	log.Info("no sessions left, exiting")
	_ = hs.Close()
	_ = ln.Close()
	return nil
}

func (s *server) acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept", "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. EMFILE; do not spin
			continue
		}
		go s.handle(c)
	}
}

// admit decides whether a new session may open and registers it if so,
// under a unique key (clients may reuse ids).
func (s *server) admit(id, remote string, length time.Duration) (key, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m.requests++
	switch {
	case s.closed:
		reason = "terminating"
	case s.drain.on():
		reason = "draining"
	case s.cfg.maxSessions > 0 && len(s.open) >= s.cfg.maxSessions:
		reason = "full"
	case length <= 0 || length > s.cfg.maxSessionLength || id == "":
		reason = "bad-request"
	}
	if reason != "" {
		s.m.rejected[reason]++
		return "", reason
	}
	key = id
	if _, dup := s.open[key]; dup {
		s.seq++
		key = fmt.Sprintf("%s#%d", id, s.seq)
	}
	if len(s.open) == 0 {
		s.zero = make(chan struct{})
	}
	s.open[key] = &session{ID: key, Remote: remote, Started: time.Now(), Length: length}
	s.m.started++
	return key, ""
}

func (s *server) finish(key string, abandoned bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.open[key]; !ok {
		return
	}
	delete(s.open, key)
	if abandoned {
		s.m.abandoned++
	} else {
		s.m.completed++
	}
	if s.closed {
		// With the "terminating" line, these make the log say how many sessions the
		// pod still held when it died: its last "open" count, unless it logged that it
		// exited with none. A session counts as over only once it is logged here.
		s.log.Info("session over after SIGTERM", "id", key, "abandoned", abandoned, "open", len(s.open))
	}
	if len(s.open) == 0 {
		close(s.zero)
	}
}

func parseLength(s string) (time.Duration, error) {
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(ms) * time.Millisecond, nil
	}
	return time.ParseDuration(s)
}

func (s *server) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
	if err != nil {
		return // not a session; nothing was admitted
	}
	_ = c.SetReadDeadline(time.Time{})
	fields := strings.Fields(line)
	var id string
	var length time.Duration
	if len(fields) == 3 && fields[0] == "SESSION" {
		id = fields[1]
		length, err = parseLength(fields[2])
		if err != nil {
			length = 0
		}
	}
	key, reason := s.admit(id, c.RemoteAddr().String(), length)
	if reason != "" {
		_, _ = io.WriteString(c, "NO "+reason+"\n")
		return
	}
	if _, err := io.WriteString(c, "OK "+s.cfg.podName+"\n"); err != nil {
		s.finish(key, true)
		return
	}
	// The client sends nothing more; a read returning means it went away.
	gone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c)
		close(gone)
	}()
	t := time.NewTimer(length)
	defer t.Stop()
	select {
	case <-t.C:
		// END is written before the socket is closed (by the deferred Close):
		// the close is the moment the session stops being held.
		_, _ = io.WriteString(c, "END\n")
		s.finish(key, false)
	case <-gone:
		s.finish(key, true)
	}
}

func (s *server) ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return false, "terminating"
	case s.drain.on():
		return false, "draining"
	case s.unready:
		return false, "unready"
	}
	return true, "ok"
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := s.ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = io.WriteString(w, why+"\n")
	})
	mux.HandleFunc("GET /metrics", s.serveMetrics)
	mux.HandleFunc("GET /sessions", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		out := struct {
			Pod         string     `json:"pod"`
			Active      int        `json:"active"`
			Draining    bool       `json:"draining"`
			Terminating bool       `json:"terminating"`
			Sessions    []*session `json:"sessions"`
		}{Pod: s.cfg.pod, Active: len(s.open), Draining: s.drain.on(), Terminating: s.closed}
		for _, ss := range s.open {
			cp := *ss
			out.Sessions = append(out.Sessions, &cp)
		}
		s.mu.Unlock()
		sort.Slice(out.Sessions, func(i, j int) bool { return out.Sessions[i].ID < out.Sessions[j].ID })
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	// Manual drain switch for trying the app without drainscaler.
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		on, err := strconv.ParseBool(r.URL.Query().Get("on"))
		if err != nil {
			http.Error(w, "want ?on=true|false", http.StatusBadRequest)
			return
		}
		s.setDrain(func(d *drainState) { d.manual = on }, "manual")
		_, _ = io.WriteString(w, "ok\n")
	})
	// Readiness switch for fault injection: on=false fails /readyz without draining.
	mux.HandleFunc("POST /ready", func(w http.ResponseWriter, r *http.Request) {
		on, err := strconv.ParseBool(r.URL.Query().Get("on"))
		if err != nil {
			http.Error(w, "want ?on=true|false", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.unready = !on
		s.mu.Unlock()
		s.log.Info("readiness switched", "ready", on)
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

func (s *server) setDrain(change func(*drainState), source string) {
	s.mu.Lock()
	before := s.drain.on()
	change(&s.drain)
	after := s.drain.on()
	s.mu.Unlock()
	if before != after {
		s.log.Info("drain changed", "draining", after, "source", source)
	}
}

func (s *server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	var b strings.Builder
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	gauge := func(name, help string, v int) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", name, help, name, name, v)
	}
	labelled := func(name, help, label string, m map[string]uint64, keys []string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s{%s=%q} %d\n", name, label, k, m[k])
		}
	}
	counter("app_requests_total", "Session requests received, admitted or not.", s.m.requests)
	gauge("app_active_sessions", "Sessions open now.", len(s.open))
	counter("app_sessions_started_total", "Sessions admitted.", s.m.started)
	counter("app_sessions_completed_total", "Sessions that ran their whole length.", s.m.completed)
	counter("app_sessions_abandoned_total", "Sessions the client closed early.", s.m.abandoned)
	labelled("app_sessions_rejected_total", "Session requests refused, by reason.", "reason", s.m.rejected,
		[]string{"bad-request", "draining", "full", "terminating"})
	drain := 0
	if s.drain.on() {
		drain = 1
	}
	gauge("app_draining", "1 while the instance refuses new sessions because it is draining.", drain)
	gauge("app_max_sessions", "Configured capacity, 0 for none.", s.cfg.maxSessions)
	labelled("app_heartbeats_total", "Heartbeats sent, by result.", "result", s.m.heartbeats, []string{"error", "ok"})
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = io.WriteString(w, b.String())
}

type heartbeat struct {
	Sessions int    `json:"sessions"`
	Pod      string `json:"pod,omitempty"` // dev mode only
	// The count was taken while this instance refused new sessions: drainscaler may take a
	// zero sent so as the end of a drain.
	Draining bool `json:"draining,omitempty"`
}

type heartbeatReply struct {
	Drain *bool `json:"drain"`
}

func (s *server) heartbeatLoop(ctx context.Context) {
	url := strings.TrimRight(s.cfg.heartbeatURL, "/") + "/v1/heartbeats"
	client := &http.Client{Timeout: s.cfg.heartbeatInterval}
	if s.cfg.heartbeatSource != "" || s.cfg.heartbeatTLS != nil {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		if s.cfg.heartbeatSource != "" {
			dialer := &net.Dialer{
				LocalAddr: &net.TCPAddr{IP: net.ParseIP(s.cfg.heartbeatSource)},
				Timeout:   s.cfg.heartbeatInterval,
			}
			transport.DialContext = dialer.DialContext
		}
		if s.cfg.heartbeatTLS != nil {
			transport.TLSClientConfig = s.cfg.heartbeatTLS
		}
		client.Transport = transport
	}
	t := time.NewTicker(s.cfg.heartbeatInterval)
	defer t.Stop()
	lastErr := ""
	for {
		err := s.sendHeartbeat(ctx, client, url)
		s.mu.Lock()
		if err != nil {
			s.m.heartbeats["error"]++
		} else {
			s.m.heartbeats["ok"]++
		}
		s.mu.Unlock()
		// Log failures when they change, not every few seconds.
		if msg := fmt.Sprint(err); err != nil && msg != lastErr {
			s.log.Warn("heartbeat failed", "url", url, "err", err)
			lastErr = msg
		} else if err == nil && lastErr != "" {
			s.log.Info("heartbeats recovered", "url", url)
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *server) sendHeartbeat(ctx context.Context, client *http.Client, url string) error {
	s.mu.Lock()
	// Counted under the same lock as the drain state, so "draining" says the count was taken
	// while no new session could be accepted.
	hb := heartbeat{Sessions: len(s.open), Draining: s.drain.on()}
	s.mu.Unlock()
	// Read the token every time: the kubelet (here: the local node) rotates it.
	token, err := os.ReadFile(s.cfg.tokenFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		hb.Pod = s.cfg.pod
	case err != nil:
		return fmt.Errorf("read token: %w", err)
	}
	body, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if hb.Pod == "" {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
	}
	var reply heartbeatReply
	if err := json.Unmarshal(data, &reply); err != nil {
		return fmt.Errorf("decode reply %q: %w", data, err)
	}
	if reply.Drain != nil {
		s.setDrain(func(d *drainState) { d.heartbeat = *reply.Drain }, "heartbeat")
	}
	return nil
}

// watchDrainingFile polls a downward API annotations file, whose lines look
// like key="value" with Go-style quoting.
func (s *server) watchDrainingFile(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		on := false
		if data, err := os.ReadFile(s.cfg.drainingFile); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				k, v, ok := strings.Cut(line, "=")
				if !ok || k != "drainscaler.io/draining" {
					continue
				}
				if uq, err := strconv.Unquote(v); err == nil {
					v = uq
				}
				on = v == "true"
			}
		}
		s.setDrain(func(d *drainState) { d.annotation = on }, "annotation")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
