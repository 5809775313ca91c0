package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/filter"
	"github.com/tributary-io/tributary/cloud/internal/atomicfile"
)

// subStore keeps the subscriptions created through the API durably in one
// JSON file (written to a temporary file, fsync'd, renamed, directory
// fsync'd). Subscriptions from the config file are not stored: the file is
// their source of truth and the API refuses to change them.
type subStore struct {
	mu     sync.Mutex
	path   string
	subs   map[string]dispatch.Subscription
	config map[string]bool // ids defined in the config file
}

func openSubStore(dir string, config []dispatch.Subscription) (*subStore, error) {
	st := &subStore{path: filepath.Join(dir, "subscriptions.json"), subs: map[string]dispatch.Subscription{}, config: map[string]bool{}}
	for _, s := range config {
		st.config[s.ID] = true
	}
	b, err := os.ReadFile(st.path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	var list []dispatch.Subscription
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", st.path, err)
	}
	for _, s := range list {
		if st.config[s.ID] {
			return nil, fmt.Errorf("%s: subscription %q is also defined in the config file; remove one", st.path, s.ID)
		}
		st.subs[s.ID] = s
	}
	return st, nil
}

func (st *subStore) list() []dispatch.Subscription {
	out := make([]dispatch.Subscription, 0, len(st.subs))
	for _, s := range st.subs {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// put stores s (nil deletes id) and writes the file durably.
func (st *subStore) put(id string, s *dispatch.Subscription) error {
	old, had := st.subs[id]
	if s == nil {
		delete(st.subs, id)
	} else {
		st.subs[id] = *s
	}
	if err := st.save(); err != nil {
		if had {
			st.subs[id] = old
		} else {
			delete(st.subs, id)
		}
		return err
	}
	return nil
}

func (st *subStore) save() error {
	b, err := json.MarshalIndent(st.list(), "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(st.path, b, 0o640)
}

// subscriptionView is a subscription as the API returns it.
type subscriptionView struct {
	dispatch.Subscription
	// Source is "config" for subscriptions from the config file (read-only
	// through the API) and "api" for the others.
	Source string          `json:"source"`
	Stats  *dispatch.Stats `json:"stats,omitempty"`
}

const maxSubscriptionBody = 1 << 20

func decodeSubscription(r *http.Request) (dispatch.Subscription, error) {
	var s dispatch.Subscription
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSubscriptionBody))
	if err != nil {
		return s, fmt.Errorf("request body: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("request body: %w", locateFilterError(body, err))
	}
	if dec.More() {
		return s, errors.New("request body: more than one JSON value")
	}
	return s, nil
}

// locateFilterError adds the position ("filters[2].any[0]") to a filter
// error from decoding a subscription: encoding/json does not say which
// element a custom decoder refused.
func locateFilterError(body []byte, err error) error {
	var fe *filter.Error
	if !errors.As(err, &fe) {
		return err
	}
	var top struct {
		Filters []json.RawMessage `json:"filters"`
	}
	if json.Unmarshal(body, &top) != nil {
		return err
	}
	for i, raw := range top.Filters {
		var f filter.Filter
		if ferr := json.Unmarshal(raw, &f); errors.As(ferr, &fe) {
			path := fmt.Sprintf("filters[%d]", i)
			if fe.Path != "" {
				path += "." + fe.Path
			}
			return &filter.Error{Path: path, Err: fe.Err}
		}
	}
	return err
}

func (s *Server) view(sub dispatch.Subscription, withStats bool) subscriptionView {
	v := subscriptionView{Subscription: sub, Source: "api"}
	if s.subs.config[sub.ID] {
		v.Source = "config"
	}
	if withStats {
		if st, err := s.dispatch.Stats(sub.ID); err == nil {
			v.Stats = &st
		}
	}
	return v
}

func (s *Server) handleListSubs(w http.ResponseWriter, r *http.Request) {
	list := s.dispatch.List()
	out := make([]subscriptionView, 0, len(list))
	for _, sub := range list {
		out = append(out, s.view(sub, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetSub(w http.ResponseWriter, r *http.Request) {
	sub, err := s.dispatch.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "subscription %q: %v", r.PathValue("id"), err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(sub, true))
}

func (s *Server) handleCreateSub(w http.ResponseWriter, r *http.Request) {
	sub, err := decodeSubscription(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := sub.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.subs.mu.Lock()
	defer s.subs.mu.Unlock()
	if _, err := s.dispatch.Get(sub.ID); err == nil {
		writeError(w, http.StatusConflict, "subscription %q exists; PUT /v1/subscriptions/%s to change it", sub.ID, sub.ID)
		return
	}
	if err := s.subs.put(sub.ID, &sub); err != nil {
		writeError(w, http.StatusInternalServerError, "store subscription: %v", err)
		return
	}
	if err := s.dispatch.Add(sub); err != nil {
		_ = s.subs.put(sub.ID, nil)
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	w.Header().Set("Location", "/v1/subscriptions/"+sub.ID)
	writeJSON(w, http.StatusCreated, s.view(sub, false))
}

func (s *Server) handleUpdateSub(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	sub, err := decodeSubscription(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if sub.ID == "" {
		sub.ID = id
	}
	if sub.ID != id {
		writeError(w, http.StatusBadRequest, "id %q in the body differs from %q in the path", sub.ID, id)
		return
	}
	if err := sub.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.subs.mu.Lock()
	defer s.subs.mu.Unlock()
	if s.subs.config[id] {
		writeError(w, http.StatusConflict, "subscription %q is defined in the config file; change it there", id)
		return
	}
	old, err := s.dispatch.Get(id)
	if err != nil {
		writeError(w, http.StatusNotFound, "subscription %q: %v", id, err)
		return
	}
	if err := s.subs.put(id, &sub); err != nil {
		writeError(w, http.StatusInternalServerError, "store subscription: %v", err)
		return
	}
	if err := s.dispatch.Update(sub); err != nil {
		_ = s.subs.put(id, &old)
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, s.view(sub, false))
}

func (s *Server) handleDeleteSub(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.subs.mu.Lock()
	defer s.subs.mu.Unlock()
	if s.subs.config[id] {
		writeError(w, http.StatusConflict, "subscription %q is defined in the config file; remove it there", id)
		return
	}
	if _, err := s.dispatch.Get(id); err != nil {
		writeError(w, http.StatusNotFound, "subscription %q: %v", id, err)
		return
	}
	if err := s.subs.put(id, nil); err != nil {
		writeError(w, http.StatusInternalServerError, "store subscription: %v", err)
		return
	}
	if err := s.dispatch.Remove(id); err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
