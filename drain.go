package ssebroadcast

import (
	"cmp"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// A reload that ended every stream at once would have every browser
// reconnect in the same second: with 10,000 clients, 10,000 handshakes at
// once. A handler with a drain window ends its streams, on a reload, at
// moments spread over the window instead. Until its moment a stream stays
// subscribed to the process's broadcaster, which the reload keeps, so it
// receives every event published, keep-alives go on, and its client then
// reconnects to the new config with Last-Event-ID and misses nothing. The
// old server takes no new connection meanwhile (Caddy hands its listeners
// to the new one, and sends GOAWAY on its HTTP/2 connections), and its
// shutdown waits at most the window and the shutdown's one-second bound on
// writes (and the second an HTTP/2 connection takes to close after its last
// stream). A stop (`caddy stop`, a signal, caddy.Stop) ends every stream at
// once, those of earlier configs still draining too.

// drainsPool holds the drains under way. A drain outlives the config that
// started it, and must be cut short when Caddy stops, whichever config runs
// then: like the broadcaster, the set lives in a caddy.UsagePool, and the
// last config to go ends what is left of it.
var drainsPool = caddy.NewUsagePool()

const drainsKey = "drains"

// drains is the set of drains under way in the process.
type drains struct {
	mu      sync.Mutex
	running map[*configDrain]struct{}
	// closed is set once no config is left: a drain begun after that
	// (there should be none) ends its streams at once.
	closed bool
}

// configDrain ends one config's streams, each at its moment.
type configDrain struct {
	// hurry is closed to end every stream left at once.
	hurry     chan struct{}
	hurryOnce sync.Once
	// done is closed once every stream of the drain has been ended.
	done chan struct{}
}

// drainingStream is a stream and the moment, after its drain began, at
// which it ends.
type drainingStream struct {
	sub    *subscriber
	window time.Duration // its handler's drain window
	at     time.Duration
}

func newDrains() *drains {
	return &drains{running: make(map[*configDrain]struct{})}
}

// Destruct implements caddy.Destructor: the last config is gone, and with
// it the broadcaster the draining streams receive from.
func (d *drains) Destruct() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.hurryAll()
	return nil
}

// replacedByAnotherConfig reports whether the config of ctx is stopping
// because another took its place, a reload, rather than because Caddy
// stops: caddy.Stop clears the running config before it stops the apps,
// and an exiting process (`caddy stop`, a signal) says so.
func replacedByAnotherConfig(ctx caddy.Context) bool {
	if caddy.Exiting() {
		return false
	}
	running := caddy.ActiveContext().Context
	return running != nil && running != ctx.Context
}

// start ends streams over their windows, from now on, and returns at once.
func (d *drains) start(b *broadcaster, logger *zap.Logger, streams []drainingStream) {
	longest := time.Duration(0)
	for _, ds := range streams {
		longest = max(longest, ds.window)
	}
	spread(streams)
	dr := &configDrain{hurry: make(chan struct{}), done: make(chan struct{})}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		for _, ds := range streams {
			b.drop(ds.sub, dropShutdown)
		}
		return
	}
	d.running[dr] = struct{}{}
	d.mu.Unlock()
	logger.Info("draining open streams", zap.Int("streams", len(streams)), zap.Duration("window", longest))
	began := time.Now()
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.running, dr)
			d.mu.Unlock()
		}()
		defer close(dr.done)
		if left := dr.run(b, streams, began); left > 0 {
			logger.Info("ended draining streams at once", zap.Int("streams", left))
		}
	}()
}

// spread gives each stream its moment and sorts the streams by it. The
// moments of the streams of one window are stratified: the window is cut
// into as many equal slots as there are streams, each stream (in random
// order) takes a slot and a random moment within it. Streams end at an even
// rate, so reconnects come at an even rate, without the clusters that
// independent random moments would have; and which stream ends when is
// random.
func spread(streams []drainingStream) {
	slices.SortFunc(streams, func(a, b drainingStream) int { return cmp.Compare(a.window, b.window) })
	for rest := streams; len(rest) > 0; {
		n := 1
		for n < len(rest) && rest[n].window == rest[0].window {
			n++
		}
		same := rest[:n]
		rand.Shuffle(len(same), func(i, j int) { same[i], same[j] = same[j], same[i] })
		for i := range same {
			same[i].at = time.Duration((float64(i) + rand.Float64()) / float64(n) * float64(same[i].window))
		}
		rest = rest[n:]
	}
	slices.SortFunc(streams, func(a, b drainingStream) int { return cmp.Compare(a.at, b.at) })
}

// run ends each stream at its moment after began, and returns how many were
// left when hurried, if it was.
func (dr *configDrain) run(b *broadcaster, streams []drainingStream, began time.Time) int {
	timer := time.NewTimer(unarmed)
	defer timer.Stop()
	for i := 0; i < len(streams); {
		if wait := streams[i].at - time.Since(began); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-dr.hurry:
				for _, ds := range streams[i:] {
					b.drop(ds.sub, dropShutdown)
				}
				return len(streams) - i
			}
		}
		// Every stream whose moment has come, in one go: a drain of
		// many streams over a short window wakes less often than it
		// ends streams.
		for elapsed := time.Since(began); i < len(streams) && streams[i].at <= elapsed; i++ {
			// A stream whose client left meanwhile was dropped then:
			// this drop does nothing.
			b.drop(streams[i].sub, dropShutdown)
			streams[i].sub = nil
		}
	}
	return 0
}

// hurryAll ends every stream of every drain at once, and returns when they
// have all been ended.
func (d *drains) hurryAll() {
	d.mu.Lock()
	running := slices.Collect(maps.Keys(d.running))
	d.mu.Unlock()
	for _, dr := range running {
		dr.hurryOnce.Do(func() { close(dr.hurry) })
		<-dr.done
	}
}
