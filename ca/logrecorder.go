package ca

import (
	"context"
	"fmt"
	"time"

	"github.com/transitca/transitca/issuer"
	"github.com/transitca/transitca/store"
)

// LogRecorder records to the issuance log. Append returns only after the
// entry is committed with fsync, so a certificate leaves the service only
// once its entry is durable.
type LogRecorder struct{ Log *store.Log }

// RecordIssuance appends an issuance entry.
func (r LogRecorder) RecordIssuance(ctx context.Context, is *Issuance) error {
	c := is.Caller
	_, err := r.Log.Append(ctx, &store.Entry{
		Kind:              store.KindIssuance,
		Time:              is.Time,
		Serial:            store.SerialHex(is.Cert.SerialNumber),
		SPIFFEID:          c.SPIFFEID,
		Namespace:         c.Namespace,
		ServiceAccount:    c.ServiceAccount,
		Tier:              is.Tier,
		RequestedTTL:      is.RequestedTTL,
		GrantedTTL:        is.GrantedTTL,
		NotBefore:         is.Cert.NotBefore,
		NotAfter:          is.Cert.NotAfter,
		IssuerFingerprint: is.Issuer.Fingerprint,
		IssuerKeyVersion:  is.Issuer.KeyVersion,
		RootKeyVersion:    is.RootKeyVersion,
		CallerID:          c.CallerID(),
		AuthMethod:        string(c.Method),
		CallerSubject:     c.Subject,
		ClusterID:         c.ClusterID,
		Certificate:       is.Cert.Raw,
		PodName:           c.PodName,
		PodUID:            c.PodUID,
		CallerNode:        c.Node,
	})
	return err
}

// RecordDenial appends a denial entry.
func (r LogRecorder) RecordDenial(ctx context.Context, d *Denial) error {
	e := &store.Entry{Kind: store.KindDenial, Time: d.Time, Code: d.Code.String(), Reason: d.Reason, Detail: d.Detail, ClusterID: d.ClusterID}
	if c := d.Caller; c != nil {
		e.SPIFFEID, e.Namespace, e.ServiceAccount = c.SPIFFEID, c.Namespace, c.ServiceAccount
		e.CallerID, e.AuthMethod, e.CallerSubject, e.ClusterID = c.CallerID(), string(c.Method), c.Subject, c.ClusterID
		e.PodName, e.PodUID, e.CallerNode = c.PodName, c.PodUID, c.Node
	}
	_, err := r.Log.Append(ctx, e)
	return err
}

// RecordAdmin appends an admin entry: an action of the CA or an operator.
func (r LogRecorder) RecordAdmin(ctx context.Context, action, actor, detail string) error {
	_, err := r.Log.Append(ctx, &store.Entry{Kind: store.KindAdmin, Time: time.Now(), Action: action, Actor: actor, Detail: detail})
	return err
}

// IntermediateActivatedAction is the action of the admin entry recorded
// for every issuing intermediate put to use.
const IntermediateActivatedAction = "intermediate-activated"

// RecordIntermediate appends an admin entry for an issuing intermediate
// put to use, so that the log names every key that signed its leaves. The
// entry carries the intermediate's fingerprint as its issuer fingerprint
// (the issuer index finds it with the leaves it signed), its validity,
// and, last in the detail, the fingerprint of its key (key=).
func (r LogRecorder) RecordIntermediate(ctx context.Context, in *issuer.Intermediate) error {
	detail := fmt.Sprintf("mode=%s fingerprint=%s serial=%s subject=%q not_before=%s not_after=%s key_version=%d key=%s",
		in.Mode, in.Fingerprint, store.SerialHex(in.Cert.SerialNumber), in.Cert.Subject.String(),
		in.Cert.NotBefore.UTC().Format(time.RFC3339), in.Cert.NotAfter.UTC().Format(time.RFC3339), in.KeyVersion,
		issuer.KeyFingerprint(in.Cert.PublicKey))
	_, err := r.Log.Append(ctx, &store.Entry{
		Kind: store.KindAdmin, Time: time.Now(), Action: IntermediateActivatedAction, Actor: "transitca", Detail: detail,
		IssuerFingerprint: in.Fingerprint, NotBefore: in.Cert.NotBefore, NotAfter: in.Cert.NotAfter,
	})
	return err
}
