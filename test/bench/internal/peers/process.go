package peers

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a server the driver started as a child process, so that its
// CPU time and memory can be read from /proc apart from the load
// generator's. Its output goes to a log file.
type Process struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartProcess runs bin with args and env added to the driver's
// environment, writing its output to logPath. The child is killed if the
// driver dies.
func StartProcess(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); out.Close(); close(p.done) }()
	return p, nil
}

// PID is the child's process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the child has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop asks the child to exit (SIGTERM) and kills it after 10 seconds.
func (p *Process) Stop() {
	if p == nil || p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Tail returns the last n bytes of the child's output.
func (p *Process) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// WaitTLS waits until readyFile exists and addr accepts a TLS handshake,
// failing early if the process exits.
func (p *Process) WaitTLS(addr, readyFile string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if p.Exited() {
			return fmt.Errorf("%s exited:\n%s", p.Name, p.Tail(4000))
		}
		if _, err := os.Stat(readyFile); err == nil {
			conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only probing that the listener is up
			if err == nil {
				conn.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %v:\n%s", p.Name, addr, limit, p.Tail(4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ChildPID finds a child of this process whose command name starts with
// prefix (for servers started by other packages, such as Vault).
func ChildPID(prefix string) (int, error) {
	self := os.Getpid()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		lp, rp := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if lp < 0 || rp < lp {
			continue
		}
		comm := string(stat[lp+1 : rp])
		f := strings.Fields(string(stat[rp+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if ppid == self && strings.HasPrefix(comm, prefix) {
			return pid, nil
		}
	}
	return 0, errors.New("no child process named " + prefix + "*")
}

// FreeAddr returns a loopback address no one listens on at the moment.
// Another process may take it before the caller binds it, as with any
// free-port probe.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
