// Command gstacks is a measuring instrument: it prints how large the
// goroutines' stacks of a running Go process are, and how deep each is
// parked, read from /proc/PID/mem (root, or the process's own user):
//
//	gstacks $(pgrep -n caddy)
//
// It finds runtime.allgs in the process's symbol table and reads each g's
// stack bounds and saved stack pointer at the offsets of Go 1.26's
// runtime (stack.lo 0, stack.hi 8, sched.sp 56 on 64-bit): another Go
// release may move them. Rows of fewer than 20 goroutines are left out.
// BENCHMARKS.md says what it showed of HTTP/2 streams.
package main

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strconv"
)

func main() {
	pid, _ := strconv.Atoi(os.Args[1])
	f, err := elf.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		panic(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		panic(err)
	}
	var allgs uint64
	for _, s := range syms {
		if s.Name == "runtime.allgs" {
			allgs = s.Value
		}
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		panic(err)
	}
	rd := func(addr uint64, n int) []byte {
		b := make([]byte, n)
		if _, err := mem.ReadAt(b, int64(addr)); err != nil {
			panic(err)
		}
		return b
	}
	u64 := func(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }
	hdr := rd(allgs, 24)
	ptr, n := u64(hdr, 0), u64(hdr, 8)
	gps := rd(ptr, int(n)*8)
	type key struct{ size, usedBucket uint64 }
	count := map[key]int{}
	sizes := map[uint64]int{}
	var total uint64
	for i := 0; i < int(n); i++ {
		g := rd(u64(gps, i*8), 64)
		lo, hi, sp := u64(g, 0), u64(g, 8), u64(g, 56)
		if lo == 0 {
			continue
		}
		size := hi - lo
		used := hi - sp
		if sp < lo || sp > hi {
			used = 0
		}
		count[key{size, used / 256 * 256}]++
		sizes[size]++
		total += size
	}
	var ks []key
	for k := range count {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		if ks[i].size != ks[j].size {
			return ks[i].size < ks[j].size
		}
		return ks[i].usedBucket < ks[j].usedBucket
	})
	for _, k := range ks {
		if count[k] >= 20 {
			fmt.Printf("stack %6d  used %5d-%5d  x%d\n", k.size, k.usedBucket, k.usedBucket+255, count[k])
		}
	}
	fmt.Println("by size:", sizes, "total KiB", total/1024)
}
