package issuer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Signing through Transit costs one HTTP round trip, most of it Vault's
// per-request overhead rather than the signature. Concurrent signatures
// with the same key version and parameters are therefore grouped into one
// batch_input request, the way the issuance log groups commits: a request
// that arrives while a batch is in flight waits for the next one. A batch
// of one is an ordinary request.
//
// The batchers' workers live until Transit.Close. A batch request is bound
// to the engine's lifetime and to its callers: it is cancelled when the
// engine closes or when every caller in it has given up.

const (
	// maxSignBatch bounds the signatures sent in one request.
	maxSignBatch = 128
	// signWorkers is how many batches may be in flight at once per key
	// version and parameters.
	signWorkers = 4
)

// batchKey names the requests that can share a batch: the sign path and
// every parameter but the input.
type batchKey struct {
	path    string
	version int
	sigAlg  string
}

type signReq struct {
	ctx   context.Context // the caller's: when it ends, the caller has gone
	input string          // base64 digest
	done  chan signResult
}

type signResult struct {
	sig []byte
	err error
}

type signBatcher struct {
	t    *Transit
	key  batchKey
	name string
	reqs chan *signReq
}

// batcher returns the batcher for key, starting its workers on first use.
// There is one per key version and parameters in use; its workers end when
// the engine is closed. After Close it returns an error wrapping ErrClosed.
func (t *Transit) batcher(name string, key batchKey) (*signBatcher, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, vaultErr("sign with", t.mount+"/keys/"+name, key.version, ErrClosed)
	}
	if b, ok := t.batchers[key]; ok {
		return b, nil
	}
	b := &signBatcher{t: t, key: key, name: name, reqs: make(chan *signReq, 4*maxSignBatch)}
	if t.batchers == nil {
		t.batchers = map[batchKey]*signBatcher{}
	}
	t.batchers[key] = b
	t.workers.Add(signWorkers)
	for range signWorkers {
		go func() {
			defer t.workers.Done()
			b.run()
		}()
	}
	return b, nil
}

func (b *signBatcher) keyPath() string { return b.t.mount + "/keys/" + b.name }

// sign queues one signature and waits for its batch, for ctx to end or for
// the engine to close, whichever comes first.
func (b *signBatcher) sign(ctx context.Context, input string) ([]byte, error) {
	req := &signReq{ctx: ctx, input: input, done: make(chan signResult, 1)}
	select {
	case b.reqs <- req:
	case <-ctx.Done():
		return nil, vaultErr("sign with", b.keyPath(), b.key.version, ctx.Err())
	case <-b.t.life.Done():
		return nil, vaultErr("sign with", b.keyPath(), b.key.version, ErrClosed)
	}
	select {
	case r := <-req.done:
		return r.sig, r.err
	case <-ctx.Done():
		return nil, vaultErr("sign with", b.keyPath(), b.key.version, ctx.Err())
	case <-b.t.life.Done():
		return nil, vaultErr("sign with", b.keyPath(), b.key.version, ErrClosed)
	}
}

// run sends batches until the engine is closed.
func (b *signBatcher) run() {
	life := b.t.life
	batch := make([]*signReq, 0, maxSignBatch)
	for {
		var req *signReq
		select {
		case <-life.Done():
			return
		case req = <-b.reqs:
		}
		batch = append(batch[:0], req)
	drain:
		for len(batch) < maxSignBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		b.send(life, batch)
	}
}

// send signs a batch in one request and hands each caller its result. The
// request is cancelled when the engine is closed, or when every caller in
// the batch has stopped waiting; callers that stopped before it was sent
// are left out.
func (b *signBatcher) send(life context.Context, batch []*signReq) {
	live := batch[:0]
	for _, r := range batch {
		if r.ctx.Err() == nil {
			live = append(live, r)
		}
	}
	batch = live
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(life, b.t.timeout)
	defer cancel()
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, r := range batch {
		stops[i] = context.AfterFunc(r.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()

	items := make([]map[string]any, len(batch))
	for i, r := range batch {
		items[i] = map[string]any{"input": r.input}
	}
	body := map[string]any{
		"batch_input":          items,
		"key_version":          b.key.version,
		"prehashed":            true,
		"marshaling_algorithm": "asn1",
	}
	if b.key.sigAlg != "" {
		body["signature_algorithm"] = b.key.sigAlg
		if b.key.sigAlg == "pss" {
			body["salt_length"] = "hash"
		}
	}
	start := time.Now()
	sec, err := b.t.client.Logical().WriteWithContext(ctx, b.key.path, body)
	if o := b.t.observe; o != nil {
		o("sign", time.Since(start), err)
	}
	if err != nil && life.Err() != nil {
		err = ErrClosed
	}
	keyPath := b.keyPath()
	fail := func(err error) {
		for _, r := range batch {
			r.done <- signResult{err: vaultErr("sign with", keyPath, b.key.version, err)}
		}
	}
	if err != nil {
		fail(err)
		return
	}
	if sec == nil || sec.Data == nil {
		fail(errors.New("empty response"))
		return
	}
	results, _ := sec.Data["batch_results"].([]any)
	if len(results) != len(batch) {
		fail(fmt.Errorf("vault answered %d batch results for %d inputs", len(results), len(batch)))
		return
	}
	for i, raw := range results {
		batch[i].done <- b.result(raw)
	}
}

// result reads one item of a batch answer.
func (b *signBatcher) result(raw any) signResult {
	item, _ := raw.(map[string]any)
	if msg, _ := item["error"].(string); msg != "" {
		return signResult{err: vaultErr("sign with", b.keyPath(), b.key.version, errors.New(msg))}
	}
	text, _ := item["signature"].(string)
	ver, sig, err := ParseTransitSignature(text)
	switch {
	case err != nil:
		return signResult{err: vaultErr("sign with", b.keyPath(), b.key.version, err)}
	case ver != b.key.version:
		return signResult{err: vaultErr("sign with", b.keyPath(), b.key.version,
			fmt.Errorf("vault signed with version %d, not the pinned version", ver))}
	}
	return signResult{sig: sig}
}
