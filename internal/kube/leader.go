package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// A Runner is leader-only work: Run works until ctx ends and then
// returns. Every write MUST use ctx, which ends the moment the replica
// stops holding the Lease. Run may be called again after it returned, in
// a later term.
type Runner interface {
	Run(ctx context.Context)
}

// RunnerFunc makes a function a Runner.
type RunnerFunc func(ctx context.Context)

// Run calls f(ctx).
func (f RunnerFunc) Run(ctx context.Context) { f(ctx) }

// Election configures leader election over a Lease.
type Election struct {
	Client    kubernetes.Interface
	Namespace string
	LeaseName string
	// Identity names this replica in the Lease; NewIdentity makes one.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's; see
	// leaderelection.LeaderElectionConfig.
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	Logger        *slog.Logger
	// OnLeading, when set, is told when this replica starts (true) and
	// stops (false) leading.
	OnLeading func(leading bool)
}

// NewIdentity returns a Lease holder identity: the pod name ($POD_NAME,
// else the host name, which is the pod name in a pod) and a random
// suffix, so that a restarted replica never passes for its predecessor.
func NewIdentity() string {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	if name == "" {
		name = "transitca"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return name + "_" + hex.EncodeToString(b)
}

// Elect campaigns for the Lease until ctx ends. While this replica holds
// it, every runner runs with a context that ends when the Lease is lost
// (the leader could not renew within RenewDeadline) or ctx ends; after a
// lost term Elect waits for every runner to return, then campaigns again.
// On ctx's end it releases the Lease, so that another replica takes over
// at once rather than after LeaseDuration.
func Elect(ctx context.Context, e Election, runners ...Runner) error {
	if e.Client == nil || e.Namespace == "" || e.LeaseName == "" || e.Identity == "" {
		return errors.New("leader election: client, namespace, lease name and identity must be set")
	}
	log := e.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With(slog.String("lease", e.Namespace+"/"+e.LeaseName), slog.String("identity", e.Identity))
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: e.Namespace, Name: e.LeaseName},
		Client:     e.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	for ctx.Err() == nil {
		var (
			term  sync.WaitGroup
			mu    sync.Mutex
			ended bool // the term is over: runners must not start
			led   bool
		)
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   e.LeaseDuration,
			RenewDeadline:   e.RenewDeadline,
			RetryPeriod:     e.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            e.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					// client-go calls this in its own goroutine, which may
					// start after the term ended.
					mu.Lock()
					if ended {
						mu.Unlock()
						return
					}
					led = true
					term.Add(1)
					mu.Unlock()
					defer term.Done()
					log.InfoContext(lctx, "leading: writing to the cluster")
					if e.OnLeading != nil {
						e.OnLeading(true)
					}
					var wg sync.WaitGroup
					for _, r := range runners {
						wg.Go(func() { r.Run(lctx) })
					}
					wg.Wait()
				},
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					if id != e.Identity {
						log.InfoContext(ctx, "following", slog.String("leader", id))
					}
				},
			},
		})
		if err != nil {
			return err
		}
		le.Run(ctx)
		// Run returns when the term ends (or never began because ctx
		// ended); the runners' context is cancelled by then. Wait for
		// them so that two terms never overlap in this process.
		mu.Lock()
		ended = true
		mu.Unlock()
		term.Wait()
		if !led {
			continue
		}
		if e.OnLeading != nil {
			e.OnLeading(false)
		}
		if ctx.Err() == nil {
			log.WarnContext(ctx, "lost the lease: stopped writing; campaigning again")
		} else {
			log.InfoContext(context.WithoutCancel(ctx), "stopped leading: released the lease")
		}
	}
	return nil
}
