package kube

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ReviewClientset returns a clientset, on the client's connection
// settings, for the TokenReview authenticator. It has no client-side rate
// limit: client-go's default (5 requests/s, bursts of 10) would make a
// restart storm of thousands of pods wait minutes for its reviews. The
// authenticator bounds the reviews in flight instead
// (ca.TokenReviewOptions.MaxConcurrentReviews), which follows how fast the
// API server answers, and the API server's priority and fairness protects
// it. Its requests do not queue behind the cluster writers' either.
func (c *Client) ReviewClientset() (kubernetes.Interface, error) {
	rc := rest.CopyConfig(c.Config)
	rc.QPS, rc.Burst, rc.RateLimiter = -1, -1, nil
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("tokenreview client: %w", err)
	}
	return cs, nil
}
