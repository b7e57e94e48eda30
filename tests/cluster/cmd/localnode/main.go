// Command localnode plays the kubelet for drainscaler's local control plane:
// it registers a Node, binds pods with schedulerName "localnode" to it, and
// runs their containers as local processes with loopback pod IPs. See
// tests/cluster/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drainscaler/drainscaler/tests/cluster/internal/localnode"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	// Re-run of this binary inside a new container's mount namespace.
	if len(os.Args) > 1 && os.Args[1] == localnode.ShimCommand {
		err := localnode.Shim(os.Args[2:])
		fmt.Fprintln(os.Stderr, "localnode exec-shim:", err)
		os.Exit(127)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "localnode:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kubeconfig, podCIDR, serviceCIDR string
		images                           listFlag
		imageFile                        string
		cfg                              localnode.Config
	)
	flag.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig with rights to manage nodes and pods")
	flag.StringVar(&cfg.NodeName, "node-name", "localnode", "Node name")
	flag.StringVar(&cfg.StateDir, "state-dir", "", "directory for pod volumes and logs (required)")
	flag.Var(&images, "image-map", "IMAGE=PATH[,IMAGE=PATH...]: run containers of IMAGE as the executable PATH (repeatable)")
	flag.StringVar(&imageFile, "image-map-file", "", "file of IMAGE=PATH lines, read at every container start")
	flag.StringVar(&podCIDR, "pod-cidr", "127.10.0.0/16", "pod IPs come from this loopback range")
	flag.StringVar(&serviceCIDR, "service-cidr", "127.96.0.0/16", "the API server's --service-cluster-ip-range (the proxy serves ClusterIPs in it)")
	flag.StringVar(&cfg.APIServerHost, "apiserver-host", "127.0.0.1", "KUBERNETES_SERVICE_HOST given to pods")
	flag.IntVar(&cfg.APIServerPort, "apiserver-port", 6443, "KUBERNETES_SERVICE_PORT given to pods")
	flag.StringVar(&cfg.CAFile, "ca-file", "", "cluster CA, for pods' ca.crt (required)")
	flag.StringVar(&cfg.FileSD, "file-sd", "", "Prometheus file_sd JSON to write for scrape-annotated pods")
	flag.StringVar(&cfg.DroppedLog, "dropped-log", "", "JSON-lines file of processes killed with sessions open")
	flag.StringVar(&cfg.Listen, "listen", "127.0.0.1:10250", "HTTPS address for /healthz and container logs")
	flag.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serving certificate (required)")
	flag.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "serving key (required)")
	flag.DurationVar(&cfg.RestartBackoff, "restart-backoff", 2*time.Second, "first back-off before restarting an exited container")
	flag.DurationVar(&cfg.MaxRestartBackoff, "max-restart-backoff", time.Minute, "longest restart back-off")
	flag.Parse()

	if cfg.StateDir == "" || cfg.CAFile == "" || cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
		return errors.New("--state-dir, --ca-file, --tls-cert-file and --tls-key-file are required")
	}
	var err error
	if _, cfg.PodCIDR, err = net.ParseCIDR(podCIDR); err != nil || cfg.PodCIDR.IP.To4() == nil {
		return fmt.Errorf("--pod-cidr %q: want an IPv4 CIDR", podCIDR)
	}
	if _, cfg.ServiceCIDR, err = net.ParseCIDR(serviceCIDR); err != nil {
		return fmt.Errorf("--service-cidr %q: %v", serviceCIDR, err)
	}
	if cfg.Images, err = localnode.NewImageMap(images, imageFile); err != nil {
		return err
	}
	if cfg.Self, err = os.Executable(); err != nil {
		return err
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))

	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "localnode/" + localnode.KubeletVersion
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	node, err := localnode.New(cfg, client)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	serveErr := make(chan error, 1)
	go func() {
		err := node.Serve(ctx)
		if err != nil {
			cfg.Log.Error("serve", "err", err)
			stop() // a node nobody can reach is no use
		}
		serveErr <- err
	}()
	runErr := node.Run(ctx)
	stop()
	if err := <-serveErr; err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}
