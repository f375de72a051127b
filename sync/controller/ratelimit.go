package controller

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"k8s.io/client-go/rest"
)

// Client-side rate limits of the controller's requests when neither the
// flags set them nor the API server limits them itself.
const (
	DefaultQPS   = 100
	DefaultBurst = 300
)

// clientRate sets the rest config's client-side rate limit as Flux's
// runtime/client does: an API server with API Priority and Fairness
// queues and limits requests itself, so the controller sends without a
// limit of its own (a batch of a thousand nodes is a thousand writes, ten
// seconds at 100 a second); without it, when that cannot be told, or when
// qps or burst are given, qps and burst (default DefaultQPS and
// DefaultBurst). It says which in a sentence for the log.
func clientRate(ctx context.Context, rc *rest.Config, qps float32, burst int) string {
	if qps != 0 || burst != 0 {
		rc.QPS, rc.Burst = qps, burst
		if rc.QPS == 0 {
			rc.QPS = DefaultQPS
		}
		if rc.Burst == 0 {
			rc.Burst = DefaultBurst
		}
		return fmt.Sprintf("client-side limit %g/s, burst %d (flags)", rc.QPS, rc.Burst)
	}
	apf, err := flowControlled(ctx, rc)
	if err != nil {
		// As Flux: when the check fails, the limit applies.
		rc.QPS, rc.Burst = DefaultQPS, DefaultBurst
		return fmt.Sprintf("client-side limit %d/s, burst %d: whether the API server applies priority and fairness is unknown: %v", DefaultQPS, DefaultBurst, err)
	}
	if apf {
		rc.QPS, rc.Burst = -1, -1 // client-go: no rate limiter
		return "no client-side limit: the API server applies priority and fairness"
	}
	rc.QPS, rc.Burst = DefaultQPS, DefaultBurst
	return fmt.Sprintf("client-side limit %d/s, burst %d: the API server does not apply priority and fairness", DefaultQPS, DefaultBurst)
}

// flowControlled reports whether the API server applies API Priority and
// Fairness: it names the flow schema that classified a request in a
// response header, as fluxcd/cli-utils' flowcontrol.IsEnabled checks.
func flowControlled(ctx context.Context, rc *rest.Config) (bool, error) {
	cfg := rest.CopyConfig(rc)
	cfg.QPS, cfg.Burst = -1, -1
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return false, fmt.Errorf("API client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.Host+"/livez/ping", nil)
	if err != nil {
		return false, fmt.Errorf("API server %s: %w", cfg.Host, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("API server %s: %w", cfg.Host, err)
	}
	resp.Body.Close()
	return resp.Header.Get("X-Kubernetes-PF-FlowSchema-UID") != "", nil
}
