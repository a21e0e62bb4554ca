package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/mod/sumdb/note"

	adminv1 "github.com/transitca/transitca/proto/transitca/admin/v1"
	"github.com/transitca/transitca/store"
)

func logShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log show", stderr)
	seq := fs.Int64("seq", -1, "entry sequence number")
	serial := fs.String("serial", "", "certificate serial")
	withPEM := fs.Bool("pem", false, "include the certificate as PEM")
	req := &adminv1.GetEntryRequest{}
	api, ctx, done, err := lf.connect(ctx, fs, args, func() error {
		switch {
		case *seq >= 0:
			req.Key = &adminv1.GetEntryRequest_Seq{Seq: uint64(*seq)}
		case *serial != "":
			req.Key = &adminv1.GetEntryRequest_Serial{Serial: *serial}
		default:
			return errors.New("name the entry with --seq or --serial")
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.GetEntry(ctx, req)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(toExport(resp.GetEntry(), *withPEM))
}

func logCheckpoint(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log checkpoint", stderr)
	api, ctx, done, err := lf.connect(ctx, fs, args, nil)
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, string(resp.GetCheckpoint()))
	if vk := resp.GetVerifierKey(); vk != "" {
		fmt.Fprintf(stderr, "verifier key: %s\n", vk)
	}
	return nil
}

// logProve fetches an inclusion proof (and optionally a consistency proof)
// and checks it here, offline, with only the checkpoint verifier key.
func logProve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, lf := newLogFlagSet("ca log prove", stderr)
	certFile := fs.String("certificate", "", "prove this certificate (PEM; the first certificate in the file) is in the log")
	serial := fs.String("serial", "", "prove the entry with this serial is in the log")
	seq := fs.Int64("seq", -1, "prove the entry with this sequence number is in the log")
	since := fs.String("since", "", "also prove the log only grew since this earlier signed checkpoint (a file saved from \"ca log checkpoint\")")
	var (
		req  *adminv1.GetInclusionProofRequest
		want []byte
	)
	api, ctx, done, err := lf.connect(ctx, fs, args, func() (err error) {
		req, want, err = proveRequest(*certFile, *serial, *seq)
		return err
	})
	if err != nil {
		return err
	}
	defer done()
	resp, err := api.GetInclusionProof(ctx, req)
	if err != nil {
		return err
	}
	vkey, err := lf.verifierKeyText()
	if err != nil {
		return err
	}
	if vkey == "" {
		cp, err := api.GetCheckpoint(ctx, &adminv1.GetCheckpointRequest{})
		if err != nil {
			return err
		}
		vkey = cp.GetVerifierKey()
		fmt.Fprintln(stderr, "note: verifier key taken from the server; pass --verifier-key to check against a key you trust")
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	cp, err := store.VerifyInclusion(resp.GetCheckpoint(), v, resp.GetLeafData(), resp.GetIndex(), resp.GetProof())
	if err != nil {
		return fmt.Errorf("inclusion proof does not verify: %w", err)
	}
	var e store.Entry
	if err := e.UnmarshalBinary(resp.GetLeafData()); err != nil {
		return fmt.Errorf("proven leaf: %w", err)
	}
	if want != nil && string(e.Certificate) != string(want) {
		return fmt.Errorf("the log's entry %d for serial %s holds a different certificate than %s", resp.GetIndex(), e.Serial, *certFile)
	}
	fmt.Fprintf(stdout, "entry %d (%s %s) is in the log: inclusion proof verified against checkpoint %s size %d\n",
		resp.GetIndex(), e.Kind, e.Serial, cp.Origin, cp.Size)
	if *since != "" {
		old, err := os.ReadFile(*since)
		if err != nil {
			return err
		}
		oldCP, err := store.OpenCheckpoint(old, v)
		if err != nil {
			return fmt.Errorf("%s: %w", *since, err)
		}
		if oldCP.Size > cp.Size {
			return fmt.Errorf("%w: the log is shorter than the checkpoint in %s: its latest checkpoint has %d entries, that one %d: it was rolled back, or it is not the log the checkpoint is of",
				store.ErrRolledBack, *since, cp.Size, oldCP.Size)
		}
		cr, err := api.GetConsistencyProof(ctx, &adminv1.GetConsistencyProofRequest{FromSize: oldCP.Size, ToSize: cp.Size})
		if err != nil {
			return err
		}
		if err := store.VerifyConsistency(old, cr.GetToCheckpoint(), v, cr.GetProof()); err != nil {
			return fmt.Errorf("consistency proof does not verify: %w", err)
		}
		fmt.Fprintf(stdout, "consistency proof verified: the log of size %d in %s is a prefix of the log of size %d\n", oldCP.Size, *since, cp.Size)
	}
	return nil
}

// proveRequest is the inclusion proof request for what prove was asked to
// prove and, with --certificate, the certificate the log's entry must hold.
func proveRequest(certFile, serial string, seq int64) (*adminv1.GetInclusionProofRequest, []byte, error) {
	req := &adminv1.GetInclusionProofRequest{}
	switch {
	case certFile != "":
		data, err := os.ReadFile(certFile)
		if err != nil {
			return nil, nil, err
		}
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, nil, fmt.Errorf("%s: no PEM certificate", certFile)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, err
		}
		req.Key = &adminv1.GetInclusionProofRequest_Serial{Serial: store.SerialHex(cert.SerialNumber)}
		return req, cert.Raw, nil
	case serial != "":
		req.Key = &adminv1.GetInclusionProofRequest_Serial{Serial: serial}
	case seq >= 0:
		req.Key = &adminv1.GetInclusionProofRequest_Seq{Seq: uint64(seq)}
	default:
		return nil, nil, errors.New("name what to prove with --certificate, --serial or --seq")
	}
	return req, nil, nil
}
