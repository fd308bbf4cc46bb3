package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/go-chi/chi/v5"
)

// The control API, served by ControlHandler (quench-host serves it on a unix
// socket; `quench-host ctl` is its client). JSON in and out:
//
//	GET    /v1/status                      ControlStatus
//	GET    /v1/ports                       []PortJSON
//	POST   /v1/ports                       PortJSON (network, host, enclave_port | vsock_port) → 201 PortJSON
//	DELETE /v1/ports/{network}/{addr}      ?drain=30s → 204 once drained
//
// Errors are {"error": "..."} with status 400 (bad request), 404 (no such
// port), 409 (port exists) or 500.

// PortJSON is a published port in the control API.
type PortJSON struct {
	Network     string `json:"network"`                // "tcp" or "udp"
	Host        string `json:"host"`                   // address to bind, ip:port (port 0 = any)
	EnclavePort uint16 `json:"enclave_port,omitempty"` // virtual-network destination port
	VSockPort   uint32 `json:"vsock_port,omitempty"`   // ingress fast path: enclave VSOCK port
	Addr        string `json:"addr,omitempty"`         // bound address (output only)
	Accepted    uint64 `json:"accepted"`               // output only, like the rest
	Failed      uint64 `json:"failed"`
	Active      int64  `json:"active"`
	Refused     uint64 `json:"refused"` // clients reset or datagrams dropped at a limit
	BytesIn     int64  `json:"bytes_in"`
	BytesOut    int64  `json:"bytes_out"`
}

// ControlStatus is the answer to GET /v1/status.
type ControlStatus struct {
	Enclaves []EnclaveJSON `json:"enclaves"`
	Ports    []PortJSON    `json:"ports"`
	Proxies  []ProxyJSON   `json:"vsock_proxies"`
	NAT      NATJSON       `json:"nat"`
	Limits   LimitsJSON    `json:"limits"`
	Logs     LogsJSON      `json:"enclave_logs"`
}

// LogsJSON holds the counters of the enclaves' log streams
// (ServeEnclaveLogs, quench-host -enclave-logs).
type LogsJSON struct {
	Streams  uint64 `json:"streams"`
	Accepted uint64 `json:"accepted"`
	Refused  uint64 `json:"refused"`
	Failed   uint64 `json:"failed"`
	Lines    uint64 `json:"lines"`
	Bytes    uint64 `json:"bytes"`
	Delayed  uint64 `json:"delayed"` // lines held back by the rate limit
}

// LimitsJSON holds what the limits against hostile clients and enclaves
// hold and have refused (host-ops.md, "Limits" and "Isolation between
// enclaves").
type LimitsJSON struct {
	NATConns              uint64 `json:"nat_conns"`
	NATConnsRefused       uint64 `json:"nat_conns_refused"`
	NATUDPFlows           uint64 `json:"nat_udp_flows"`
	NATUDPFlowsRefused    uint64 `json:"nat_udp_flows_refused"`
	DialsDeferred         uint64 `json:"dials_deferred"`
	PortConns             uint64 `json:"port_conns"`
	PortConnsRefused      uint64 `json:"port_conns_refused"`
	PortFirstByteTimeouts uint64 `json:"port_first_byte_timeouts"`
	PortUDPFlows          uint64 `json:"port_udp_flows"`
	PortUDPRefused        uint64 `json:"port_udp_refused"`
	ProxyConns            uint64 `json:"vsock_proxy_conns"`
	ProxyConnsRefused     uint64 `json:"vsock_proxy_conns_refused"`
	FramesDroppedSpoofed  uint64 `json:"frames_dropped_spoofed"`
	FramesDroppedOverLim  uint64 `json:"frames_dropped_over_limit"`
	FramesDroppedFull     uint64 `json:"frames_dropped_queue_full"`
	FramesDroppedNotIPv4  uint64 `json:"frames_dropped_not_ipv4"`
	StreamsRefused        uint64 `json:"enclave_streams_refused"`
}

// ProxyJSON is a vsock-proxy port (Host.ServeVSockProxy) in the control API.
type ProxyJSON struct {
	VSockPort uint32 `json:"vsock_port"`
	Target    string `json:"target"`
	Addr      string `json:"addr"`
	Accepted  uint64 `json:"accepted"`
	Failed    uint64 `json:"failed"`
	Refused   uint64 `json:"refused"`
	Active    int64  `json:"active"`
	BytesIn   int64  `json:"bytes_in"`
	BytesOut  int64  `json:"bytes_out"`
}

// EnclaveJSON is an attached enclave stream in the control API.
type EnclaveJSON struct {
	Remote    string `json:"remote"`
	FramesIn  uint64 `json:"frames_in"`
	FramesOut uint64 `json:"frames_out"`
	BytesIn   uint64 `json:"bytes_in"`
	BytesOut  uint64 `json:"bytes_out"`
}

// NATJSON holds the outbound counters in the control API.
type NATJSON struct {
	Dials         uint64 `json:"dials"`
	DialsFailed   uint64 `json:"dials_failed"`
	DialsRefused  uint64 `json:"dials_refused"`
	FramesDropped uint64 `json:"frames_dropped"`
	UDPRefused    uint64 `json:"udp_refused"`
	DNSQueries    uint64 `json:"dns_queries"`
	DNSRefused    uint64 `json:"dns_refused"`
}

func portJSON(s PortStatus) PortJSON {
	return PortJSON{
		Network: s.Spec.Network, Host: s.Spec.Host.String(), EnclavePort: s.Spec.EnclavePort,
		VSockPort: s.Spec.VSockPort, Addr: s.Addr, Accepted: s.Accepted, Failed: s.Failed,
		Active: s.Active, Refused: s.Refused, BytesIn: s.BytesIn, BytesOut: s.BytesOut,
	}
}

// Spec converts the request fields of p to a Publish.
func (p PortJSON) Spec() (Publish, error) {
	ap, err := netip.ParseAddrPort(p.Host)
	if err != nil {
		return Publish{}, fmt.Errorf("host: port host %q: want ip:port: %w", p.Host, err)
	}
	n := p.Network
	if n == "" {
		n = "tcp"
	}
	return Publish{Network: n, Host: ap, EnclavePort: p.EnclavePort, VSockPort: p.VSockPort}, nil
}

// maxControlBody bounds control API request bodies.
const maxControlBody = 64 << 10

// ControlHandler returns the control API. Serve it only where operators
// are trusted (quench-host uses a unix socket with mode 0700): it changes
// what is published.
func (h *Host) ControlHandler() http.Handler {
	r := chi.NewRouter()
	r.Get("/v1/status", h.handleStatus)
	r.Get("/v1/ports", h.handleListPorts)
	r.Post("/v1/ports", h.handleAddPort)
	r.Delete("/v1/ports/{network}/{addr}", h.handleRemovePort)
	return r
}

func (h *Host) handleStatus(w http.ResponseWriter, _ *http.Request) {
	st := h.Stats()
	out := ControlStatus{
		Enclaves: []EnclaveJSON{},
		Ports:    h.portsJSON(),
		Proxies:  []ProxyJSON{},
		NAT:      NATJSON{Dials: st.Dials, DialsFailed: st.DialsFailed, DialsRefused: st.DialsRefused, FramesDropped: st.FramesDropped, UDPRefused: st.UDPRefused, DNSQueries: st.DNSQueries, DNSRefused: st.DNSRefused},
	}
	ls := h.LimitStats()
	out.Limits = LimitsJSON{
		NATConns: ls.NATConns, NATConnsRefused: ls.NATConnsRefused,
		NATUDPFlows: ls.NATUDPFlows, NATUDPFlowsRefused: ls.NATUDPFlowsRefused,
		DialsDeferred: ls.DialsDeferred,
		PortConns:     ls.PortConns, PortConnsRefused: ls.PortConnsRefused,
		PortFirstByteTimeouts: ls.PortFirstByteTimeouts,
		PortUDPFlows:          ls.PortUDPFlows, PortUDPRefused: ls.PortUDPRefused,
		FramesDroppedSpoofed: st.FramesDroppedSpoofed, FramesDroppedOverLim: st.FramesDroppedOverLimit,
		FramesDroppedFull: st.FramesDroppedQueueFull, StreamsRefused: st.EnclaveStreamsRefused,
		FramesDroppedNotIPv4: st.FramesDroppedNotIPv4,
		ProxyConns:           ls.ProxyConns, ProxyConnsRefused: ls.ProxyConnsRefused,
	}
	el := h.EnclaveLogStats()
	out.Logs = LogsJSON{Streams: el.Streams, Accepted: el.Accepted, Refused: el.Refused, Failed: el.Errors, Lines: el.Lines, Bytes: el.Bytes, Delayed: el.Delayed}
	for _, p := range h.VSockProxies() {
		out.Proxies = append(out.Proxies, ProxyJSON{
			VSockPort: p.Proxy.Port, Target: p.Proxy.Target, Addr: p.Addr,
			Accepted: p.Accepted, Failed: p.Failed, Refused: p.Refused, Active: p.Active,
			BytesIn: p.BytesIn, BytesOut: p.BytesOut,
		})
	}
	for _, e := range h.Enclaves() {
		out.Enclaves = append(out.Enclaves, EnclaveJSON{Remote: e.Remote, FramesIn: e.FramesIn, FramesOut: e.FramesOut, BytesIn: e.BytesIn, BytesOut: e.BytesOut})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Host) portsJSON() []PortJSON {
	out := []PortJSON{}
	for _, p := range h.Ports() {
		out = append(out, portJSON(p))
	}
	return out
}

func (h *Host) handleListPorts(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, h.portsJSON())
}

func (h *Host) handleAddPort(w http.ResponseWriter, r *http.Request) {
	var req PortJSON
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("host: control: bad request body: %w", err))
		return
	}
	spec, err := req.Spec()
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	st, err := h.AddPort(spec)
	switch {
	case errors.Is(err, ErrPortExists):
		writeError(w, http.StatusConflict, err)
	case err != nil:
		writeError(w, http.StatusBadRequest, err)
	default:
		writeJSON(w, http.StatusCreated, portJSON(st))
	}
}

func (h *Host) handleRemovePort(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if d := r.URL.Query().Get("drain"); d != "" {
		dur, err := time.ParseDuration(d)
		if err != nil || dur < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("host: control: drain %q: want a duration like 30s", d))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), dur)
		defer cancel()
	} else {
		// A client that goes away must not cut the drain short.
		ctx = context.WithoutCancel(ctx)
	}
	err := h.RemovePort(ctx, chi.URLParam(r, "network"), chi.URLParam(r, "addr"))
	switch {
	case errors.Is(err, ErrPortNotFound):
		writeError(w, http.StatusNotFound, err)
	case err != nil:
		writeError(w, http.StatusInternalServerError, err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
