package endpoints

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func pod(name, ip string, ready, terminating bool) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"app": "chat"}},
		Spec:       v1.PodSpec{Containers: []v1.Container{{Name: "app", Ports: []v1.ContainerPort{{Name: "session", ContainerPort: 7000}}}}},
		Status:     v1.PodStatus{Phase: v1.PodRunning, PodIP: ip, Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionFalse}}},
	}
	if ready {
		p.Status.Conditions[0].Status = v1.ConditionTrue
	}
	if terminating {
		now := metav1.Now()
		p.DeletionTimestamp = &now
	}
	return p
}

func TestEndpointsAreReadyOnlyWhenThePodIsReadyAndNotTerminating(t *testing.T) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "chat", Namespace: "ns"},
		Spec: v1.ServiceSpec{Selector: map[string]string{"app": "chat"},
			Ports: []v1.ServicePort{{Name: "session", Port: 7000, TargetPort: intstr.FromString("session")}}},
	}
	other := pod("other", "127.10.0.9", true, false)
	other.Labels = map[string]string{"app": "else"}
	eps := ForPort(svc, svc.Spec.Ports[0], []*v1.Pod{
		pod("a", "127.10.0.2", true, false),
		pod("b", "127.10.0.3", false, false),
		pod("c", "127.10.0.4", true, true),
		pod("d", "", true, false),
		other,
	})
	if len(eps) != 3 {
		t.Fatalf("want endpoints for a, b, c; got %+v", eps)
	}
	ready := ReadyOnly(eps)
	if len(ready) != 1 || ready[0].Pod != "a" || ready[0].Addr() != "127.10.0.2:7000" {
		t.Errorf("ready endpoints %+v, want only a at 127.10.0.2:7000", ready)
	}
	if !eps[2].Serving || !eps[2].Terminating || eps[2].Ready {
		t.Errorf("a terminating ready pod is serving and terminating but not ready: %+v", eps[2])
	}
}
