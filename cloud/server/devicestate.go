package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/tributary-io/tributary/cloud/devicestate"
)

// deviceState is the cloud's device-state view (cloud/devicestate) and the
// goroutine that feeds it from the central log while Run runs. Its snapshot
// lives in <data_dir>/devicestate.
type deviceState struct {
	store *devicestate.Store

	mu     sync.Mutex
	cancel context.CancelFunc // stops the feeding goroutine; nil if never started
	done   chan struct{}      // closed when the feeding goroutine ended; nil if never started
}

// openDeviceState loads the device-state snapshot; called by New.
func (s *Server) openDeviceState() error {
	st, err := devicestate.Open(s.clog, devicestate.Options{
		Dir:    filepath.Join(s.dataDir, "devicestate"),
		Logger: s.log.With("part", "devicestate"),
	})
	if err != nil {
		return fmt.Errorf("device state: %w", err)
	}
	s.devstate = &deviceState{store: st}
	return nil
}

// runDeviceState feeds the view from the log until ctx ends; called by Run.
func (s *Server) runDeviceState(ctx context.Context) {
	ds := s.devstate
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	ds.mu.Lock()
	ds.cancel, ds.done = cancel, done
	ds.mu.Unlock()
	go func() {
		defer close(done)
		if err := ds.store.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("device state stopped", "err", err)
		}
	}()
}

// closeDeviceState stops the feeding goroutine (normally Run has returned
// and stopped it already), waits for it and writes the final snapshot;
// called by Close before the log closes.
func (s *Server) closeDeviceState() error {
	ds := s.devstate
	if ds == nil {
		return nil
	}
	ds.mu.Lock()
	cancel, done := ds.cancel, ds.done
	ds.mu.Unlock()
	if done != nil {
		cancel()
		<-done
	}
	if err := ds.store.Close(); err != nil && !errors.Is(err, devicestate.ErrClosed) {
		return fmt.Errorf("device state: %w", err)
	}
	return nil
}

// DeviceState is the device-state view (for in-process simulations and
// tests).
func (s *Server) DeviceState() *devicestate.Store { return s.devstate.store }

// deviceStateRoutes adds the device-state API (read scope):
//
//	GET /v1/gateways/{gateway}/devices                   the devices with a reported state
//	GET /v1/gateways/{gateway}/devices/{device}/state    one device's state (404 if none)
func (s *Server) deviceStateRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/gateways/{gateway}/devices", s.auth.require(ScopeRead, s.handleListDevices))
	mux.HandleFunc("GET /v1/gateways/{gateway}/devices/{device}/state", s.auth.require(ScopeRead, s.handleDeviceState))
}

// DeviceList is the answer of GET /v1/gateways/{gateway}/devices.
type DeviceList struct {
	// Gateway is the gateway asked about; Devices its devices that
	// reported state, sorted by id (empty for an unknown gateway).
	Gateway string                `json:"gateway"`
	Devices []devicestate.Summary `json:"devices"`
	// Offset is the log offset the view reflects (every record below it).
	Offset uint64 `json:"offset"`
}

func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request) {
	gw := r.PathValue("gateway")
	off := s.devstate.store.Stats().Next
	writeJSON(w, http.StatusOK, DeviceList{Gateway: gw, Devices: s.devstate.store.List(gw), Offset: off})
}

func (s *Server) handleDeviceState(w http.ResponseWriter, r *http.Request) {
	gw, dev := r.PathValue("gateway"), r.PathValue("device")
	st, err := s.devstate.store.Get(gw, dev)
	if errors.Is(err, devicestate.ErrUnknownDevice) {
		writeError(w, http.StatusNotFound, "device %q of gateway %q has reported no state (as of log offset %d)",
			dev, gw, s.devstate.store.Stats().Next)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "device state: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
