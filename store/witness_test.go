package store

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// witnessLog opens a log with a file witness and checkpoints written only
// when asked.
func witnessLog(t *testing.T, path string, w Witness) (*Log, error) {
	t.Helper()
	return Open(path, Options{Signer: testSigner(t), Witness: w, CheckpointEvery: 1 << 30, CheckpointInterval: time.Hour,
		Logger: slog.New(slog.DiscardHandler)})
}

func checkpointNow(t *testing.T, l *Log) []byte {
	t.Helper()
	cp, err := l.WriteCheckpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// A log file put back from a backup, or replaced by another log of the
// same origin, is refused: its tree is smaller than, or does not extend,
// the checkpoint the witness holds.
func TestWitnessRefusesRolledBackLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "log.db")
	w := NewFileWitness(filepath.Join(dir, "witness"))

	l, err := witnessLog(t, path, w)
	if err != nil {
		t.Fatal(err)
	}
	fillLog(t, l, 30)
	cp30 := checkpointNow(t, l)
	if got, _ := w.Latest(ctx); !bytes.Equal(got, cp30) {
		t.Fatalf("witness holds %q after the checkpoint, want %q", got, cp30)
	}
	var backup bytes.Buffer
	if _, err := l.WriteTo(&backup); err != nil {
		t.Fatal(err)
	}
	fillLogFrom(t, l, 30, 30)
	if err := l.Close(); err != nil { // final checkpoint at 60, published
		t.Fatal(err)
	}
	if got, _ := w.Latest(ctx); !strings.Contains(string(got), "\n60\n") {
		t.Fatalf("witness after Close holds %q, want the checkpoint of size 60", got)
	}
	current := readFile(t, path)

	// A fork: another log of the same origin and as many entries.
	forkPath := filepath.Join(t.TempDir(), "fork.db")
	fork := openTest(t, forkPath, Options{Signer: testSigner(t)})
	fillLogFrom(t, fork, 1000, 70)
	_ = fork.Close()

	for _, tc := range []struct {
		name string
		file []byte
		says string
	}{
		{"old backup put back", backup.Bytes(), "it has 30 entries, but the checkpoint last published to the witness says the log had 60"},
		{"file replaced", readFile(t, forkPath), "its 70 entries do not extend the tree of size 60"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := writeFile(path, tc.file); err != nil {
				t.Fatal(err)
			}
			_, err := witnessLog(t, path, w)
			if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open: %v\nwant ErrRolledBack saying %q", err, tc.says)
			}
			ro := openTest(t, path, Options{ReadOnly: true, Witness: w})
			if _, err := ro.Verify(ctx, nil); !errors.Is(err, ErrRolledBack) {
				t.Fatalf("Verify: %v, want ErrRolledBack", err)
			}
			_ = ro.Close()
			if got, _ := w.Latest(ctx); !strings.Contains(string(got), "\n60\n") {
				t.Fatalf("the witness was changed: %q", got)
			}
		})
	}

	// The real file opens, verifies, and goes on publishing.
	if err := writeFile(path, current); err != nil {
		t.Fatal(err)
	}
	l, err = witnessLog(t, path, w)
	if err != nil {
		t.Fatalf("Open of the intact log: %v", err)
	}
	defer l.Close()
	if _, err := l.Verify(ctx, nil); err != nil {
		t.Fatal(err)
	}
	fillLogFrom(t, l, 60, 5)
	cp65 := checkpointNow(t, l)
	if got, _ := w.Latest(ctx); !bytes.Equal(got, cp65) {
		t.Fatalf("witness holds %q, want the checkpoint of size 65", got)
	}
}

// flakyWitness fails Publish while down is set.
type flakyWitness struct {
	mu   sync.Mutex
	down bool
	FileWitness
}

func (w *flakyWitness) setDown(d bool) { w.mu.Lock(); w.down = d; w.mu.Unlock() }

func (w *flakyWitness) Publish(ctx context.Context, prev, next []byte) error {
	w.mu.Lock()
	down := w.down
	w.mu.Unlock()
	if down {
		return errors.New("witness unreachable")
	}
	return w.FileWitness.Publish(ctx, prev, next)
}

// A witness that cannot be written never fails an append or a checkpoint;
// the next checkpoint publishes.
func TestWitnessPublishFailureDoesNotBlockAppends(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w := &flakyWitness{FileWitness: FileWitness{path: filepath.Join(dir, "witness")}}
	l, err := witnessLog(t, filepath.Join(dir, "log.db"), w)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fillLog(t, l, 10)
	checkpointNow(t, l)
	w.setDown(true)
	fillLogFrom(t, l, 10, 10)
	if _, err := l.WriteCheckpoint(ctx); err != nil {
		t.Fatalf("WriteCheckpoint with the witness down: %v", err)
	}
	if got, _ := w.Latest(ctx); !strings.Contains(string(got), "\n10\n") {
		t.Fatalf("witness holds %q, want the checkpoint of size 10", got)
	}
	w.setDown(false)
	fillLogFrom(t, l, 20, 1)
	cp21 := checkpointNow(t, l)
	if got, _ := w.Latest(ctx); !bytes.Equal(got, cp21) {
		t.Fatalf("witness holds %q, want the checkpoint of size 21", got)
	}
}

// An empty witness gets the log's latest checkpoint soon after Open.
func TestWitnessCatchesUpOnOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "log.db")
	l := openTest(t, path, Options{Signer: testSigner(t)})
	fillLog(t, l, 7)
	cp := checkpointNow(t, l)
	_ = l.Close()

	w := NewFileWitness(filepath.Join(dir, "witness"))
	l, err := witnessLog(t, path, w)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := w.Latest(ctx)
		if bytes.Equal(got, cp) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("witness holds %q, want the log's checkpoint", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
