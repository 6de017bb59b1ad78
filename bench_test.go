package ssebroadcast

// Benchmarks of the publish path, in process: encoding, and fanning out to
// many subscribers. Run them with
//
//	go test -run '^$' -bench . -benchmem
//
// allocs/op must not grow with the number of subscribers: one encode per
// publish, nothing per delivery.

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

var payload100 = strings.Repeat("p", 100)

func BenchmarkEncode(b *testing.B) {
	ev := Event{Type: "tick", ID: "1795862400000000", Data: payload100}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = ev.encode(buf[:0])
	}
}

// drainEvery is how many publishes a subscriber's queue takes before the
// benchmark empties it, outside the timer; below the default queue bound.
const drainEvery = 512

// subscribed returns a broadcaster with n subscribers to channel "bench".
func subscribed(n int) (*broadcaster, []*subscriber) {
	b := newBroadcaster(broadcastLimits{events: 1000, bytes: 4 << 20, ttl: DefaultReplayTTL, totalBytes: DefaultReplayTotalBytes})
	subs := make([]*subscriber, n)
	for i := range subs {
		subs[i] = newSubscriber([]string{"bench"}, DefaultMaxQueue, DefaultMaxQueueBytes)
		b.subscribe(subs[i], &resumeRequest{})
	}
	return b, subs
}

func drain(subs []*subscriber, spare [][]byte) [][]byte {
	for _, s := range subs {
		spare = s.take(spare)
		select {
		case <-s.wake:
		default:
		}
	}
	return spare
}

// publishLoop publishes ev for the benchmark's duration, emptying the
// queues of the reading subscribers every drainEvery publishes outside the
// timer, and returns how many it published.
func publishLoop(b *testing.B, br *broadcaster, ev Event, reading []*subscriber) int {
	events := []Event{ev}
	transport := new(MemoryTransport)
	if err := transport.Open(br); err != nil {
		b.Fatal(err)
	}
	var spare [][]byte
	b.ReportAllocs()
	published := 0
	for b.Loop() {
		if _, err := br.publish(context.Background(), transport, events); err != nil {
			b.Fatal(err)
		}
		if published++; published%drainEvery == 0 {
			b.StopTimer()
			spare = drain(reading, spare)
			b.StartTimer()
		}
	}
	return published
}

func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1, 1000, 10000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			br, subs := subscribed(n)
			defer br.Destruct()
			published := publishLoop(b, br, Event{Channel: "bench", Type: "tick", Data: payload100}, subs)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(published*n), "ns/delivery")
		})
	}
}

// A subscriber that never takes its queue must cost the publisher nothing
// more than one that does: compare "one stalled" with "all reading".
func BenchmarkPublishWithAStalledSubscriber(b *testing.B) {
	for _, stalled := range []bool{false, true} {
		name := "all reading"
		if stalled {
			name = "one stalled"
		}
		b.Run(name, func(b *testing.B) {
			br, subs := subscribed(20)
			defer br.Destruct()
			reading := subs
			if stalled {
				reading = subs[1:]
			}
			publishLoop(b, br, Event{Channel: "bench", Data: strings.Repeat("k", 1024)}, reading)
		})
	}
}
