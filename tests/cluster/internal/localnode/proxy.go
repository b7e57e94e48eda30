package localnode

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/drainscaler/drainscaler/tests/cluster/endpoints"
)

// proxy is a minimal userspace kube-proxy: for every TCP port of every
// Service whose ClusterIP is in the (loopback) service range it listens on
// clusterIP:port and forwards each connection to a ready endpoint, round
// robin. Endpoints come from Pods (see package endpoints for why). The
// `kubernetes` Service forwards to the API server.
type proxy struct {
	n         *Node
	mu        sync.Mutex
	listeners map[string]*svcListener // by "ip:port"
	ctx       context.Context
}

type svcListener struct {
	ln      net.Listener
	ns      string
	name    string
	port    v1.ServicePort
	next    atomic.Uint64
	stopped atomic.Bool
}

func newProxy(n *Node) *proxy {
	return &proxy{n: n, listeners: map[string]*svcListener{}, ctx: context.Background()}
}

func (p *proxy) run(ctx context.Context) {
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.listeners {
		l.stopped.Store(true)
		l.ln.Close()
		delete(p.listeners, k)
	}
}

// sync opens listeners for new Service ports and closes the ones gone.
func (p *proxy) sync() {
	svcs, err := p.n.svcs.List(everything())
	if err != nil {
		return
	}
	want := map[string]*svcListener{}
	for _, s := range svcs {
		ip := net.ParseIP(s.Spec.ClusterIP)
		if ip == nil || !p.n.cfg.ServiceCIDR.Contains(ip) {
			continue
		}
		for _, sp := range s.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != v1.ProtocolTCP {
				continue
			}
			addr := net.JoinHostPort(s.Spec.ClusterIP, strconv.Itoa(int(sp.Port)))
			want[addr] = &svcListener{ns: s.Namespace, name: s.Name, port: sp}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return
	}
	for addr, l := range p.listeners {
		w, ok := want[addr]
		if !ok || w.ns != l.ns || w.name != l.name || w.port.Name != l.port.Name || w.port.TargetPort != l.port.TargetPort {
			l.stopped.Store(true)
			l.ln.Close()
			delete(p.listeners, addr)
		}
	}
	for addr, l := range want {
		if _, ok := p.listeners[addr]; ok {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			p.n.log.Warn("proxy listen", "service", l.ns+"/"+l.name, "addr", addr, "err", err)
			continue
		}
		l.ln = ln
		p.listeners[addr] = l
		go p.serve(l)
	}
}

func (p *proxy) serve(l *svcListener) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.stopped.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go p.forward(l, c)
	}
}

func (p *proxy) backends(l *svcListener) []string {
	if l.ns == "default" && l.name == "kubernetes" {
		return []string{net.JoinHostPort(p.n.cfg.APIServerHost, strconv.Itoa(p.n.cfg.APIServerPort))}
	}
	svc, err := p.n.svcs.Services(l.ns).Get(l.name)
	if err != nil {
		return nil
	}
	pods, err := p.n.pods.Pods(l.ns).List(everything())
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range endpoints.ReadyOnly(endpoints.ForPort(svc, l.port, pods)) {
		out = append(out, e.Addr())
	}
	return out
}

func (p *proxy) forward(l *svcListener, c net.Conn) {
	defer c.Close()
	bs := p.backends(l)
	if len(bs) == 0 {
		return // no ready endpoint: the client sees the connection closed
	}
	start := l.next.Add(1)
	var up net.Conn
	var err error
	for i := range bs {
		up, err = net.DialTimeout("tcp", bs[(int(start)+i)%len(bs)], 2*time.Second)
		if err == nil {
			break
		}
	}
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}
