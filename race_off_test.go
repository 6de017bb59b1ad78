//go:build !race

package ssebroadcast

// raceEnabled says the race detector is on: its shadow memory makes RSS
// figures meaningless.
const raceEnabled = false
