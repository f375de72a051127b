package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"herd.dev/herd/schema/healthcheck"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
)

// health evaluates pools' health checks for nodes in their soak.
type health struct {
	mu   sync.Mutex
	cel  map[string]*healthcheck.CELCheck // by expression
	http *http.Client
}

func newHealth() *health {
	return &health{cel: map[string]*healthcheck.CELCheck{}, http: &http.Client{Timeout: 5 * time.Second}}
}

// check says why the node fails its pool's health checks, or "".
func (h *health) check(ctx context.Context, hc *schema.HealthCheck, node *corev1.Node) string {
	if hc == nil {
		return ""
	}
	if hc.CEL != "" {
		c, err := h.compiled(hc.CEL)
		if err != nil {
			return err.Error()
		}
		conds := map[string]map[string]string{}
		for _, c := range node.Status.Conditions {
			conds[string(c.Type)] = map[string]string{"status": string(c.Status), "reason": c.Reason, "message": c.Message}
		}
		ok, err := c.Eval(conds, node.Labels)
		switch {
		case err != nil:
			return err.Error()
		case !ok:
			return fmt.Sprintf("%q is false", hc.CEL)
		}
	}
	if p := hc.Prometheus; p != nil {
		if why := h.prometheus(ctx, p, node.Name); why != "" {
			return why
		}
	}
	return ""
}

func (h *health) compiled(expr string) (*healthcheck.CELCheck, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.cel[expr]; ok {
		return c, nil
	}
	c, err := healthcheck.CompileCEL(expr)
	if err != nil {
		return nil, err
	}
	h.cel[expr] = c
	return c, nil
}

// prometheus runs an instant query; it holds when it returns at least one
// sample and none is zero. A query that fails does not hold: Herd does not
// take more nodes out while it cannot see them.
func (h *health) prometheus(ctx context.Context, p *schema.PrometheusCheck, node string) string {
	q := strings.ReplaceAll(p.Query, "$node", node)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(p.URL, "/")+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return fmt.Sprintf("prometheus query: %v", err)
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return fmt.Sprintf("prometheus query %q: %v", q, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		return fmt.Sprintf("prometheus query %q: %s %s", q, resp.Status, body.Error)
	}
	if len(body.Data.Result) == 0 {
		return fmt.Sprintf("prometheus query %q returned nothing", q)
	}
	for _, s := range body.Data.Result {
		if v, _ := s.Value[1].(string); v == "0" || v == "" {
			return fmt.Sprintf("prometheus query %q returned %q", q, v)
		}
	}
	return ""
}
