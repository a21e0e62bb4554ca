// Package store is the issuance log of transitca: an append-only,
// tamper-evident record of every certificate issued, every request denied
// and every administrative action, kept in one bbolt file and queryable by
// the security team.
//
// # Durability
//
// Append MUST NOT return nil before the entry is committed and fsynced.
// The issuance pipeline MUST NOT hand out a certificate whose Append
// returned an error. Concurrent appends share one commit (group commit): a
// single committer goroutine drains the queue of pending entries into one
// bbolt read-write transaction, numbers them inside it, commits (bbolt
// fsyncs the data and then the meta page) and only then acknowledges every
// caller of the batch. If the transaction fails, every caller of the batch
// gets the error, nothing of the batch is acknowledged, and the Log refuses
// further appends (ErrFailed), because after a failed write or fsync the
// state on disk, and bbolt's own state in memory, are unknown. The same holds
// for a failed commit of a checkpoint. The Log MUST close the channel of
// Failed (and Err MUST return the error) before any caller of the failed
// batch is answered, so that a daemon can stop serving at once. An entry is
// written once: there is no retry of a failed batch.
//
// A failed Log recovers by itself, without being closed: it waits
// Options.RecoverInterval (doubling up to a minute), checks that the disk
// takes writes (the file opens for writing; a scratch file in its directory
// is written and fsynced), then closes its bbolt handle and opens the file
// again, checks the whole tree as Open does, and MUST refuse to resume
// unless the file holds every acknowledged entry and its tree extends the
// acknowledged tree (a failed commit may have reached the disk: its entries
// are then committed but were never acknowledged, as after a crash). It then
// commits an admin entry ActionRecovered naming the failure, and only after
// that commit closes the channel of Recovered and accepts appends. Reads are
// served throughout, from a read-only handle while the file cannot be
// reopened for writing.
//
// Options.NoSync exists for tests and benchmarks and voids these promises.
//
// A crash can leave on disk an entry whose Append never returned (committed,
// not acknowledged); it can never lose an acknowledged one.
//
// # Tamper evidence
//
// Each entry is a leaf of an RFC 6962 Merkle tree: its leaf hash is
// SHA-256(0x00 || record bytes), where the record bytes are the stored
// encoding described below (they include the entry's own sequence number).
// In the same transaction as the entries, the log stores each leaf hash,
// the hashes of the complete subtrees at levels 8, 16, 24, ... (so that
// proofs need few reads) and the compact range of the tree (O(log n)
// hashes) from which the next root is computed.
//
// A checkpoint is the text "<origin>\n<size>\n<base64 root hash>\n" signed
// in the note format of golang.org/x/mod/sumdb/note (Options.Signer,
// normally an Ed25519 key in Vault Transit via NewNoteSigner). One is
// written at least every Options.CheckpointEvery entries or
// Options.CheckpointInterval, whichever comes first, and on Close. Signing
// needs the key (Vault), so Close MUST NOT wait for it longer than
// Options.CloseTimeout nor fail for want of it: it logs and closes, and a
// Log opened on a file whose size is beyond its last checkpoint MUST write
// one at once. Checkpoint failures never fail or delay an Append.
// InclusionProof and ConsistencyProof serve RFC 6962 proofs, and
// VerifyInclusion and VerifyConsistency check them offline with nothing but
// a signed checkpoint and the log's verifier key (VerifierKey).
//
// # Witness
//
// A file can also be rolled back as a whole: an old backup put back, the
// file replaced by another log of the same origin. Nothing inside the file
// can show that, so the latest checkpoint is also kept outside it, by a
// Witness (Options.Witness: Vault KV with check-and-set in production,
// NewFileWitness in dev mode). Every checkpoint the log writes MUST be
// published to the witness, with compare-and-set against the checkpoint
// the Log last saw there, after it is committed to the file (so the
// witness is never ahead of a file that was not rolled back). Publishing
// MUST NOT block or fail an Append: a failure is logged and publishing is
// retried at the next checkpoint (the witness then lags, which is safe).
// Open for appending MUST refuse, and Verify MUST fail, with ErrRolledBack,
// a log whose tree is smaller than the witness's checkpoint or does not
// extend it (checked with a consistency proof); Open MUST fail when the
// witness cannot be read, since the log cannot then be checked. A witness
// that holds a checkpoint the log does not extend is never overwritten.
//
// # Shards
//
// Replicas of the daemon each append to their own file, a shard. Two files
// MUST NOT share an origin: the origin names the log in its checkpoints and
// keys its checkpoint in the witness, so two shards under one origin would
// overwrite each other's witness and each would be refused as a rollback of
// the other. The daemon names a shard "<origin>/<shard>" (its log.shard);
// the note signer keeps the unsharded name, so one verifier key checks
// every shard. FileOrigin reads which origin a file holds before it is
// opened. Nothing is shared between shards: each has its own sequence
// numbers, tree and checkpoints, and a reader merges them by entry time.
//
// Open re-hashes every entry, compares with the stored leaf hashes and
// recomputes the root for every stored checkpoint before it accepts a file;
// Verify also checks the indexes and the consistency between checkpoints.
// Both name the first bad index (*VerifyError). Given Options.Verifiers
// that signed none of the stored checkpoints, both return ErrWrongKey
// instead: a key of another log says nothing about the entries.
//
// # File layout
//
// The file is a bbolt database. Bucket names are the bucket* variables of
// this package. The meta bucket holds the magic "transitca issuance log",
// the schema version (4 bytes, big-endian; this build creates schema 2
// files and reads and appends to schema 1 and 2) and the tree state. Open
// refuses, without writing, a file that is not bbolt, is truncated, has no
// meta bucket or another magic, or has a newer schema version; it tells
// which file and what is wrong.
//
// Both schemas have the same buckets, and the same entries, leaf hashes,
// subtree nodes, checkpoints and meta keys; they differ only in the keys of
// three indexes (see Indexes and queries): in schema 2 the serial and
// SPIFFE ID index keys are epoch || 8-byte name hash || seq and the issuer
// index keys start with 8 bytes of the fingerprint, where schema 1 has the
// whole serial (mapped to the seq), SPIFFE ID and fingerprint. A schema-1
// file is never converted: this build reads both layouts and appends to a
// schema-1 file in schema 1 (l.epochs says which), so opening an old file,
// even for writing, changes nothing but what appends add, and the file
// stays readable by the build that wrote it. (Rebuilding its indexes in
// place would save space but rewrite every index page of a large file in
// one transaction, for no gain in what the file proves.) A new file is
// created in schema 2. testdata/golden-log-schema1.db pins that this build
// opens, verifies, queries and appends to a schema-1 file, and writes one
// exactly as the earlier build did.
//
// bbolt keeps two meta pages and, when the newer one is damaged, silently
// uses the older: the file rolls back one transaction, and the entries and
// checkpoint that transaction held are gone without a trace. This package
// therefore reads both meta pages itself. Open for appending MUST refuse a
// file with a damaged meta page, and Verify MUST fail on it, with a
// *MetaDamageError naming the file, the page and the transaction that may
// be lost, whatever bbolt would fall back to. Only AcceptDamage, given that
// transaction, opens such a file for appending: it appends an admin entry
// (Action "accept-damage") recording what was accepted, and that commit
// rewrites the damaged page. Read-only opens (query, export) still serve
// such a file, for review.
//
// bbolt panics on a damaged page. Every transaction of a Log recovers the
// panic into an error wrapping ErrCorrupt that names the file: a damaged
// file MUST NOT crash a command or the daemon.
//
// # Record encoding (versions 1, 2 and 3)
//
// Records use a small hand-rolled binary encoding rather than JSON or
// protobuf: the bytes are hashed into the tree, so they must be canonical
// (one entry, one encoding), compact and stable forever, and protobuf and
// encoding/json make no canonicality promise. A record is:
//
//	byte 0      record version (1, 2 or 3)
//	byte 1      kind (1 issuance, 2 denial, 3 admin)
//	bytes 2-9   sequence number, uint64 big-endian
//	then fields in strictly increasing tag order, each a tag byte and a
//	value; a field with the zero value is omitted:
//	  strings and bytes: uvarint length, then the bytes
//	  integers and durations (nanoseconds): zig-zag varint
//	  times: zig-zag varint of Unix nanoseconds (UTC)
//	  issuer fingerprint: 32 raw bytes
//
// Tags of version 1: 1 Time, 2 Serial, 3 SPIFFEID, 4 Namespace,
// 5 ServiceAccount, 6 Tier, 7 RequestedTTL, 8 GrantedTTL, 9 NotBefore,
// 10 NotAfter, 11 IssuerFingerprint, 12 IssuerKeyVersion, 13 RootKeyVersion,
// 14 CallerID, 15 AuthMethod, 16 CallerSubject, 17 ClusterID,
// 18 Certificate, 19 Code, 20 Reason, 21 Action, 22 Actor, 23 Detail.
//
// Version 2 has every tag of version 1 plus 24 PodName and 25 PodUID (the
// pod a Kubernetes TokenReview bound the caller's token to). Version 3 has
// every tag of version 2 plus 26 CallerNode (the node of the pod of a node
// agent that asked for another identity, ambient mode). An entry MUST be
// written in the lowest version that holds its fields: version 3 when
// CallerNode is set, else version 2 when PodName or PodUID is, else
// version 1. A record with a tag of a later version than its own, and a
// version 2 or 3 record without a tag of its version, are corrupt, so
// that each entry still has exactly one encoding, and every record written
// before a version existed keeps its bytes and its hash.
//
// The decoder is strict (no unknown, repeated or out-of-order tags, no
// zero values, minimal varints), so decoding and re-encoding a record gives
// back the same bytes. To evolve the format, add a record version: records
// already written are never rewritten (their hashes are in signed
// checkpoints), so a newer build keeps decoding every older version, and an
// older build refuses a newer one (a build that reads only versions 1
// and 2 refuses a version 3 record as an unsupported version, rather than
// misreading it). A change of bucket layout bumps the schema version in
// the meta bucket.
//
// # Indexes and queries
//
// Index buckets (serial, SPIFFE ID, namespace, time, issuer, NotAfter) are
// written in the same transaction as the entry. Query scans one index and
// filters on the other fields, in pages bounded in size and in work; the
// filter also checks every field the scanned index stands for, so an index
// whose keys are hashes or prefixes returns exactly what a key of the whole
// value would.
//
// bbolt writes every page a transaction changes, and an index whose new
// keys fall anywhere in a large key range changes one page per key: in a
// log of a million entries in schema 1, the serial (random hex) and SPIFFE
// ID (thousands of identities) indexes made each append dirty its own
// pages, and an append cost three times what it costs in a new log. Schema
// 2 therefore keeps the keys an append writes inside a bounded range:
//
//   - The time, NotAfter and issuer keys end in the seq, under few
//     distinct prefixes (times grow with seq; a few intermediates): new
//     keys go to the end of the key space or of a few key ranges, and the
//     pages behind them are never written again. These buckets are filled
//     to 100% (bbolt FillPercent 1).
//   - The serial, SPIFFE ID and namespace keys start with the entry's
//     epoch, seq>>16 (4 bytes): an append only writes into the part of
//     the index of the last 65,536 entries, whatever the size of the log
//     (without it, a namespace index of a few hundred namespaces dirties,
//     in a large log, a leaf page and its own branch page per namespace
//     and commit). The epoch is derived from the seq, not from time, so
//     that it bounds the work whatever the spread of the entries' times
//     (Append takes the caller's time, and clocks step), and so that the
//     keys of one name stay in seq order across epochs: a query by SPIFFE
//     ID or namespace returns entries by seq as in schema 1, and its page
//     token (the last key) works unchanged. A query visits every epoch
//     with one seek each (about 150 in a log of ten million entries) and
//     skips epochs without the name. Within an epoch serials and SPIFFE
//     IDs land anywhere, so those buckets keep bbolt's default fill; the
//     namespace bucket is filled to 90% (a full page in the middle of the
//     key space splits badly; measured).
//   - Serials and SPIFFE IDs are stored as the first 8 bytes of their
//     SHA-256 (nameHash), and issuer fingerprints as their first 8 bytes:
//     the keys are 20 and 16 bytes instead of about 54 and 40. Entries
//     whose names share a hash are read and dropped by the filter.
//
// A serial lookup reads the serial index of every epoch. So that Append's
// duplicate-serial check does not, the committer keeps in memory a Bloom
// filter of the serial hashes in the log (10 bits each, about 1% false
// positives; 25 MB for ten million entries), built from the serial index
// when the first append after Open needs it and rebuilt twice as large
// when full; only a serial the filter cannot rule out is looked up.
//
// Measured in bytes of file per entry (pages of each bucket over the
// entries; the same 200,000 entries of the benchmark's mix in both
// schemas, issuances of about 810 bytes of record with a P-256 leaf and
// the caller's pod; schema 1 → schema 2): entries 1,007 → 1,007, leaf
// hashes 57 → 57, serial 81 → 52, SPIFFE ID 102 → 54, issuer 63 → 32,
// namespace 41 → 55, time 36 → 33, NotAfter 35 → 32; the whole file
// 1,556 → 1,415 (free pages and bbolt's allocation step included). The
// entries bucket holds each record once (the certificate is stored in the
// record only) and dominates. bbolt keeps a record whole in a 4 KiB page,
// with a 16-byte element header: records of up to 800 bytes go five to a
// page (about 820 bytes of file each), longer ones four (about 1,000).
// The namespace index is kept although a namespace query could scan the
// SPIFFE IDs ("spiffe://<trust domain>/ns/<ns>/sa/<sa>"): denials of
// unauthenticated callers have neither, but an entry may carry a
// namespace under another trust domain or SPIFFE ID form, and the results
// must not change.
//
// # Size of denials
//
// Every denied request that reaches the CA is appended (or counted into an
// aggregated denial entry; see the ca package's DenialLimits), so the log
// bounds what a caller can make it write. A denial entry's Reason is at
// most 1 KiB plus a truncation marker and its Detail a few hundred bytes,
// whatever the request carried: a denial of an unauthenticated caller is
// at most 1.5 KiB of record, and MUST take at most 4 KiB of the file with
// its leaf hash, index keys and page overhead (measured in schema 2, with
// a 300-byte Detail and a 64-byte cluster ID: 1.4 KiB of record and 2.1
// KiB of file); an authenticated caller's denial adds its validated
// identity fields and MUST take at most 8 KiB of the file (measured with a
// 330-byte SPIFFE ID, a 253-byte service account, pod and node name: 3.5
// KiB of record, 4.3 KiB of file in schema 2, 6.2 KiB in schema 1, whose
// SPIFFE ID and namespace keys hold the whole names).
// The file itself grows in bbolt's allocation steps. A denial entry that
// stands for several requests carries "count=<n>" in its Detail; one
// without it stands for one request. Requests refused by the gRPC
// transport (metadata or message over the server's limits) never reach
// the CA and are not in the log.
//
// # Backups
//
// A backup MUST NOT hold a transaction open at the pace of whoever reads
// it: an open read transaction keeps bbolt from reusing any page freed
// after it began, so the file grows with every commit, and a re-map of a
// grown file waits for it. Snapshot copies the file whole, at disk speed
// under one read transaction, into an unlinked temporary file in the
// log's directory, which is then read with no transaction open; it is
// refused (ErrNoSpace) when the copy would leave less free space than the
// log takes, and at least SnapshotReserve. WriteTo copies under one
// transaction into any writer, for writers as fast as a local file.
//
// Nothing in this package updates or deletes an entry.
package store
