// Command traffic opens sessions against the demo session app behind a
// Service and reports each session's fate. See package traffic.
//
//	traffic -n demo -service chat -port session -shape ramp:1:20:60s \
//	        -duration 2m -mean-length 20s -seed 1 -out result.json
//
// It prints a JSON summary on stdout (and the full result, with every
// session, to -out) and exits 0 whatever the fates; callers judge them.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drainscaler/drainscaler/tests/cluster/traffic"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "traffic:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kubeconfig, shape, out string
		cfg                    traffic.Config
		seed                   uint64
	)
	flag.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	flag.StringVar(&cfg.Namespace, "n", "default", "namespace of the Service")
	flag.StringVar(&cfg.Service, "service", "", "Service whose ready endpoints get the sessions (required)")
	flag.StringVar(&cfg.Port, "port", "", "Service port name or number (default: its only port)")
	flag.StringVar(&shape, "shape", "constant:1", "arrival rate: constant:R | ramp:FROM:TO:OVER | wave:BASE:AMP:PERIOD | burst:BASE:PEAK:EVERY:FOR | trace:FILE.csv")
	flag.DurationVar(&cfg.Duration, "duration", time.Minute, "how long to open sessions")
	flag.DurationVar(&cfg.MeanLength, "mean-length", 10*time.Second, "mean session length (exponential)")
	flag.DurationVar(&cfg.MaxLength, "max-length", 0, "cap on session length (default 5x mean)")
	flag.DurationVar(&cfg.FixedLength, "fixed-length", 0, "give every session this length instead")
	flag.Uint64Var(&seed, "seed", 1, "random seed for arrivals and lengths")
	flag.DurationVar(&cfg.Wait, "wait", 0, "after -duration, how long to wait for open sessions (default max-length + 10s)")
	flag.IntVar(&cfg.MaxSessions, "max-sessions", 0, "stop after this many attempts (0: no limit)")
	flag.StringVar(&out, "out", "", "write the full result, with every session, to this JSON file")
	flag.Parse()
	if cfg.Service == "" {
		return fmt.Errorf("-service is required")
	}
	var err error
	if cfg.Shape, err = traffic.ParseShape(shape); err != nil {
		return err
	}
	cfg.Seed = seed
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	if cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	g, err := traffic.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := g.Run(ctx)
	if err != nil {
		return err
	}
	if out != "" {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(out, data, 0o644); err != nil {
			return err
		}
	}
	sum := res.Summary()
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(sum)
}
