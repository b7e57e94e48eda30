package e2e

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/drainscaler/drainscaler/tests/cluster/clustertest"
	"github.com/drainscaler/drainscaler/tests/cluster/traffic"
)

// startSessions starts a generator that opens n sessions of a fixed length
// at 20/s and waits until all n are open.
func startSessions(t *testing.T, a app, n int, length time.Duration) *traffic.Generator {
	t.Helper()
	g, err := traffic.New(traffic.Config{
		Client: cluster.Client, Namespace: a.ns, Service: a.name, Port: "session",
		Shape: traffic.Constant{PerSecond: 20}, Duration: time.Minute, MaxSessions: n,
		FixedLength: length, Seed: 1, Wait: length + 30*time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, 30*time.Second, fmt.Sprintf("%d sessions to open", n), func() (bool, error) {
		l := g.Snapshot()
		if l.Rejected > 0 || l.Dropped > 0 {
			return false, fmt.Errorf("sessions failed before the test acted: %+v", l)
		}
		return l.Open == n, nil
	})
	return g
}

// waitPrometheusSees waits until Prometheus reports, per pod, the sessions
// the generator holds open.
func waitPrometheusSees(t *testing.T, ns string, want map[string]int) {
	t.Helper()
	clustertest.WaitFor(t, 30*time.Second, fmt.Sprintf("Prometheus to report sessions per pod %v", want), func() (bool, error) {
		samples, err := cluster.Query(context.Background(), fmt.Sprintf(`sum by (pod) (app_active_sessions{namespace=%q})`, ns))
		if err != nil {
			return false, err
		}
		got := map[string]int{}
		for _, s := range samples {
			if s.Value > 0 {
				got[s.Labels["pod"]] = int(s.Value)
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(want), nil
	})
}

func TestScaleDownWithOpenSessionsDropsThemAndTheNodeRecordsEachOne(t *testing.T) {
	localnodeOnly(t)
	a := app{ns: cluster.Namespace(t), name: "chat", replicas: 2, grace: 2}
	a.apply(t)
	// Scale up by hand, then open sessions across all three pods.
	a.scale(t, 3)
	a.waitRolledOut(t)
	g := startSessions(t, a, 12, 20*time.Second)
	live := g.Snapshot()
	if len(live.OpenByPod) != 3 {
		t.Fatalf("least-connections should spread 12 sessions over 3 pods, got %v", live.OpenByPod)
	}
	waitPrometheusSees(t, a.ns, live.OpenByPod)

	// Scale down by hand: the ReplicaSet removes two pods that hold
	// sessions; their 2s grace period ends long before the sessions do.
	a.scale(t, 1)
	a.waitPodCount(t, 1, 60*time.Second)
	res, err := g.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generator: attempts %d opened %d completed %d dropped %d rejected %d abandoned %d; dropped by pod %v",
		res.Attempts, res.Opened, res.Completed, res.Dropped, res.Rejected, res.Abandoned, res.DroppedByPod)

	records, err := cluster.KillRecords(a.ns)
	if err != nil {
		t.Fatal(err)
	}
	nodeDropped := map[string]string{} // client address -> pod
	nodeByPod := map[string]int{}
	for _, r := range records {
		if r.Reason != "GracePeriodExpired" || r.Error != "" {
			t.Errorf("kill record for %s: reason %s error %q, want GracePeriodExpired", r.Pod, r.Reason, r.Error)
		}
		if len(r.Unanswered) > 0 {
			t.Errorf("kill record for %s lists unanswered connections %v; the generator had none in flight", r.Pod, r.Unanswered)
		}
		nodeByPod[r.Pod] += r.Sessions
		for _, c := range r.Dropped {
			nodeDropped[c.Remote] = r.Pod
		}
	}
	genDropped := map[string]string{}
	for _, s := range res.Sessions {
		if s.Outcome == traffic.Dropped {
			genDropped[s.Local] = s.Pod
		}
	}

	if res.Dropped == 0 {
		t.Fatalf("a scale-down that removes pods holding sessions must drop some; got none")
	}
	if res.Opened != 12 || res.Completed+res.Dropped != 12 || res.Rejected != 0 || res.Abandoned != 0 {
		t.Errorf("want 12 sessions each completed or dropped, got %+v", res.Summary())
	}
	if fmt.Sprint(nodeByPod) != fmt.Sprint(res.DroppedByPod) {
		t.Errorf("dropped per pod: node says %v, generator says %v", nodeByPod, res.DroppedByPod)
	}
	// Session by session: the same connections, on the same pods.
	if fmt.Sprint(sorted(nodeDropped)) != fmt.Sprint(sorted(genDropped)) {
		t.Errorf("dropped connections differ:\n node:      %v\n generator: %v", sorted(nodeDropped), sorted(genDropped))
	}
	// The pod that stayed completed all of its sessions.
	for _, s := range res.Sessions {
		if _, removed := nodeByPod[s.Pod]; !removed && s.Outcome != traffic.Completed {
			t.Errorf("session %s on surviving pod %s: %s (%s), want completed", s.ID, s.Pod, s.Outcome, s.Reason)
		}
	}
}

func TestScaleDownWaitsForShortSessionsAndDropsNothing(t *testing.T) {
	localnodeOnly(t)
	a := app{ns: cluster.Namespace(t), name: "chat", replicas: 2, grace: 30}
	a.apply(t)
	g := startSessions(t, a, 6, 3*time.Second)
	start := time.Now()
	a.scale(t, 0)
	// SIGTERM makes the app refuse new sessions and exit once its own end;
	// that is well inside the 30s grace period, so nothing is killed.
	a.waitPodCount(t, 0, 25*time.Second)
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("pods took %s to go; the app should exit when its sessions end (3s)", took)
	}
	res, err := g.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed != 6 || res.Dropped != 0 {
		t.Errorf("want all 6 sessions completed, got %+v", res.Summary())
	}
	records, err := cluster.KillRecords(a.ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 0 {
		t.Errorf("no process should have been killed, the node recorded %+v", records)
	}
}

func sorted(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, v+"<-"+k)
	}
	sort.Strings(out)
	return out
}
