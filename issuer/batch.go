package issuer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Signing through Transit costs one HTTP round trip, most of it Vault's
// per-request overhead rather than the signature. Concurrent signatures
// with the same key version and parameters are therefore grouped into one
// batch_input request, the way the issuance log groups commits: a request
// that arrives while a batch is in flight waits for the next one. A batch
// of one is an ordinary request.

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
	input string // base64 digest
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

// batcher returns the batcher for key, starting it on first use. Batchers
// live as long as the Transit engine; there is one per key version in use.
func (t *Transit) batcher(name string, key batchKey) *signBatcher {
	if b, ok := t.batchers.Load(key); ok {
		return b.(*signBatcher)
	}
	nb := &signBatcher{t: t, key: key, name: name, reqs: make(chan *signReq, 4*maxSignBatch)}
	b, loaded := t.batchers.LoadOrStore(key, nb)
	if !loaded {
		for range signWorkers {
			go nb.run()
		}
	}
	return b.(*signBatcher)
}

// sign queues one signature and waits for its batch.
func (b *signBatcher) sign(ctx context.Context, input string) ([]byte, error) {
	req := &signReq{input: input, done: make(chan signResult, 1)}
	keyPath := b.t.mount + "/keys/" + b.name
	select {
	case b.reqs <- req:
	case <-ctx.Done():
		return nil, vaultErr("sign with", keyPath, b.key.version, ctx.Err())
	}
	select {
	case r := <-req.done:
		return r.sig, r.err
	case <-ctx.Done():
		return nil, vaultErr("sign with", keyPath, b.key.version, ctx.Err())
	}
}

func (b *signBatcher) run() {
	batch := make([]*signReq, 0, maxSignBatch)
	for req := range b.reqs {
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
		b.send(batch)
	}
}

// send signs a batch in one request and hands each caller its result.
func (b *signBatcher) send(batch []*signReq) {
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
	ctx, cancel := context.WithTimeout(context.Background(), b.t.timeout)
	defer cancel()
	start := time.Now()
	sec, err := b.t.client.Logical().WriteWithContext(ctx, b.key.path, body)
	if o := b.t.observe; o != nil {
		o("sign", time.Since(start), err)
	}
	keyPath := b.t.mount + "/keys/" + b.name
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
		item, _ := raw.(map[string]any)
		if msg, _ := item["error"].(string); msg != "" {
			batch[i].done <- signResult{err: vaultErr("sign with", keyPath, b.key.version, errors.New(msg))}
			continue
		}
		text, _ := item["signature"].(string)
		ver, sig, err := ParseTransitSignature(text)
		switch {
		case err != nil:
			batch[i].done <- signResult{err: vaultErr("sign with", keyPath, b.key.version, err)}
		case ver != b.key.version:
			batch[i].done <- signResult{err: vaultErr("sign with", keyPath, b.key.version,
				fmt.Errorf("vault signed with version %d, not the pinned version", ver))}
		default:
			batch[i].done <- signResult{sig: sig}
		}
	}
}
