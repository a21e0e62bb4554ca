package ca_test

import (
	"encoding/json"
	"errors"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/transitca/transitca/ca"
	"github.com/transitca/transitca/internal/kubetest"
	"github.com/transitca/transitca/store"
)

// jwksOf fetches the API server's service account token keys, as
// auth.jwt.jwks_file would hold them.
func jwksOf(t *testing.T, env *kubetest.Env) *jose.JSONWebKeySet {
	t.Helper()
	raw, err := env.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	return &set
}

// TestClusterAuthenticatorKube serves three clusters from two real API
// servers: east and west are checked by their own API server's
// TokenReview, north (west's API server again) offline against its JWKS.
// Each cluster's tokens are accepted with its own ID only; presented with
// another cluster's ID, or with an ID no cluster has, they are refused.
func TestClusterAuthenticatorKube(t *testing.T) {
	east := kubetest.New(t)
	other, err := kubetest.Start()
	if err != nil {
		t.Fatalf("second api server: %v", err)
	}
	t.Cleanup(other.Stop)
	west := kubetest.NewOn(t, other)

	reviewer := func(env *kubetest.Env, id string) ca.Authenticator {
		return newKubeAuthenticator(t, reviewerClient(t, env, nil), func(o *ca.TokenReviewOptions) { o.Clusters = []string{id} })
	}
	north, err := ca.NewJWTAuthenticator(ca.JWTOptions{Issuer: kubetest.Issuer, KeySet: jwksOf(t, west), TrustDomain: trustDomain, Clusters: []string{"north"}})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := ca.NewClusterAuthenticator(map[string]ca.Authenticator{"east": reviewer(east, "east"), "west": reviewer(west, "west"), "north": north})
	if err != nil {
		t.Fatal(err)
	}
	token := func(env *kubetest.Env) string {
		env.ServiceAccount(t, "web")
		pod := env.Pod(t, "web-0", "web", "node-a")
		return env.Token(t, "web", kubetest.TokenOptions{Audiences: []string{istioCA}, Pod: pod})
	}
	eastToken, westToken := token(east), token(west)

	cases := []struct {
		name, token, cluster string
		wantNS               string // "" means refused
	}{
		{"east's token as east", eastToken, "east", east.Namespace},
		{"west's token as west", westToken, "west", west.Namespace},
		{"west's token as north (JWKS)", westToken, "north", west.Namespace},
		{"east's token as west", eastToken, "west", ""},
		{"west's token as east", westToken, "east", ""},
		{"east's token as north (JWKS)", eastToken, "north", ""},
		{"no clusterid (Kubernetes is not served)", eastToken, "", ""},
		{"unknown cluster", eastToken, "south", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := auth.Authenticate(t.Context(), ca.Credentials{Token: tc.token, ClusterID: tc.cluster})
			if tc.wantNS == "" {
				if !errors.Is(err, ca.ErrUnauthenticated) {
					t.Fatalf("got caller %+v, error %v; want ErrUnauthenticated", c, err)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ClusterID != tc.cluster || c.SPIFFEID != spiffe(tc.wantNS, "web") || c.PodName != "web-0" {
				t.Fatalf("caller %+v, want web-0 of %s in cluster %s", c, tc.wantNS, tc.cluster)
			}
		})
	}
}

// A refused token still leaves the cluster it claimed in its denial, when
// that cluster is served: the security team finds one cluster's token
// presented as another's with ca log query --cluster. An ID no cluster has
// is not recorded (the caller chose it).
func TestDenialRecordsClaimedCluster(t *testing.T) {
	s := newLoggedService(t, func(o *ca.ServiceOptions) { o.Clusters = []string{"east", "west"} })
	for _, tc := range []struct{ claimed, want string }{{"west", "west"}, {"south", ""}} {
		if err := s.call("192.0.2.30", metadata.Pairs("authorization", "Bearer x.y.z", "clusterid", tc.claimed), "csr"); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("bad token as %s: %v, want Unauthenticated", tc.claimed, err)
		}
		if e := lastEntry(t, s.log); e.Kind != store.KindDenial || e.ClusterID != tc.want || e.CallerID != "" {
			t.Fatalf("denial of a bad token claiming %s: %v, cluster %q, caller %q; want cluster %q and no caller", tc.claimed, e.Kind, e.ClusterID, e.CallerID, tc.want)
		}
	}
}
