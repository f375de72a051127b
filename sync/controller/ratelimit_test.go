package controller

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"k8s.io/client-go/rest"
)

// The client-side limit is off against an API server that applies
// priority and fairness, unless a flag sets it; on without it.
func TestClientRate(t *testing.T) {
	server := func(apf bool) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/livez/ping" {
				http.NotFound(w, r)
				return
			}
			if apf {
				w.Header().Set("X-Kubernetes-PF-FlowSchema-UID", "a-uid")
			}
			w.Write([]byte("ok"))
		}))
		t.Cleanup(s.Close)
		return s
	}
	for _, tc := range []struct {
		name      string
		apf       bool
		qps       float32
		burst     int
		wantQPS   float32
		wantBurst int
	}{
		{"priority and fairness", true, 0, 0, -1, -1},
		{"none", false, 0, 0, DefaultQPS, DefaultBurst},
		{"flags with priority and fairness", true, 20, 40, 20, 40},
		{"one flag", false, 0, 1000, DefaultQPS, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &rest.Config{Host: server(tc.apf).URL}
			why := clientRate(t.Context(), rc, tc.qps, tc.burst)
			if rc.QPS != tc.wantQPS || rc.Burst != tc.wantBurst {
				t.Errorf("QPS %v, burst %v (%s); want %v, %v", rc.QPS, rc.Burst, why, tc.wantQPS, tc.wantBurst)
			}
		})
	}
	// When the API server does not answer, the limit applies, as in Flux.
	s := server(true)
	s.Close()
	rc := &rest.Config{Host: s.URL}
	if why := clientRate(t.Context(), rc, 0, 0); rc.QPS != DefaultQPS || rc.Burst != DefaultBurst {
		t.Errorf("QPS %v, burst %v (%s) when the API server does not answer", rc.QPS, rc.Burst, why)
	}
}
