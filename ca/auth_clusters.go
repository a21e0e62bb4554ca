package ca

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// ClusterAuthenticator serves several clusters, each with its own token
// verifier: a request's token goes to the verifier of the cluster its
// clusterid header names (none means DefaultCluster), and to no other. A
// token of one cluster presented with another cluster's ID is checked by
// the other cluster's verifier, which refuses it. A clusterid no cluster
// has is refused before any verifier sees the token.
type ClusterAuthenticator struct {
	byID map[string]Authenticator
	ids  []string
}

// NewClusterAuthenticator returns a ClusterAuthenticator for the verifiers
// of each cluster, by cluster ID. Each verifier should itself accept only
// its own cluster's ID.
func NewClusterAuthenticator(byID map[string]Authenticator) (*ClusterAuthenticator, error) {
	if len(byID) == 0 {
		return nil, errors.New("cluster authenticator: no clusters")
	}
	c := &ClusterAuthenticator{byID: map[string]Authenticator{}}
	for id, a := range byID {
		if id == "" || a == nil {
			return nil, fmt.Errorf("cluster authenticator: cluster %s has no id or no verifier", quote(id))
		}
		c.byID[id] = a
		c.ids = append(c.ids, id)
	}
	slices.Sort(c.ids)
	return c, nil
}

// Authenticate implements Authenticator.
func (c *ClusterAuthenticator) Authenticate(ctx context.Context, cred Credentials) (*Caller, error) {
	id, err := checkCluster(cred.ClusterID, c.ids)
	if err != nil {
		return nil, err
	}
	return c.byID[id].Authenticate(ctx, cred)
}

// claimedCluster returns the cluster ID a request's clusterid header names
// (DefaultCluster when it names none) if it is one of the clusters served,
// else "": what the denial of an unauthenticated caller records.
func (s *Service) claimedCluster(ctx context.Context) string {
	cred, err := CredentialsFromContext(ctx)
	if err != nil {
		return ""
	}
	id := cred.ClusterID
	if id == "" {
		id = DefaultCluster
	}
	if slices.Contains(s.clusters, id) {
		return id
	}
	return ""
}
