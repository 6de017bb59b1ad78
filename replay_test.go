package ssebroadcast

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Many events can be published in one microsecond, and the clock can step
// back: the sequence still increases strictly.
func TestSequenceIncreasesStrictlyWhateverTheClockSays(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	seq := nextSeq(0, now)
	assert.Equal(t, uint64(now.UnixMicro()), seq, "a fresh sequence starts at the clock")
	for range 1000 {
		next := nextSeq(seq, now)
		assert.Greater(t, next, seq)
		seq = next
	}
	assert.Greater(t, nextSeq(seq, now.Add(-time.Hour)), seq, "a clock that steps back does not take ids back")
	assert.Equal(t, uint64(now.Add(time.Second).UnixMicro()), nextSeq(seq, now.Add(time.Second)), "ids follow the clock again once it is ahead")
}

func TestAssignedIdsAreFixedWidthAndSortAsText(t *testing.T) {
	small, large := string(appendSeq(nil, 42)), string(appendSeq(nil, 1795862400000000))
	assert.Equal(t, "0000000000000042", small)
	assert.Less(t, small, large)
	seq, ok := parseSeq(large)
	assert.True(t, ok)
	assert.Equal(t, uint64(1795862400000000), seq)
	for _, notOurs := range []string{"", "42", "my-id", "17958624000000001", "179586240000000x"} {
		_, ok := parseSeq(notOurs)
		assert.False(t, ok, notOurs)
	}
}
