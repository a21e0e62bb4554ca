package kubestorm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/transitca/transitca/internal/kubetest"
)

// Counters the scenario reads.
const (
	// apiRequests is the API server's request counter; the TokenReviews
	// are its series with resource="tokenreviews" and verb="POST".
	apiRequests = "apiserver_request_total"
	// daemonReviews is the daemon's count of TokenReviews it sent.
	daemonReviews = "transitca_tokenreview_requests_total"
	// daemonRejections counts the requests the daemon refused, by
	// reason; overload_in_flight is server.limits.max_in_flight.
	daemonRejections = "transitca_rejections_total"
)

// scraper reads Prometheus text metrics from an endpoint.
type scraper struct {
	url    string
	header http.Header
	client *http.Client
}

// apiServerScraper reads path from the API server, as the admin.
func apiServerScraper(s *kubetest.Server, path string) *scraper {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CAPEM)
	return &scraper{
		url:    s.URL + path,
		header: http.Header{"Authorization": {"Bearer " + s.AdminToken}},
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}},
	}
}

func daemonScraper(addr string) *scraper {
	return &scraper{url: "http://" + addr + "/metrics", client: &http.Client{Timeout: 30 * time.Second}}
}

// get fetches the endpoint.
func (s *scraper) get(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range s.header {
		req.Header[k] = v
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", s.url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", s.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %s", s.url, resp.Status)
	}
	return body, nil
}

// sum adds up the samples of metric whose labels include every one of
// labels (each `name="value"`). found is false when no sample matched.
func (s *scraper) sum(ctx context.Context, metric string, labels ...string) (total float64, found bool, err error) {
	body, err := s.get(ctx)
	if err != nil {
		return 0, false, err
	}
	total, found = sumSamples(body, metric, labels)
	return total, found, nil
}

// sumSamples adds up the samples of metric in a Prometheus text exposition
// whose label sets include every one of labels.
func sumSamples(text []byte, metric string, labels []string) (float64, bool) {
	var total float64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, metric)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		var set string
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			set, rest = rest[1:end], rest[end+1:]
		}
		if !hasLabels(set, labels) {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		total += v
		found = true
	}
	return total, found
}

func hasLabels(set string, labels []string) bool {
	have := map[string]bool{}
	for l := range strings.SplitSeq(set, ",") {
		have[strings.TrimSpace(l)] = true
	}
	for _, l := range labels {
		if !have[l] {
			return false
		}
	}
	return true
}

// cpuProfile fetches the daemon's CPU profile over the next d and writes it
// to path. It returns at once; wait waits for the profile and returns its
// error.
func cpuProfile(ctx context.Context, addr, path string, d time.Duration) (wait func() error) {
	done := make(chan error, 1)
	go func() {
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d/time.Second))
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			done <- err
			return
		}
		resp, err := (&http.Client{Timeout: d + 30*time.Second}).Do(req)
		if err != nil {
			done <- fmt.Errorf("cpu profile: %w", err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("cpu profile: %s", resp.Status)
			return
		}
		f, err := os.Create(path)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	return func() error { return <-done }
}
