// Command nsforward carries TCP connections from one network namespace into
// another without routing between them: it listens in the namespace it was
// started in and, for each connection, dials an address inside the network
// namespace at -netns (a path such as /var/run/netns/NAME), then copies bytes
// both ways. scripts/cluster uses it so that 127.0.0.1 on the host reaches the
// API server and Prometheus of a plane that lives in its own namespace, while
// no address of that namespace is routable from the host.
//
//	nsforward -netns /var/run/netns/ds-node -forward 127.0.0.1:26443=127.0.0.1:26443 \
//	          -forward 127.0.0.1:29090=127.0.0.1:29090
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

type forwards []string

func (f *forwards) String() string     { return strings.Join(*f, ",") }
func (f *forwards) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var (
		netns string
		fwd   forwards
	)
	flag.StringVar(&netns, "netns", "", "path of the network namespace to dial into (e.g. /var/run/netns/NAME)")
	flag.Var(&fwd, "forward", "LISTEN=CONNECT: listen on LISTEN here, connect to CONNECT inside -netns (repeatable)")
	flag.Parse()
	if err := run(netns, fwd); err != nil {
		fmt.Fprintln(os.Stderr, "nsforward:", err)
		os.Exit(1)
	}
}

func run(netns string, fwd forwards) error {
	if netns == "" || len(fwd) == 0 {
		return errors.New("usage: nsforward -netns PATH -forward LISTEN=CONNECT [-forward ...]")
	}
	ns, err := os.Open(netns)
	if err != nil {
		return fmt.Errorf("open the network namespace: %w (create it with `ip netns add`)", err)
	}
	var listeners []net.Listener
	var targets []string
	for _, f := range fwd {
		listen, connect, ok := strings.Cut(f, "=")
		if !ok || listen == "" || connect == "" {
			return fmt.Errorf("-forward %q: want LISTEN=CONNECT, e.g. 127.0.0.1:26443=127.0.0.1:26443", f)
		}
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("-forward %q: %w", f, err)
		}
		listeners = append(listeners, l)
		targets = append(targets, connect)
	}
	var wg sync.WaitGroup
	for i, l := range listeners {
		wg.Add(1)
		go func(l net.Listener, target string) {
			defer wg.Done()
			serve(l, ns, target)
		}(l, targets[i])
	}
	log.Printf("forwarding %s into %s", fwd.String(), netns)
	wg.Wait()
	return errors.New("all listeners closed")
}

func serve(l net.Listener, ns *os.File, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			log.Printf("accept on %s: %v", l.Addr(), err)
			return
		}
		go func() {
			defer c.Close()
			up, err := dialIn(ns, target)
			if err != nil {
				log.Printf("%s -> %s: %v", c.RemoteAddr(), target, err)
				return
			}
			defer up.Close()
			pipe(c, up)
		}()
	}
}

// dialIn connects to addr from inside the network namespace ns. The socket is
// made on an OS thread moved into ns; that thread is never unlocked, so Go
// ends it with the goroutine instead of reusing it in the wrong namespace.
func dialIn(ns *os.File, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns: %w", err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// pipe copies both ways; when one side ends its writes, the other is told
// with a half close, so long-lived streams (watches, logs -f) end cleanly.
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}
