// Package endpoints computes a Service's endpoints from its Pods with the
// same rules as the EndpointSlice controller (k8s.io/endpointslice,
// podToEndpoint): an endpoint is serving when its pod is Ready, terminating
// when the pod has a deletionTimestamp, and ready when serving and not
// terminating (or when the Service publishes not-ready addresses).
//
// Why not read EndpointSlices: pods on the local node have loopback IPs
// (127.10.0.0/16), and the API server rejects loopback addresses in
// EndpointSlices and Endpoints (ValidateEndpointIP in
// pkg/apis/core/validation). So the local node's proxy and the traffic
// generator derive the same answer from Pods.
package endpoints

import (
	"net"
	"sort"
	"strconv"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Endpoint is one pod behind one Service port.
type Endpoint struct {
	Namespace   string
	Pod         string
	IP          string
	Port        int32
	Ready       bool
	Serving     bool
	Terminating bool
}

// Addr is "ip:port".
func (e Endpoint) Addr() string {
	return net.JoinHostPort(e.IP, strconv.Itoa(int(e.Port)))
}

// Selects reports whether the Service's selector selects the pod. A Service
// without a selector selects nothing (its endpoints are managed by hand).
func Selects(svc *v1.Service, pod *v1.Pod) bool {
	if len(svc.Spec.Selector) == 0 || pod.Namespace != svc.Namespace {
		return false
	}
	return labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels))
}

// ForPort lists the endpoints of one Service port among pods, sorted by pod
// name. Pods that are not selected, have no IP, are finished, or lack a
// named target port are left out, as the EndpointSlice controller does.
func ForPort(svc *v1.Service, sp v1.ServicePort, pods []*v1.Pod) []Endpoint {
	var out []Endpoint
	for _, pod := range pods {
		if !Selects(svc, pod) || pod.Status.PodIP == "" {
			continue
		}
		if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			continue
		}
		port, ok := TargetPort(sp, pod)
		if !ok {
			continue
		}
		serving := podReady(pod)
		terminating := pod.DeletionTimestamp != nil
		out = append(out, Endpoint{
			Namespace:   pod.Namespace,
			Pod:         pod.Name,
			IP:          pod.Status.PodIP,
			Port:        port,
			Serving:     serving,
			Terminating: terminating,
			Ready:       svc.Spec.PublishNotReadyAddresses || (serving && !terminating),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	return out
}

// ReadyOnly keeps the endpoints that should receive new connections.
func ReadyOnly(eps []Endpoint) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if e.Ready {
			out = append(out, e)
		}
	}
	return out
}

// FindPort picks a Service port by name, or by number when name is numeric;
// an empty name picks the only port.
func FindPort(svc *v1.Service, name string) (v1.ServicePort, bool) {
	if name == "" && len(svc.Spec.Ports) == 1 {
		return svc.Spec.Ports[0], true
	}
	n, numErr := strconv.Atoi(name)
	for _, p := range svc.Spec.Ports {
		if p.Name == name || (numErr == nil && int(p.Port) == n) {
			return p, true
		}
	}
	return v1.ServicePort{}, false
}

// TargetPort resolves a Service port's targetPort against a pod: a number
// is used as is (defaulting to the Service port), a name is looked up among
// the pod's container ports.
func TargetPort(sp v1.ServicePort, pod *v1.Pod) (int32, bool) {
	switch {
	case sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "":
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == sp.TargetPort.StrVal && (cp.Protocol == sp.Protocol || cp.Protocol == "" || sp.Protocol == "") {
					return cp.ContainerPort, true
				}
			}
		}
		return 0, false
	case sp.TargetPort.IntVal != 0:
		return sp.TargetPort.IntVal, true
	default:
		return sp.Port, true
	}
}

func podReady(pod *v1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}
