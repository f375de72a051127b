package controller

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/schema"
)

func TestHealthChecks(t *testing.T) {
	// Answers instant queries as Prometheus does: one sample per node named
	// in the query, 1 for node-a, 0 for node-b, none for others.
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query().Get("query")
		if r.URL.Path != "/api/v1/query" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		result := "[]"
		switch {
		case strings.Contains(q, `node="node-a"`):
			result = `[{"metric":{"node":"node-a"},"value":[1764300000,"1"]}]`
		case strings.Contains(q, `node="node-b"`):
			result = `[{"metric":{"node":"node-b"},"value":[1764300000,"0"]}]`
		}
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":%s}}`, result)
	}))
	defer prom.Close()

	node := func(name string, memoryPressure corev1.ConditionStatus) *corev1.Node {
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"herd.dev/pool": "general"}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue},
				{Type: corev1.NodeMemoryPressure, Status: memoryPressure},
			}},
		}
	}
	hc := &schema.HealthCheck{
		CEL:        `conditions.Ready.status == "True" && conditions.MemoryPressure.status != "True"`,
		Prometheus: &schema.PrometheusCheck{URL: prom.URL, Query: `up{node="$node"}`},
	}
	h := newHealth()
	for _, tt := range []struct {
		node *corev1.Node
		want string // a part of the reason; "" for healthy
	}{
		{node("node-a", corev1.ConditionFalse), ""},
		{node("node-a", corev1.ConditionTrue), "is false"},
		{node("node-b", corev1.ConditionFalse), `returned "0"`},
		{node("node-c", corev1.ConditionFalse), "returned nothing"},
	} {
		got := h.check(t.Context(), hc, tt.node)
		if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.node.Name, got, tt.want)
		}
	}

	// A Prometheus that cannot answer fails the check: Herd does not take
	// more nodes out while it cannot see them.
	down := &schema.HealthCheck{Prometheus: &schema.PrometheusCheck{URL: "http://127.0.0.1:1", Query: "up"}}
	if got := h.check(t.Context(), down, node("node-a", corev1.ConditionFalse)); got == "" {
		t.Error("an unreachable Prometheus passes the check")
	}
}
