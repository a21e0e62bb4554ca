package issuer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"
)

// The ways the daemon logs in to Vault.
const (
	VaultAuthToken      = "token"
	VaultAuthAppRole    = "approle"
	VaultAuthKubernetes = "kubernetes"
)

// VaultAuth says how to log in to Vault.
type VaultAuth struct {
	// Method is VaultAuthToken (the default), VaultAuthAppRole or
	// VaultAuthKubernetes.
	Method string
	// Token is the token for VaultAuthToken; VAULT_TOKEN (as read by the
	// Vault client) when empty.
	Token string
	// Mount is the auth engine's mount path; "approle" or "kubernetes" when
	// empty.
	Mount string
	// RoleID and SecretIDFile are the AppRole credentials.
	RoleID       string
	SecretIDFile string
	// Role and TokenFile are the Kubernetes auth role and the projected
	// service-account token (default
	// /var/run/secrets/kubernetes.io/serviceaccount/token).
	Role      string
	TokenFile string
}

// Validate checks that the method has what it needs.
func (a VaultAuth) Validate() error {
	switch a.Method {
	case "", VaultAuthToken:
	case VaultAuthAppRole:
		if a.RoleID == "" || a.SecretIDFile == "" {
			return errors.New("vault approle auth needs role_id and secret_id_file")
		}
	case VaultAuthKubernetes:
		if a.Role == "" {
			return errors.New("vault kubernetes auth needs role")
		}
	default:
		return fmt.Errorf("vault auth method %q: want token, approle or kubernetes", a.Method)
	}
	return nil
}

// VaultSession is a logged-in Vault client whose token it keeps alive.
type VaultSession struct {
	Client *vault.Client
	auth   VaultAuth
	log    *slog.Logger
	secret *vault.Secret
	kick   chan struct{} // Check found the token refused: log in again
}

// NewVaultSession makes a Vault client from the standard VAULT_* environment
// (VAULT_ADDR, VAULT_CACERT, …), with addr overriding VAULT_ADDR when set,
// and logs in.
func NewVaultSession(ctx context.Context, addr string, auth VaultAuth, log *slog.Logger) (*VaultSession, error) {
	if err := auth.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	cfg := vault.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client config: %w", cfg.Error)
	}
	if addr != "" {
		cfg.Address = addr
	}
	cfg.MaxRetries = 0 // the daemon's callers retry; a hung Vault must fail fast
	// vault/api keeps GOMAXPROCS+1 idle connections per host: under
	// concurrent signing every other request would dial a new one.
	if tr, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 256, 256
	}
	client, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	s := &VaultSession{Client: client, auth: auth, log: log, kick: make(chan struct{}, 1)}
	if err := s.login(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *VaultSession) login(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultVaultTimeout)
	defer cancel()
	var (
		sec *vault.Secret
		err error
	)
	switch s.auth.Method {
	case "", VaultAuthToken:
		if s.auth.Token != "" {
			s.Client.SetToken(s.auth.Token)
		}
		if s.Client.Token() == "" {
			return errors.New("vault token auth: no token (set VAULT_TOKEN)")
		}
		sec, err = tokenSecret(ctx, s.Client)
		if refused(err) {
			err = fmt.Errorf("%w, and token auth cannot get a new one: give the daemon a new token (VAULT_TOKEN or vault.auth.token) and restart it, or use approle or kubernetes auth: %w", ErrTokenRefused, err)
		}
	case VaultAuthAppRole:
		var a *approle.AppRoleAuth
		opts := []approle.LoginOption{}
		if s.auth.Mount != "" {
			opts = append(opts, approle.WithMountPath(s.auth.Mount))
		}
		a, err = approle.NewAppRoleAuth(s.auth.RoleID, &approle.SecretID{FromFile: s.auth.SecretIDFile}, opts...)
		if err == nil {
			sec, err = s.Client.Auth().Login(ctx, a)
		}
	case VaultAuthKubernetes:
		var a *kubernetes.KubernetesAuth
		opts := []kubernetes.LoginOption{}
		if s.auth.Mount != "" {
			opts = append(opts, kubernetes.WithMountPath(s.auth.Mount))
		}
		if s.auth.TokenFile != "" {
			opts = append(opts, kubernetes.WithServiceAccountTokenPath(s.auth.TokenFile))
		}
		a, err = kubernetes.NewKubernetesAuth(s.auth.Role, opts...)
		if err == nil {
			sec, err = s.Client.Auth().Login(ctx, a)
		}
	}
	if err != nil {
		return vaultErr("login with "+methodName(s.auth.Method)+" at", s.Client.Address(), 0, err)
	}
	if sec == nil || sec.Auth == nil {
		return fmt.Errorf("vault login with %s at %s: no auth information returned", methodName(s.auth.Method), s.Client.Address())
	}
	s.secret = sec
	return nil
}

func methodName(m string) string {
	if m == "" {
		return VaultAuthToken
	}
	return m
}

// tokenSecret looks the client's token up and describes it as a login
// secret, so that a renewable token is renewed like a login.
func tokenSecret(ctx context.Context, c *vault.Client) (*vault.Secret, error) {
	sec, err := c.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, err
	}
	if sec == nil || sec.Data == nil {
		return nil, errors.New("token lookup returned nothing")
	}
	renewable, _ := sec.Data["renewable"].(bool)
	ttl, _ := jsonInt(sec.Data["ttl"])
	return &vault.Secret{Auth: &vault.SecretAuth{
		ClientToken:   c.Token(),
		Renewable:     renewable,
		LeaseDuration: ttl,
	}}, nil
}

// Run keeps the token alive until ctx ends: it renews a renewable token with
// a LifetimeWatcher and logs in again when renewal stops (the token reached
// its maximum TTL or was revoked) or when Check finds the token refused. A non-renewable token with no TTL (a root
// or periodic token handled elsewhere) needs nothing.
func (s *VaultSession) Run(ctx context.Context) {
	for {
		auth := s.secret.Auth
		var err error
		if !auth.Renewable && auth.LeaseDuration == 0 {
			// Nothing to renew (a root or periodic token): wait until
			// Check finds it refused.
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
				err = ErrTokenRefused
			}
		} else {
			err = s.watch(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		s.log.WarnContext(ctx, "vault token renewal stopped; logging in again", slog.Any("reason", err))
		for backoff := time.Second; ; backoff = min(2*backoff, time.Minute) {
			if err := s.login(ctx); err == nil {
				s.log.InfoContext(ctx, "vault login renewed", slog.String("method", methodName(s.auth.Method)))
				break
			} else {
				s.log.ErrorContext(ctx, "vault login", slog.Any("error", err))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

func (s *VaultSession) watch(ctx context.Context) error {
	w, err := s.Client.NewLifetimeWatcher(&vault.LifetimeWatcherInput{Secret: s.secret})
	if err != nil {
		return err
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-w.DoneCh():
			if err == nil {
				err = errors.New("token reached its maximum TTL")
			}
			return err
		case <-s.kick:
			return ErrTokenRefused
		case r := <-w.RenewCh():
			s.log.DebugContext(ctx, "vault token renewed", slog.Time("at", r.RenewedAt))
		}
	}
}
