// Package traffic opens sessions against the demo session app
// (examples/session-app) behind a Service, following a rate shape, and
// records the fate of every session. It is a library for tests and the
// command cmd/traffic.
//
// Each new session goes straight to one pod: a ready endpoint of the Service
// (computed from Pods by package endpoints, watched with client-go), the one
// holding the fewest of this generator's open sessions. Session lengths are
// exponential with a seeded source, so a run is reproducible up to timing.
//
// Fates:
//   - completed: the server said OK, then END, then closed cleanly.
//   - dropped:   the server said OK, and the connection then ended any
//     other way (reset, or closed without END) — the instance went away
//     while holding the session.
//   - rejected:  no OK: no ready endpoint, connection refused, the server
//     answered NO <reason>, or the connection ended before any answer.
//   - abandoned: still open when the run's wait ran out; the client closed it.
package traffic

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/drainscaler/drainscaler/tests/cluster/endpoints"
)

// Outcome is a session's fate.
type Outcome string

const (
	Completed Outcome = "completed"
	Dropped   Outcome = "dropped"
	Rejected  Outcome = "rejected"
	Abandoned Outcome = "abandoned"
)

// Config describes a run.
type Config struct {
	Client    kubernetes.Interface
	Namespace string
	Service   string
	// Port is the Service port's name or number; empty means its only port.
	Port  string
	Shape Shape
	// Duration is how long new sessions are opened.
	Duration time.Duration
	// MeanLength is the mean of the exponential session length; lengths are
	// capped at MaxLength (default 5×mean) and floored at 10ms.
	MeanLength time.Duration
	MaxLength  time.Duration
	// FixedLength, when set, gives every session this length instead.
	FixedLength time.Duration
	Seed        uint64
	// Wait is how long to wait, after Duration, for open sessions to end
	// before abandoning them (default MaxLength + 10s).
	Wait time.Duration
	// MaxSessions stops opening sessions after this many attempts (0: no limit).
	MaxSessions int
	DialTimeout time.Duration
}

// Session is one session's record.
type Session struct {
	ID       string        `json:"id"`
	Pod      string        `json:"pod,omitempty"`
	Endpoint string        `json:"endpoint,omitempty"` // podIP:port dialled
	Local    string        `json:"local,omitempty"`    // the client's ip:port, as the server sees it
	Start    time.Time     `json:"start"`
	End      time.Time     `json:"end"`
	Length   time.Duration `json:"lengthNanos"`
	Outcome  Outcome       `json:"outcome"`
	Reason   string        `json:"reason,omitempty"`
}

// Result sums up a run. Opened counts sessions the server accepted (OK).
type Result struct {
	Shape        string         `json:"shape"`
	Seed         uint64         `json:"seed"`
	Started      time.Time      `json:"started"`
	Ended        time.Time      `json:"ended"`
	Attempts     int            `json:"attempts"`
	Opened       int            `json:"opened"`
	Completed    int            `json:"completed"`
	Dropped      int            `json:"dropped"`
	Rejected     int            `json:"rejected"`
	Abandoned    int            `json:"abandoned"`
	RejectedBy   map[string]int `json:"rejectedBy"`
	DroppedByPod map[string]int `json:"droppedByPod"`
	OpenedByPod  map[string]int `json:"openedByPod"`
	Sessions     []Session      `json:"sessions,omitempty"`
}

// Summary is Result without the per-session records.
func (r *Result) Summary() Result {
	s := *r
	s.Sessions = nil
	return s
}

// Live is a snapshot of a run in progress.
type Live struct {
	Attempts, Opened, Open, Completed, Dropped, Rejected int
	OpenByPod                                            map[string]int
}

// Generator runs one Config once.
type Generator struct {
	cfg Config

	mu       sync.Mutex
	inflight map[string]int // by endpoint address: sessions open now
	rr       int
	sessions []*Session
	live     Live
	wg       sync.WaitGroup
	started  time.Time
	done     chan struct{}
	result   *Result
	err      error
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Generator, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Service == "" || cfg.Shape == nil {
		return nil, errors.New("traffic: Client, Namespace, Service and Shape are required")
	}
	if cfg.FixedLength <= 0 && cfg.MeanLength <= 0 {
		return nil, errors.New("traffic: MeanLength or FixedLength must be positive")
	}
	if cfg.MaxLength <= 0 {
		cfg.MaxLength = 5 * cfg.MeanLength
		if cfg.FixedLength > 0 {
			cfg.MaxLength = cfg.FixedLength
		}
	}
	if cfg.Wait <= 0 {
		cfg.Wait = cfg.MaxLength + 10*time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	return &Generator{cfg: cfg, inflight: map[string]int{}, done: make(chan struct{}),
		live: Live{OpenByPod: map[string]int{}}}, nil
}

// Run opens sessions for cfg.Duration, waits for them, and returns the result.
func (g *Generator) Run(ctx context.Context) (*Result, error) {
	if err := g.Start(ctx); err != nil {
		return nil, err
	}
	return g.Wait()
}

// Start begins the run in the background once the endpoint watch has
// synced; use Snapshot to follow it and Wait for the result.
func (g *Generator) Start(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(g.cfg.Client, 0, informers.WithNamespace(g.cfg.Namespace))
	pods := factory.Core().V1().Pods().Lister()
	svcs := factory.Core().V1().Services().Lister()
	factory.Core().V1().Pods().Informer()
	factory.Core().V1().Services().Informer()
	watchCtx, stopWatch := context.WithCancel(context.Background())
	factory.Start(watchCtx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for typ, ok := range factory.WaitForCacheSync(syncCtx.Done()) {
		if !ok {
			stopWatch()
			return fmt.Errorf("traffic: watch of %v did not sync", typ)
		}
	}
	pick := func() (endpoints.Endpoint, string) {
		svc, err := svcs.Services(g.cfg.Namespace).Get(g.cfg.Service)
		if err != nil {
			return endpoints.Endpoint{}, "no-service"
		}
		sp, ok := endpoints.FindPort(svc, g.cfg.Port)
		if !ok {
			return endpoints.Endpoint{}, "no-such-port"
		}
		all, _ := pods.List(labels.Everything())
		ready := endpoints.ReadyOnly(endpoints.ForPort(svc, sp, all))
		if len(ready) == 0 {
			return endpoints.Endpoint{}, "no-ready-endpoint"
		}
		return g.leastConnections(ready), ""
	}
	g.started = time.Now()
	go func() {
		defer close(g.done)
		defer stopWatch()
		g.result = g.loop(ctx, pick)
	}()
	return nil
}

// leastConnections picks the ready endpoint with the fewest open sessions;
// ties go round robin.
func (g *Generator) leastConnections(ready []endpoints.Endpoint) endpoints.Endpoint {
	g.mu.Lock()
	defer g.mu.Unlock()
	best := -1
	n := len(ready)
	for k := 0; k < n; k++ {
		i := (g.rr + k) % n
		if best < 0 || g.inflight[ready[i].Addr()] < g.inflight[ready[best].Addr()] {
			best = i
		}
	}
	g.rr++
	return ready[best]
}

// Snapshot reports the run so far.
func (g *Generator) Snapshot() Live {
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.live
	l.OpenByPod = map[string]int{}
	for k, v := range g.live.OpenByPod {
		if v > 0 {
			l.OpenByPod[k] = v
		}
	}
	return l
}

// Wait blocks until the run ends.
func (g *Generator) Wait() (*Result, error) {
	<-g.done
	return g.result, g.err
}

func (g *Generator) loop(ctx context.Context, pick func() (endpoints.Endpoint, string)) *Result {
	arrivals := rand.New(rand.NewPCG(g.cfg.Seed, 1))
	lengths := rand.New(rand.NewPCG(g.cfg.Seed, 2))
	sessCtx, abandon := context.WithCancel(context.Background())
	defer abandon()
	maxRate := g.cfg.Shape.MaxRate()
	at := time.Duration(0)
	attempts := 0
	for maxRate > 0 {
		// Thinning: candidates at maxRate, each kept with Rate(t)/maxRate.
		at += time.Duration(arrivals.ExpFloat64() / maxRate * float64(time.Second))
		if at >= g.cfg.Duration || (g.cfg.MaxSessions > 0 && attempts >= g.cfg.MaxSessions) {
			break
		}
		if arrivals.Float64()*maxRate >= g.cfg.Shape.Rate(at) {
			continue
		}
		length := g.cfg.FixedLength
		if length <= 0 {
			length = time.Duration(lengths.ExpFloat64() * float64(g.cfg.MeanLength))
			length = min(max(length, 10*time.Millisecond), g.cfg.MaxLength)
		}
		select {
		case <-ctx.Done():
			g.drain(abandon, 0)
			return g.finish()
		case <-time.After(time.Until(g.started.Add(at))):
		}
		attempts++
		s := &Session{ID: fmt.Sprintf("s%d", attempts), Start: time.Now(), Length: length}
		g.mu.Lock()
		g.sessions = append(g.sessions, s)
		g.live.Attempts++
		g.mu.Unlock()
		ep, why := pick()
		if why != "" {
			g.settle(s, "", Rejected, why)
			continue
		}
		g.mu.Lock()
		g.inflight[ep.Addr()]++
		g.mu.Unlock()
		s.Pod, s.Endpoint = ep.Pod, ep.Addr()
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.session(sessCtx, s)
		}()
	}
	wait := g.cfg.Wait
	if ctx.Err() != nil {
		wait = 0
	}
	g.drain(abandon, wait)
	return g.finish()
}

// drain waits up to wait for open sessions, then abandons the rest.
func (g *Generator) drain(abandon context.CancelFunc, wait time.Duration) {
	all := make(chan struct{})
	go func() { g.wg.Wait(); close(all) }()
	select {
	case <-all:
		return
	case <-time.After(wait):
	}
	abandon()
	<-all
}

func (g *Generator) finish() *Result {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := &Result{
		Shape: g.cfg.Shape.String(), Seed: g.cfg.Seed, Started: g.started, Ended: time.Now(),
		RejectedBy: map[string]int{}, DroppedByPod: map[string]int{}, OpenedByPod: map[string]int{},
	}
	for _, s := range g.sessions {
		r.Attempts++
		switch s.Outcome {
		case Completed:
			r.Completed++
		case Dropped:
			r.Dropped++
			r.DroppedByPod[s.Pod]++
		case Rejected:
			r.Rejected++
			r.RejectedBy[s.Reason]++
		case Abandoned:
			r.Abandoned++
		}
		if s.Outcome != Rejected {
			r.Opened++
			r.OpenedByPod[s.Pod]++
		}
		r.Sessions = append(r.Sessions, *s)
	}
	sort.Slice(r.Sessions, func(i, j int) bool { return r.Sessions[i].Start.Before(r.Sessions[j].Start) })
	return r
}

// settle records a session's fate and frees its endpoint slot.
func (g *Generator) settle(s *Session, endpoint string, o Outcome, reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s.Outcome, s.Reason, s.End = o, reason, time.Now()
	if endpoint != "" {
		g.inflight[endpoint]--
	}
	switch o {
	case Completed:
		g.live.Completed++
	case Dropped:
		g.live.Dropped++
	case Rejected:
		g.live.Rejected++
	}
}

func (g *Generator) markOpen(s *Session, open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if open {
		g.live.Opened++
		g.live.Open++
		g.live.OpenByPod[s.Pod]++
	} else {
		g.live.Open--
		g.live.OpenByPod[s.Pod]--
	}
}

func (g *Generator) session(ctx context.Context, s *Session) {
	d := net.Dialer{Timeout: g.cfg.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", s.Endpoint)
	if err != nil {
		reason := "dial-error"
		if errors.Is(err, syscall.ECONNREFUSED) {
			reason = "refused"
		}
		g.settle(s, s.Endpoint, Rejected, reason)
		return
	}
	defer conn.Close()
	s.Local = conn.LocalAddr().String()
	// Closing the connection is how a wait that ran out abandons it.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if _, err := fmt.Fprintf(conn, "SESSION %s %d\n", s.ID, s.Length.Milliseconds()); err != nil {
		g.settle(s, s.Endpoint, Rejected, "write-error")
		return
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		if ctx.Err() != nil {
			g.settle(s, s.Endpoint, Rejected, "abandoned-before-reply")
		} else {
			g.settle(s, s.Endpoint, Rejected, "closed-before-reply")
		}
		return
	}
	line = strings.TrimSpace(line)
	if reason, ok := strings.CutPrefix(line, "NO "); ok {
		g.settle(s, s.Endpoint, Rejected, reason)
		return
	}
	if !strings.HasPrefix(line, "OK") {
		g.settle(s, s.Endpoint, Rejected, "bad-reply")
		return
	}
	g.markOpen(s, true)
	defer g.markOpen(s, false)

	gotEnd := false
	for {
		line, err := r.ReadString('\n')
		if err == nil {
			if strings.TrimSpace(line) == "END" {
				gotEnd = true
			}
			continue
		}
		switch {
		case ctx.Err() != nil:
			g.settle(s, s.Endpoint, Abandoned, "wait-ran-out")
		case gotEnd && errors.Is(err, io.EOF):
			g.settle(s, s.Endpoint, Completed, "")
		case gotEnd:
			g.settle(s, s.Endpoint, Dropped, "reset-after-end")
		case errors.Is(err, io.EOF):
			g.settle(s, s.Endpoint, Dropped, "closed-without-end")
		default:
			g.settle(s, s.Endpoint, Dropped, "reset")
		}
		return
	}
}
