package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
)

// heartbeats is the receiving end of DESIGN.md §4, as the test's own HTTP
// server: it authenticates each heartbeat with a real TokenReview
// (audience drainscaler), takes the pod from the token, and answers with the
// drain flag the test sets.
type heartbeats struct {
	mu       sync.Mutex
	drain    map[string]bool
	sessions map[string]int // last count per pod
	problems []string
}

func (h *heartbeats) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/heartbeats" {
		http.NotFound(w, r)
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	var body struct {
		Sessions *int   `json:"sessions"`
		Pod      string `json:"pod"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Sessions == nil {
		h.problem(fmt.Sprintf("bad heartbeat body: %v", err))
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	if !ok || body.Pod != "" {
		h.problem(fmt.Sprintf("heartbeat without a token or naming its pod (%q)", body.Pod))
		http.Error(w, "unauthenticated", http.StatusUnauthorized)
		return
	}
	tr, err := cluster.Client.AuthenticationV1().TokenReviews().Create(r.Context(), &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{"drainscaler"}},
	}, metav1.CreateOptions{})
	if err != nil || !tr.Status.Authenticated {
		h.problem(fmt.Sprintf("token review failed: %v %+v", err, tr))
		http.Error(w, "unauthenticated", http.StatusUnauthorized)
		return
	}
	pod := tr.Status.User.Extra["authentication.kubernetes.io/pod-name"]
	if len(pod) != 1 {
		h.problem("token is not bound to a pod")
		http.Error(w, "no pod", http.StatusForbidden)
		return
	}
	h.mu.Lock()
	h.sessions[pod[0]] = *body.Sessions
	drain := h.drain[pod[0]]
	h.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]bool{"drain": drain})
}

func (h *heartbeats) problem(p string) {
	h.mu.Lock()
	h.problems = append(h.problems, p)
	h.mu.Unlock()
}

func (h *heartbeats) last(pod string) (int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, ok := h.sessions[pod]
	return n, ok
}

func (h *heartbeats) setDrain(pod string, on bool) {
	h.mu.Lock()
	h.drain[pod] = on
	h.mu.Unlock()
}

func TestHeartbeatsAuthenticateAsTheirPodAndDrainStopsNewSessions(t *testing.T) {
	localnodeOnly(t)
	hb := &heartbeats{drain: map[string]bool{}, sessions: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: hb, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	a := app{ns: cluster.Namespace(t), name: "chat", replicas: 2, grace: 5,
		env: map[string]string{"HEARTBEAT_URL": "http://" + ln.Addr().String(), "HEARTBEAT_INTERVAL": "500ms"}}
	a.apply(t)
	pods := a.pods(t)
	draining, serving := pods[0], pods[1]
	clustertest.WaitFor(t, 20*time.Second, "heartbeats from both pods", func() (bool, error) {
		_, ok0 := hb.last(draining.Name)
		_, ok1 := hb.last(serving.Name)
		return ok0 && ok1, nil
	})

	// drain: true makes the pod fail readiness, so it leaves the endpoints.
	hb.setDrain(draining.Name, true)
	clustertest.WaitFor(t, 20*time.Second, draining.Name+" to become not Ready", func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(a.ns).Get(context.Background(), draining.Name, metav1.GetOptions{})
		return err == nil && !podReady(p), err
	})

	g := startSessions(t, a, 8, 3*time.Second)
	if live := g.Snapshot(); live.OpenByPod[draining.Name] != 0 || live.OpenByPod[serving.Name] != 8 {
		t.Errorf("sessions went to a draining pod: %v", live.OpenByPod)
	}
	clustertest.WaitFor(t, 10*time.Second, "a heartbeat reporting 8 sessions", func() (bool, error) {
		n, _ := hb.last(serving.Name)
		return n == 8, nil
	})
	// Asked directly, the draining pod refuses with a reason.
	if reply := askSession(t, draining.Status.PodIP); reply != "NO draining" {
		t.Errorf("draining pod answered %q, want \"NO draining\"", reply)
	}

	// drain: false puts it back.
	hb.setDrain(draining.Name, false)
	clustertest.WaitFor(t, 20*time.Second, draining.Name+" to become Ready again", func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(a.ns).Get(context.Background(), draining.Name, metav1.GetOptions{})
		return err == nil && podReady(p), err
	})
	res, err := g.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed != 8 {
		t.Errorf("want 8 completed sessions, got %+v", res.Summary())
	}
	hb.mu.Lock()
	defer hb.mu.Unlock()
	if len(hb.problems) > 0 {
		t.Errorf("bad heartbeats: %v", hb.problems)
	}
}

// askSession opens one session directly and returns the server's first line.
func askSession(t *testing.T, ip string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "7000"), 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", ip, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "SESSION probe 1000\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read reply from %s: %v", ip, err)
	}
	return strings.TrimSpace(line)
}
