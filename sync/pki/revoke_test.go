package pki

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRevocationList(t *testing.T) {
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gw1, _ := IssueGateway(ca, "gw-1")
	gw1b, _ := IssueGateway(ca, "gw-1") // re-provisioned: same id, new certificate
	gw2, _ := IssueGateway(ca, "gw-2")
	path := filepath.Join(t.TempDir(), "revoked-gateways.txt")
	rl := NewRevocationList(path)
	if err := rl.Check(gw1.Cert); err != nil {
		t.Fatalf("missing file revokes: %v", err)
	}
	now := time.Date(2026, 11, 22, 16, 40, 0, 0, time.UTC)
	if err := Revoke(path, gw1.Cert, now); err != nil {
		t.Fatal(err)
	}
	if err := Revoke(path, gw1.Cert, now); err != nil { // twice: fine, one line
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if n := strings.Count(string(data), "\n"); n != 1 || !strings.Contains(string(data), "gw-1 revoked 2026-11-22T16:40:00Z") {
		t.Fatalf("list:\n%s", data)
	}
	if err := rl.Check(gw1.Cert); !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), `"gw-1"`) {
		t.Fatalf("revoked certificate: %v", err)
	}
	for _, kp := range []*KeyPair{gw1b, gw2} {
		if err := rl.Check(kp.Cert); err != nil {
			t.Fatalf("certificate %s refused: %v", kp.Cert.Subject, err)
		}
	}
	// An operator's edit is picked up; a bad line refuses everyone rather
	// than admitting a revoked gateway.
	if err := os.WriteFile(path, []byte("# header\n\n"+gw2.Cert.SerialNumber.Text(16)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute)
	_ = os.Chtimes(path, future, future)
	if err := rl.Check(gw2.Cert); !errors.Is(err, ErrRevoked) {
		t.Fatalf("edited list: %v", err)
	}
	if err := rl.Check(gw1.Cert); err != nil {
		t.Fatalf("removed from the list, still refused: %v", err)
	}
	if err := os.WriteFile(path, []byte("not-a-serial\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(path, future.Add(time.Minute), future.Add(time.Minute))
	if err := rl.Check(gw1.Cert); err == nil || errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad list: %v", err)
	}
}
