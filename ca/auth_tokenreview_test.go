package ca

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	fakeclientset "k8s.io/client-go/kubernetes/fake"
)

// shapedToken is a token in the form of a service-account token (a JWT
// naming the cluster's issuer, RS256) for the fake API server, which knows
// its users by the whole token; its signature means nothing here.
func shapedToken(name string) string {
	return jwtParts(`{"alg":"RS256","kid":"k1"}`, fmt.Sprintf(`{"iss":"https://kubernetes.default.svc.cluster.local","sub":%q}`, name)) + ".c2ln"
}

// jwtParts is header.payload, each base64url-encoded.
func jwtParts(header, payload string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
}

// fakeUser is what the fake API server knows about a workload token.
type fakeUser struct {
	username  string
	groups    []string
	audiences []string // the audiences the token was issued for
}

// fakeAPIServer behaves like the Kubernetes API server's TokenReview
// endpoint: it checks the request as the API server would and answers with
// the same status codes and bodies.
type fakeAPIServer struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	reviewer  string              // the only reviewer token it accepts
	forbidden bool                // the reviewer lacks RBAC for tokenreviews
	outage    int                 // answer this status code to everything, if set
	delay     time.Duration       // wait this long before answering
	users     map[string]fakeUser // workload token → user
	// answer, if set, replaces the computed status (a misbehaving server).
	answer *tokenReviewStatus

	requests atomic.Int32
	release  chan struct{} // closed when the test ends, to end delays
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	f := &fakeAPIServer{
		t:        t,
		reviewer: "reviewer-token-1",
		release:  make(chan struct{}),
		users: map[string]fakeUser{
			shapedToken("sleep"): {
				username:  "system:serviceaccount:default:sleep",
				groups:    []string{"system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"},
				audiences: []string{"istio-ca"},
			},
			shapedToken("api-audience"): {
				username:  "system:serviceaccount:default:sleep",
				groups:    []string{"system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"},
				audiences: []string{"https://kubernetes.default.svc.cluster.local"},
			},
			shapedToken("alice"): {
				username:  "alice",
				groups:    []string{"system:authenticated"},
				audiences: []string{"istio-ca"},
			},
		},
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.release) }) // runs first
	return f
}

// writeStatus answers with a meta/v1 Status, as the API server does for
// failures.
func writeStatus(w http.ResponseWriter, code int, reason, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": message, "reason": reason, "code": code,
	})
}

func (f *fakeAPIServer) serve(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	f.mu.Lock()
	reviewer, forbidden, outage, delay, answer := f.reviewer, f.forbidden, f.outage, f.delay, f.answer
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		case <-f.release:
			return
		}
	}
	if outage != 0 {
		writeStatus(w, outage, "ServiceUnavailable", "the server is currently unable to handle the request")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+reviewer {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
		return
	}
	if r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
		f.t.Errorf("request path = %q", r.URL.Path)
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
		return
	}
	if r.Method != http.MethodPost {
		f.t.Errorf("request method = %q", r.Method)
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Errorf("content type = %q", ct)
		writeStatus(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", fmt.Sprintf("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got %q", ct))
		return
	}
	if forbidden {
		writeStatus(w, http.StatusForbidden, "Forbidden",
			`tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:istio-system:transitca" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope`)
		return
	}
	var req struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Spec       struct {
			Token     string   `json:"token"`
			Audiences []string `json:"audiences"`
		} `json:"spec"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		f.t.Errorf("request body: %v", err)
		writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	if req.APIVersion != "authentication.k8s.io/v1" || req.Kind != "TokenReview" {
		f.t.Errorf("request object is %s %s", req.APIVersion, req.Kind)
		writeStatus(w, http.StatusBadRequest, "BadRequest", "the API version in the data does not match the expected API version")
		return
	}
	if req.Spec.Token == "" {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "token is required for TokenReview in authentication")
		return
	}
	if !slices.Equal(req.Spec.Audiences, []string{"istio-ca"}) {
		f.t.Errorf("request audiences = %q", req.Spec.Audiences)
	}

	status := map[string]any{"user": map[string]any{}}
	if u, ok := f.users[req.Spec.Token]; !ok {
		status["error"] = "[invalid bearer token, square/go-jose: error in cryptographic primitive]"
	} else if common := intersect(u.audiences, req.Spec.Audiences); len(common) == 0 {
		wantJSON, _ := json.Marshal(req.Spec.Audiences)
		gotJSON, _ := json.Marshal(u.audiences)
		status["error"] = fmt.Sprintf("[invalid bearer token, token audiences %s is invalid for the target audiences %s]", gotJSON, wantJSON)
	} else {
		status = map[string]any{
			"authenticated": true,
			"user": map[string]any{
				"username": u.username,
				"uid":      "0b6f1a3e-5d5c-4d0e-9a54-0c5d4f0b1f3a",
				"groups":   u.groups,
				"extra": map[string][]string{
					"authentication.kubernetes.io/pod-name": {"sleep-7d9f8b-x2x4z"},
					"authentication.kubernetes.io/pod-uid":  {"2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"},
				},
			},
			"audiences": common,
		}
	}
	if answer != nil {
		status = map[string]any{"authenticated": answer.Authenticated, "user": answer.User, "audiences": answer.Audiences, "error": answer.Error}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind":       "TokenReview",
		"apiVersion": "authentication.k8s.io/v1",
		"metadata":   map[string]any{"creationTimestamp": nil},
		"spec":       map[string]any{"token": req.Spec.Token, "audiences": req.Spec.Audiences},
		"status":     status,
	})
}

func intersect(a, b []string) []string {
	var out []string
	for _, s := range a {
		if slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

func (f *fakeAPIServer) set(edit func(f *fakeAPIServer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	edit(f)
}

// tokenReviewEnv is a fake API server and an authenticator configured the
// way it is in a pod: a reviewer token file and a cluster CA file.
type tokenReviewEnv struct {
	api       *fakeAPIServer
	auth      *TokenReviewAuthenticator
	tokenFile string
}

func newTokenReviewEnv(t *testing.T, timeout time.Duration) *tokenReviewEnv {
	api := newFakeAPIServer(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.srv.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("reviewer-token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	auth, err := NewTokenReviewAuthenticator(TokenReviewOptions{
		APIServer:   api.srv.URL,
		TokenFile:   tokenFile,
		CAFile:      caFile,
		Timeout:     timeout,
		TrustDomain: testTrustDomain,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &tokenReviewEnv{api: api, auth: auth, tokenFile: tokenFile}
}

func TestTokenReviewAuthenticator(t *testing.T) {
	e := newTokenReviewEnv(t, 2*time.Second)
	tests := []struct {
		name         string
		token        string
		cluster      string
		setup        func(f *fakeAPIServer)
		want         *Caller
		wantErr      error // nil with wantOther set: an error wrapping no sentinel
		wantOther    bool
		wantSubstr   string
		wantRequests int32
	}{
		{
			name:  "service account token",
			token: shapedToken("sleep"),
			want: &Caller{SPIFFEID: testID, Namespace: "default", ServiceAccount: "sleep", ClusterID: DefaultCluster,
				Method: AuthTokenReview, Subject: "system:serviceaccount:default:sleep",
				PodName: "sleep-7d9f8b-x2x4z", PodUID: "2d0f4f1e-0b1c-4f5e-8f7c-6a8d2e9c1b0a"},
			wantRequests: 1,
		},
		{
			name: "unknown token", token: shapedToken("forged"),
			wantErr: ErrUnauthenticated, wantSubstr: "kubernetes rejected the token: [invalid bearer token",
			wantRequests: 1,
		},
		{
			name: "token for another audience", token: shapedToken("api-audience"),
			wantErr:      ErrUnauthenticated,
			wantSubstr:   `token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid for the target audiences ["istio-ca"]`,
			wantRequests: 1,
		},
		{
			name: "user that is not a service account", token: shapedToken("alice"),
			wantErr: ErrUnauthenticated, wantSubstr: `token belongs to "alice", which is not a kubernetes service account`,
			wantRequests: 1,
		},
		{
			name: "authenticated without confirming the audience", token: shapedToken("sleep"),
			setup: func(f *fakeAPIServer) {
				f.answer = &tokenReviewStatus{Authenticated: true, User: userInfo{Username: "system:serviceaccount:default:sleep", Groups: []string{"system:serviceaccounts"}}}
			},
			wantErr: ErrUnauthenticated, wantSubstr: "token audience [] does not include istio-ca",
			wantRequests: 1,
		},
		{
			name: "service account name outside the service account group", token: shapedToken("sleep"),
			setup: func(f *fakeAPIServer) {
				f.answer = &tokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
					User: userInfo{Username: "system:serviceaccount:default:sleep", Groups: []string{"system:authenticated"}}}
			},
			wantErr: ErrUnauthenticated, wantSubstr: `token user "system:serviceaccount:default:sleep" is not in the system:serviceaccounts group`,
			wantRequests: 1,
		},
		{
			name: "authenticated with an error", token: shapedToken("sleep"),
			setup: func(f *fakeAPIServer) {
				f.answer = &tokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"}, Error: "webhook degraded",
					User: userInfo{Username: "system:serviceaccount:default:sleep", Groups: []string{"system:serviceaccounts"}}}
			},
			wantErr: ErrUnauthenticated, wantSubstr: "authenticated the token but reported an error: webhook degraded",
			wantRequests: 1,
		},
		{
			name: "malformed pod name", token: shapedToken("sleep"),
			setup: func(f *fakeAPIServer) {
				f.answer = &tokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
					User: userInfo{Username: "system:serviceaccount:default:sleep", Groups: []string{"system:serviceaccounts"},
						Extra: map[string][]string{"authentication.kubernetes.io/pod-name": {"Not_A/Name"}}}}
			},
			wantErr: ErrUnauthenticated, wantSubstr: "kubernetes reported a malformed authentication.kubernetes.io/pod-name",
			wantRequests: 1,
		},
		{
			name: "two pod uids", token: shapedToken("sleep"),
			setup: func(f *fakeAPIServer) {
				f.answer = &tokenReviewStatus{Authenticated: true, Audiences: []string{"istio-ca"},
					User: userInfo{Username: "system:serviceaccount:default:sleep", Groups: []string{"system:serviceaccounts"},
						Extra: map[string][]string{"authentication.kubernetes.io/pod-uid": {"a", "b"}}}}
			},
			wantErr: ErrUnauthenticated, wantSubstr: "kubernetes reported a malformed authentication.kubernetes.io/pod-uid",
			wantRequests: 1,
		},
		{
			name: "reviewer token refused", token: shapedToken("sleep"),
			setup:     func(f *fakeAPIServer) { f.reviewer = "some-other-token" },
			wantOther: true, wantSubstr: "kubernetes api refused this ca's reviewer token (401 Unauthorized): Unauthorized",
			wantRequests: 1,
		},
		{
			name: "reviewer without rbac", token: shapedToken("sleep"),
			setup:     func(f *fakeAPIServer) { f.forbidden = true },
			wantOther: true, wantSubstr: "grant its service account system:auth-delegator (403 Forbidden)",
			wantRequests: 1,
		},
		{
			name: "api server overloaded", token: shapedToken("sleep"),
			setup:   func(f *fakeAPIServer) { f.outage = http.StatusTooManyRequests },
			wantErr: ErrUnavailable, wantSubstr: "kubernetes api answered 429 Too Many Requests",
			wantRequests: 1,
		},
		{
			name: "api server down", token: shapedToken("sleep"),
			setup:   func(f *fakeAPIServer) { f.outage = http.StatusServiceUnavailable },
			wantErr: ErrUnavailable, wantSubstr: "kubernetes api answered 503 Service Unavailable",
			wantRequests: 1,
		},
		{
			name: "wrong cluster never reaches the api", token: shapedToken("sleep"), cluster: "east",
			wantErr: ErrUnauthenticated, wantSubstr: `cluster "east" is not served by this ca; allowed clusters: Kubernetes`,
		},
		{
			name: "oversized token never reaches the api", token: strings.Repeat("a", MaxTokenBytes+1),
			wantErr: ErrUnauthenticated, wantSubstr: "token is 8193 bytes, more than the 8192 allowed",
		},
		{
			name: "empty token never reaches the api", token: "",
			wantErr: ErrUnauthenticated, wantSubstr: "no bearer token",
		},
		{
			name: "8 KiB that is not a jwt never reaches the api", token: strings.Repeat("A", 8<<10),
			wantErr: ErrUnauthenticated, wantSubstr: "token is not a jwt: expected 3 dot-separated parts, got 1",
		},
		{
			name: "header that is not json never reaches the api", token: jwtParts("not json", `{"iss":"x"}`) + ".c2ln",
			wantErr: ErrUnauthenticated, wantSubstr: "token header is not a json object",
		},
		{
			name: "algorithm none never reaches the api", token: jwtParts(`{"alg":"none"}`, `{"iss":"x"}`) + ".c2ln",
			wantErr: ErrUnauthenticated, wantSubstr: `token algorithm "none" is not allowed`,
		},
		{
			name: "hmac never reaches the api", token: jwtParts(`{"alg":"HS256"}`, `{"iss":"x"}`) + ".c2ln",
			wantErr: ErrUnauthenticated, wantSubstr: `token algorithm "HS256" is not allowed`,
		},
		{
			name: "payload that is not json never reaches the api", token: jwtParts(`{"alg":"RS256"}`, "not json") + ".c2ln",
			wantErr: ErrUnauthenticated, wantSubstr: "token payload is not a json object with a string iss",
		},
		{
			name: "issuer that is not a string never reaches the api", token: jwtParts(`{"alg":"ES512"}`, `{"iss":5}`) + ".c2ln",
			wantErr: ErrUnauthenticated, wantSubstr: "token payload is not a json object with a string iss",
		},
		{
			name: "no issuer never reaches the api", token: jwtParts(`{"alg":"RS256"}`, `{"sub":"system:serviceaccount:default:sleep"}`) + ".c2ln",
			wantErr: ErrUnauthenticated, wantSubstr: "token names no issuer (iss claim)",
		},
		{
			name: "no signature never reaches the api", token: jwtParts(`{"alg":"RS256"}`, `{"iss":"x"}`) + ".",
			wantErr: ErrUnauthenticated, wantSubstr: "token signature is missing",
		},
		{
			name: "encrypted jwt never reaches the api", token: "a.b.c.d.e",
			wantErr: ErrUnauthenticated, wantSubstr: "token is an encrypted jwt (jwe)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.api.set(func(f *fakeAPIServer) {
				f.reviewer, f.forbidden, f.outage, f.answer = "reviewer-token-1", false, 0, nil
				if tc.setup != nil {
					tc.setup(f)
				}
			})
			before := e.api.requests.Load()
			got, err := e.auth.Authenticate(context.Background(), Credentials{Token: tc.token, ClusterID: tc.cluster})
			if n := e.api.requests.Load() - before; n != tc.wantRequests {
				t.Errorf("api server got %d requests, want %d", n, tc.wantRequests)
			}
			if tc.wantOther {
				if err == nil || wrapsSentinel(err) || !strings.Contains(err.Error(), tc.wantSubstr) {
					t.Fatalf("error = %v; want a configuration error containing %q", err, tc.wantSubstr)
				}
				return
			}
			checkErr(t, err, tc.wantErr, tc.wantSubstr)
			if tc.want != nil && *got != *tc.want {
				t.Fatalf("caller = %+v, want %+v", *got, *tc.want)
			}
		})
	}
}

func TestTokenReviewReviewerTokenRotation(t *testing.T) {
	e := newTokenReviewEnv(t, 2*time.Second)
	ctx := context.Background()
	if _, err := e.auth.Authenticate(ctx, Credentials{Token: shapedToken("sleep")}); err != nil {
		t.Fatal(err)
	}
	// The kubelet rotates the projected token: a new file replaces the old.
	e.api.set(func(f *fakeAPIServer) { f.reviewer = "reviewer-token-2-longer" })
	tmp := e.tokenFile + ".new"
	if err := os.WriteFile(tmp, []byte("reviewer-token-2-longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, e.tokenFile); err != nil {
		t.Fatal(err)
	}
	if _, err := e.auth.Authenticate(ctx, Credentials{Token: shapedToken("sleep")}); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
}

func TestTokenReviewReviewerTokenRetryAfter401(t *testing.T) {
	e := newTokenReviewEnv(t, 2*time.Second)
	ctx := context.Background()
	if _, err := e.auth.Authenticate(ctx, Credentials{Token: shapedToken("sleep")}); err != nil {
		t.Fatal(err)
	}
	// Same size and modification time: only the 401 reveals the change.
	fi, err := os.Stat(e.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	e.api.set(func(f *fakeAPIServer) { f.reviewer = "reviewer-token-2" })
	if err := os.WriteFile(e.tokenFile, []byte("reviewer-token-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(e.tokenFile, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	before := e.api.requests.Load()
	if _, err := e.auth.Authenticate(ctx, Credentials{Token: shapedToken("sleep")}); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if n := e.api.requests.Load() - before; n != 2 {
		t.Fatalf("api server got %d requests, want 2 (a 401, then a retry)", n)
	}
}

func TestTokenReviewTimeout(t *testing.T) {
	e := newTokenReviewEnv(t, 200*time.Millisecond)
	e.api.set(func(f *fakeAPIServer) { f.delay = 5 * time.Second })
	start := time.Now()
	_, err := e.auth.Authenticate(context.Background(), Credentials{Token: shapedToken("sleep")})
	checkErr(t, err, ErrUnavailable, "tokenreview: kubernetes api")
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("review took %s despite a 200ms timeout", elapsed)
	}
}

func TestTokenReviewUnreachable(t *testing.T) {
	e := newTokenReviewEnv(t, time.Second)
	e.api.srv.Close()
	_, err := e.auth.Authenticate(context.Background(), Credentials{Token: shapedToken("sleep")})
	checkErr(t, err, ErrUnavailable, "tokenreview: kubernetes api")
}

func TestTokenReviewCallerCanceled(t *testing.T) {
	e := newTokenReviewEnv(t, 5*time.Second)
	e.api.set(func(f *fakeAPIServer) { f.delay = 5 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := e.auth.Authenticate(ctx, Credentials{Token: shapedToken("sleep")})
	checkErr(t, err, ErrUnavailable, "tokenreview")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %q does not wrap context.DeadlineExceeded", err)
	}
}

// Concurrent requests with one token share one review, which outlives the
// caller that started it; once every caller has given up it is abandoned,
// and the next request sends a review of its own.
func TestTokenReviewSharedReview(t *testing.T) {
	e := newTokenReviewEnv(t, 5*time.Second)
	e.api.set(func(f *fakeAPIServer) { f.delay = time.Second })
	token := shapedToken("sleep")
	authenticate := func(ctx context.Context) <-chan error {
		done := make(chan error, 1)
		go func() {
			c, err := e.auth.Authenticate(ctx, Credentials{Token: token})
			if err == nil && c.ServiceAccount != "sleep" {
				err = fmt.Errorf("caller %+v, want service account sleep", c)
			}
			done <- err
		}()
		return done
	}
	first, cancelFirst := context.WithCancel(context.Background())
	defer cancelFirst()
	firstDone := authenticate(first)
	waitWaiters(t, e.auth, token, 1)
	secondDone := authenticate(context.Background())
	waitWaiters(t, e.auth, token, 2)
	cancelFirst()
	err := <-firstDone
	checkErr(t, err, ErrUnavailable, "tokenreview")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %q does not wrap context.Canceled", err)
	}
	if err := <-secondDone; err != nil {
		t.Fatalf("the request that shared the review: %v", err)
	}
	if n := e.api.requests.Load(); n != 1 {
		t.Fatalf("two concurrent requests sent %d reviews, want 1", n)
	}

	alone, cancelAlone := context.WithCancel(context.Background())
	aloneDone := authenticate(alone)
	waitWaiters(t, e.auth, token, 1)
	cancelAlone()
	checkErr(t, <-aloneDone, ErrUnavailable, "tokenreview")
	e.api.set(func(f *fakeAPIServer) { f.delay = 0 })
	if err := <-authenticate(context.Background()); err != nil {
		t.Fatalf("after an abandoned review: %v", err)
	}
	if n := e.api.requests.Load(); n != 3 {
		t.Fatalf("%d reviews in all, want 3: the abandoned one is not shared", n)
	}
}

// waitWaiters waits until n callers wait for the review of token in
// flight.
func waitWaiters(t *testing.T, a *TokenReviewAuthenticator, token string, n int) {
	t.Helper()
	key := reviewKeyOf(token)
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.flights.mu.Lock()
		f := a.flights.flights[key]
		got := 0
		if f != nil {
			got = f.waiters
		}
		a.flights.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers wait for the review, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewTokenReviewAuthenticatorOptions(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	api := newFakeAPIServer(t)
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := TokenReviewOptions{APIServer: api.srv.URL, TokenFile: tokenFile, CAFile: caFile, TrustDomain: testTrustDomain}
	tests := []struct {
		name string
		edit func(o *TokenReviewOptions)
		want string
	}{
		{"plain http", func(o *TokenReviewOptions) { o.APIServer = "http://kubernetes.default.svc" }, "is not an absolute https url"},
		{"no api server outside a pod", func(o *TokenReviewOptions) { o.APIServer = "" }, "KUBERNETES_SERVICE_HOST/PORT are unset"},
		{"missing ca file", func(o *TokenReviewOptions) { o.CAFile = filepath.Join(dir, "nope") }, "cluster ca"},
		{"ca file without certificates", func(o *TokenReviewOptions) { o.CAFile = tokenFile }, "holds no pem certificates"},
		{"missing token file", func(o *TokenReviewOptions) { o.TokenFile = filepath.Join(dir, "nope") }, "reviewer token"},
		{"empty token file", func(o *TokenReviewOptions) { o.TokenFile = emptyFile }, "is empty"},
		{"bad trust domain", func(o *TokenReviewOptions) { o.TrustDomain = "" }, "trust domain is empty"},
		{"negative timeout", func(o *TokenReviewOptions) { o.Timeout = -time.Second }, "timeout -1s is negative"},
		{"negative cache ttl", func(o *TokenReviewOptions) { o.CacheTTL = -time.Second }, "cache ttl -1s is negative"},
		{"negative cache size", func(o *TokenReviewOptions) { o.CacheSize = -1 }, "cache size -1 is negative"},
		{"negative concurrency", func(o *TokenReviewOptions) { o.MaxConcurrentReviews = -1 }, "max concurrent reviews -1 is negative"},
		{"client and api server", func(o *TokenReviewOptions) { o.Client = fakeclientset.NewClientset() }, "come from the kubernetes client"},
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.edit(&o)
			if _, err := NewTokenReviewAuthenticator(o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("in-cluster address", func(t *testing.T) {
		t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
		t.Setenv("KUBERNETES_SERVICE_PORT", "443")
		o := base
		o.APIServer = ""
		a, err := NewTokenReviewAuthenticator(o)
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://[fd00::1]:443/apis/authentication.k8s.io/v1/tokenreviews"; a.url != want {
			t.Fatalf("url = %q, want %q", a.url, want)
		}
	})
}
