package broker

import (
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestCloseWhileClientsDisconnect closes brokers while their clients
// disconnect. mochi v2.7.9's own shutdown read-locks the client list twice
// in a row, so a client removed in between (its Delete queued for the write
// lock) deadlocked Broker.Close; Close must finish every time, and every
// client still connected must be disconnected by it.
func TestCloseWhileClientsDisconnect(t *testing.T) {
	rounds, clients := 60, 32
	if testing.Short() {
		rounds = 10
	}
	for round := range rounds {
		ob := newFakeOutbox(t)
		// Two listeners: the clients the first one's closer disconnects are
		// removed while the second one's closer reads the list.
		b, err := New(Config{Listeners: Listeners{
			TCP:       TCPListener{Address: "127.0.0.1:0"},
			WebSocket: &WebSocketListener{Address: "127.0.0.1:0"},
		}}, ob, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		conns := make([]*rawClient, clients)
		for i := range conns {
			conns[i], _ = dialRaw(t, b.Addr().TCP, fmt.Sprintf("c%d-%d", round, i), 4, packets.Properties{})
		}
		// Half the clients hang up while Close runs: each removal takes the
		// client list's write lock.
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, c := range conns[:clients/2] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				runtime.Gosched()
				c.conn.Close()
			}()
		}
		closed := make(chan error, 1)
		close(start)
		go func() { closed <- b.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("round %d: Close: %v", round, err)
			}
		case <-time.After(safetyTimeout):
			buf := make([]byte, 1<<20)
			t.Fatalf("round %d: Close did not return (deadlock)\n%s", round, buf[:runtime.Stack(buf, true)])
		}
		wg.Wait()
		// The others were disconnected by Close: their reads end.
		for i, c := range conns[clients/2:] {
			_ = c.conn.SetReadDeadline(time.Now().Add(safetyTimeout))
			for {
				if _, err := c.read(); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						t.Fatalf("round %d: client %d still connected after Close", round, clients/2+i)
					}
					break
				}
			}
		}
		ob.close()
	}
}
