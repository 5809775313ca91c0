package fleet

import (
	"context"
	"testing"
	"time"
)

// TestQuickstartShortRun runs the quickstart's whole fabric in process for a
// few seconds and requires every acknowledged message delivered once into
// the log.
func TestQuickstartShortRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Gateways: 2, Devices: 10, Rate: 20, Duration: 3 * time.Second, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if !res.OK() || res.Acked == 0 || res.Delivered != res.Acked || res.InLog != res.Acked {
		t.Fatalf("quickstart broke a contract: %+v", res.Summary)
	}
}
