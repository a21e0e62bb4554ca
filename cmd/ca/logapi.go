package main

import (
	"context"
	"errors"
	"io"

	"github.com/transitca/transitca/ca"
	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

// logAPI is what the log subcommands need: the admin API of a running
// daemon, or the same service over a log file opened read-only.
type logAPI interface {
	QueryLog(ctx context.Context, req *adminv1.QueryLogRequest) (*adminv1.QueryLogResponse, error)
	GetEntry(ctx context.Context, req *adminv1.GetEntryRequest) (*adminv1.GetEntryResponse, error)
	GetCheckpoint(ctx context.Context, req *adminv1.GetCheckpointRequest) (*adminv1.GetCheckpointResponse, error)
	GetInclusionProof(ctx context.Context, req *adminv1.GetInclusionProofRequest) (*adminv1.GetInclusionProofResponse, error)
	GetConsistencyProof(ctx context.Context, req *adminv1.GetConsistencyProofRequest) (*adminv1.GetConsistencyProofResponse, error)
	VerifyLog(ctx context.Context, req *adminv1.VerifyLogRequest) (*adminv1.VerifyLogResponse, error)
	Backup(ctx context.Context, w io.Writer) error
}

type remoteLog struct{ c adminv1.AdminServiceClient }

func (r remoteLog) QueryLog(ctx context.Context, q *adminv1.QueryLogRequest) (*adminv1.QueryLogResponse, error) {
	return r.c.QueryLog(ctx, q)
}
func (r remoteLog) GetEntry(ctx context.Context, q *adminv1.GetEntryRequest) (*adminv1.GetEntryResponse, error) {
	return r.c.GetEntry(ctx, q)
}
func (r remoteLog) GetCheckpoint(ctx context.Context, q *adminv1.GetCheckpointRequest) (*adminv1.GetCheckpointResponse, error) {
	return r.c.GetCheckpoint(ctx, q)
}
func (r remoteLog) GetInclusionProof(ctx context.Context, q *adminv1.GetInclusionProofRequest) (*adminv1.GetInclusionProofResponse, error) {
	return r.c.GetInclusionProof(ctx, q)
}
func (r remoteLog) GetConsistencyProof(ctx context.Context, q *adminv1.GetConsistencyProofRequest) (*adminv1.GetConsistencyProofResponse, error) {
	return r.c.GetConsistencyProof(ctx, q)
}
func (r remoteLog) VerifyLog(ctx context.Context, q *adminv1.VerifyLogRequest) (*adminv1.VerifyLogResponse, error) {
	return r.c.VerifyLog(ctx, q)
}
func (r remoteLog) Backup(ctx context.Context, w io.Writer) error {
	stream, err := r.c.Backup(ctx, &adminv1.BackupRequest{})
	if err != nil {
		return err
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(chunk.GetData()); err != nil {
			return err
		}
	}
}

type localLog struct {
	*ca.AdminService
	l *store.Log
}

func (l localLog) Backup(_ context.Context, w io.Writer) error {
	_, err := l.l.WriteTo(w)
	return err
}
