package ca

import (
	"context"
	"crypto/x509"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ClientCertDrainMargin bounds how long before its client certificate
// expires a connection made with one starts closing; see ClientCertConns.
const ClientCertDrainMargin = 30 * time.Second

// clientCertCloseDelay is how long after the call that ends it a draining
// connection is closed: the time for that call's answer to reach the wire,
// which gRPC writes after the call's interceptors have returned.
const clientCertCloseDelay = 500 * time.Millisecond

// ClientCertConns closes every connection made with a client certificate
// before that certificate expires. A gRPC client keeps its connection, and
// the certificate of its handshake, between calls, and the certificate
// authenticator judges every call by that certificate: once it has
// expired, each call is refused, though the client may hold a newer
// certificate, until the client connects again. istio-agent on a VM
// (PROV_CERT) reconnects only after a refusal, so a VM whose certificate
// outlived the one its connection was made with would fail a renewal
// whenever that one expired. Closing the connection first makes the next
// call connect again, with the certificate the client holds then; the
// check of the certificate is unchanged. (A renewal ends no later than the
// certificate presented, so certificates renewed on one connection never
// outlive that connection's; the close keeps a client that has a
// certificate from elsewhere from being refused.)
//
// From the drain point, NotAfter minus a tenth of the certificate's validity
// period (at most ClientCertDrainMargin), the connection is closed as soon
// as no call is in flight on it (once it has carried one; shortly after
// the call that ended, so that its answer is sent first), and at NotAfter
// (of the earliest-expiring certificate the client presented) in any case.
// Connections without a client certificate, or with one that has expired
// already (every call on them is refused, with the reason), are left alone.
type ClientCertConns struct {
	credentials.TransportCredentials
	now func() time.Time

	mu    sync.Mutex
	conns map[string]*certConn // by remote address
}

// NewClientCertConns wraps creds, the server's TLS credentials.
func NewClientCertConns(creds credentials.TransportCredentials) *ClientCertConns {
	return &ClientCertConns{TransportCredentials: creds, now: time.Now, conns: map[string]*certConn{}}
}

// ServerHandshake implements credentials.TransportCredentials.
func (c *ClientCertConns) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.PeerCertificates) == 0 {
		return conn, info, nil
	}
	notAfter, validity := expiry(tlsInfo.State.PeerCertificates)
	now := c.now()
	if !now.Before(notAfter) {
		// Expired already: every call is refused, and says why.
		return conn, info, nil
	}
	cc := &certConn{Conn: conn, owner: c, key: conn.RemoteAddr().String()}
	drainAt := notAfter.Add(-min(ClientCertDrainMargin, validity/10))
	c.mu.Lock()
	c.conns[cc.key] = cc
	c.mu.Unlock()
	cc.mu.Lock()
	cc.drainTimer = time.AfterFunc(drainAt.Sub(now), cc.drain)
	cc.closeTimer = time.AfterFunc(notAfter.Sub(now), func() { _ = cc.Close() })
	cc.mu.Unlock()
	return cc, info, nil
}

// Clone implements credentials.TransportCredentials.
func (c *ClientCertConns) Clone() credentials.TransportCredentials {
	return NewClientCertConns(c.TransportCredentials.Clone())
}

// expiry returns the earliest NotAfter of the certificates and the leaf's
// validity period.
func expiry(certs []*x509.Certificate) (time.Time, time.Duration) {
	notAfter := certs[0].NotAfter
	for _, c := range certs[1:] {
		if c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notAfter, certs[0].NotAfter.Sub(certs[0].NotBefore)
}

// UnaryServerInterceptor counts the calls in flight per connection.
func (c *ClientCertConns) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		cc := c.conn(ctx)
		cc.begin()
		defer cc.end()
		return h(ctx, req)
	}
}

// StreamServerInterceptor counts the streams in flight per connection.
func (c *ClientCertConns) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		cc := c.conn(ss.Context())
		cc.begin()
		defer cc.end()
		return h(srv, ss)
	}
}

// conn returns the tracked connection a call came on, or nil.
func (c *ClientCertConns) conn(ctx context.Context) *certConn {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[p.Addr.String()]
}

// certConn is a connection made with a client certificate.
type certConn struct {
	net.Conn
	owner *ClientCertConns
	key   string

	mu                     sync.Mutex
	active, served         int
	draining, closed       bool
	drainTimer, closeTimer *time.Timer
}

func (cc *certConn) begin() {
	if cc == nil {
		return
	}
	cc.mu.Lock()
	cc.active++
	cc.mu.Unlock()
}

func (cc *certConn) end() {
	if cc == nil {
		return
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.active--
	cc.served++
	if cc.draining && cc.active == 0 && !cc.closed {
		// The answer is written after this returns: close once it is out,
		// unless another call has begun meanwhile.
		time.AfterFunc(clientCertCloseDelay, cc.closeIfIdle)
	}
}

func (cc *certConn) closeIfIdle() {
	cc.mu.Lock()
	idle := cc.active == 0
	cc.mu.Unlock()
	if idle {
		_ = cc.Close()
	}
}

func (cc *certConn) drain() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.draining = true
	if cc.active == 0 && cc.served > 0 && !cc.closed {
		// The last call's answer may still be on its way out.
		time.AfterFunc(clientCertCloseDelay, cc.closeIfIdle)
	}
}

// Close closes the connection (a TLS close_notify, then the socket) and
// stops tracking it.
func (cc *certConn) Close() error {
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return nil
	}
	cc.closed = true
	if cc.drainTimer != nil {
		cc.drainTimer.Stop()
		cc.closeTimer.Stop()
	}
	cc.mu.Unlock()
	cc.owner.mu.Lock()
	if cc.owner.conns[cc.key] == cc {
		delete(cc.owner.conns, cc.key)
	}
	cc.owner.mu.Unlock()
	return cc.Conn.Close()
}
