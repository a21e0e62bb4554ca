package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: the kernel
// ABI fixes USER_HZ at 100 on Linux, whatever the kernel's own tick rate.
const userHZ = 100

// ProcSample is what /proc says about a process at one moment.
type ProcSample struct {
	// CPU is user plus system time since the process started.
	CPU time.Duration
	// RSS is the current resident set size (VmRSS), in bytes.
	RSS uint64
	// PeakRSS is the resident set's high-water mark (VmHWM), in bytes:
	// the peak since the process started or since ResetPeakRSS.
	PeakRSS uint64
	// RSSAnon and RSSFile split the current resident set into anonymous
	// memory (heap, stacks) and file-backed pages (the binary, and files
	// mapped into memory such as a bbolt database), in bytes.
	RSSAnon, RSSFile uint64
}

// ReadProc samples process pid from /proc/<pid>/stat and /proc/<pid>/status.
func ReadProc(pid int) (ProcSample, error) {
	var s ProcSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	if s.CPU, err = parseStatCPU(stat); err != nil {
		return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	if s.RSS, err = statusKB(status, "VmRSS:"); err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	if s.PeakRSS, err = statusKB(status, "VmHWM:"); err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	if s.RSSAnon, err = statusKB(status, "RssAnon:"); err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	if s.RSSFile, err = statusKB(status, "RssFile:"); err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return s, nil
}

// parseStatCPU returns utime+stime from the text of /proc/<pid>/stat. The
// second field (comm) is in parentheses and may hold spaces and
// parentheses itself, so fields are counted from the last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no ')' after the command name")
	}
	// After ")": field 3 (state) onwards; utime is field 14, stime 15.
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// statusKB returns the value of a "Key:   123 kB" line of
// /proc/<pid>/status, in bytes.
func statusKB(status []byte, key string) (uint64, error) {
	for line := range strings.SplitSeq(string(status), "\n") {
		rest, ok := strings.CutPrefix(line, key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s line %q is not \"<n> kB\"", key, line)
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", key, err)
		}
		return n * 1024, nil
	}
	return 0, fmt.Errorf("no %s line", key)
}

// ResetPeakRSS sets the process's VmHWM back to its current RSS (writing
// "5" to /proc/<pid>/clear_refs), so that the next sample's PeakRSS is the
// peak since now.
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// Proc names a process whose cost a run measures.
type Proc struct {
	Name string
	PID  int
}

// ProcCost is what a process spent during a measured window.
type ProcCost struct {
	Name string
	// CPU is the CPU time (user+system) used during the window.
	CPU time.Duration
	// PeakRSS is the resident set's peak during the window, in bytes (the
	// process's lifetime peak if it could not be reset; see PeakExact).
	PeakRSS uint64
	// PeakExact says the high-water mark was reset at the window's start.
	PeakExact bool
	// PeakAnon and PeakFile are the highest anonymous and file-backed
	// resident sizes seen by sampling every 100ms during the window, in
	// bytes. A Go server's own memory is its anonymous memory; file-backed
	// pages (a memory-mapped database) are page cache the kernel can
	// reclaim, though a memory cgroup counts them.
	PeakAnon, PeakFile uint64
	// Err is set if the process could not be sampled.
	Err error
}

// CPUPer1000 is the CPU time per 1,000 of n events.
func (c ProcCost) CPUPer1000(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(float64(c.CPU) * 1000 / float64(n))
}

// procWatch measures processes over a window: start resets their peaks and
// samples their CPU, then samples their memory every 100ms; stop samples
// again.
type procWatch struct {
	procs []Proc
	start []ProcSample
	exact []bool
	errs  []error
	anon  []uint64
	file  []uint64
	done  chan struct{}
	wg    sync.WaitGroup
}

func watchProcs(procs []Proc) *procWatch {
	n := len(procs)
	w := &procWatch{
		procs: procs, start: make([]ProcSample, n), exact: make([]bool, n), errs: make([]error, n),
		anon: make([]uint64, n), file: make([]uint64, n), done: make(chan struct{}),
	}
	for i, p := range procs {
		w.exact[i] = ResetPeakRSS(p.PID) == nil
		w.start[i], w.errs[i] = ReadProc(p.PID)
		w.see(i, w.start[i])
	}
	w.wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-t.C:
			}
			for i, p := range w.procs {
				if s, err := ReadProc(p.PID); err == nil {
					w.see(i, s)
				}
			}
		}
	})
	return w
}

// see records a memory sample; only the sampling goroutine calls it after
// watchProcs returns.
func (w *procWatch) see(i int, s ProcSample) {
	w.anon[i] = max(w.anon[i], s.RSSAnon)
	w.file[i] = max(w.file[i], s.RSSFile)
}

func (w *procWatch) stop() []ProcCost {
	close(w.done)
	w.wg.Wait()
	out := make([]ProcCost, len(w.procs))
	for i, p := range w.procs {
		c := ProcCost{Name: p.Name, PeakExact: w.exact[i], Err: w.errs[i]}
		if c.Err == nil {
			end, err := ReadProc(p.PID)
			if err != nil {
				c.Err = err
			} else {
				w.see(i, end)
				c.CPU = end.CPU - w.start[i].CPU
				c.PeakRSS = end.PeakRSS
				c.PeakAnon, c.PeakFile = w.anon[i], w.file[i]
			}
		}
		out[i] = c
	}
	return out
}
