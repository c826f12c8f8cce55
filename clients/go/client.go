// Package chatmem is a thin Go client for the chatmem memory server: the generated stubs (package
// chatmemv1) plus context deadlines, retries on UNAVAILABLE with the request id, typed errors, a pager
// and a StreamHistory iterator that resumes after a dropped stream.
package chatmem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/chatmem/chatmem/clients/go/chatmemv1"
)

// Options configure Dial. The zero value dials without TLS, with a 10 s default deadline and 4 attempts.
type Options struct {
	Credentials credentials.TransportCredentials // TLS; nil means plaintext
	APIKey      string                           // sent as "authorization: Bearer <key>"
	WorkspaceID string                           // "" means the server's default (or the credential's)
	Timeout     time.Duration                    // deadline of a call whose context has none (default 10 s)
	MaxAttempts int                              // attempts on UNAVAILABLE (default 4; 1 disables retries)
}

// Client holds one connection. Threads, Preferences and Admin are the raw generated stubs.
type Client struct {
	conn        *grpc.ClientConn
	Threads     pb.ThreadMemoryServiceClient
	Preferences pb.PreferencesServiceClient
	Admin       pb.AdminServiceClient
	opts        Options
}

// Dial connects lazily to target ("host:port"): an unreachable server shows up on the first call.
func Dial(target string, opts Options) (*Client, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 4
	}
	dial := []grpc.DialOption{grpc.WithInsecure()}
	if opts.Credentials != nil {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(opts.Credentials)}
	}
	if opts.APIKey != "" {
		auth := func(ctx context.Context) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+opts.APIKey)
		}
		dial = append(dial,
			grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
				return invoker(auth(ctx), method, req, reply, cc, o...)
			}),
			grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(auth(ctx), desc, cc, method, o...)
			}))
	}
	conn, err := grpc.Dial(target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{conn, pb.NewThreadMemoryServiceClient(conn), pb.NewPreferencesServiceClient(conn), pb.NewAdminServiceClient(conn), opts}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// NewRequestID returns a fresh idempotency key (128 random bits, hex).
func NewRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// call runs one unary RPC with the default deadline and the retries; the request (and so its request
// id) is the same on every attempt, which makes retrying a write safe.
func (c *Client) call(ctx context.Context, rpc func(context.Context, ...grpc.CallOption) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		var trailer metadata.MD
		err := rpc(ctx, grpc.Trailer(&trailer))
		if err == nil {
			return nil
		}
		mapped := fromStatus(err, first(trailer.Get("x-request-id")))
		var unavailable *UnavailableError
		if attempt >= c.opts.MaxAttempts || !asUnavailable(mapped, &unavailable) {
			return mapped
		}
		wait := backoff
		if unavailable.RetryAfter > wait {
			wait = unavailable.RetryAfter
		}
		select {
		case <-ctx.Done():
			return mapped
		case <-time.After(wait):
		}
		if backoff *= 2; backoff > time.Second {
			backoff = time.Second
		}
	}
}

func asUnavailable(err error, target **UnavailableError) bool {
	u, ok := err.(*UnavailableError)
	if ok {
		*target = u
	}
	return ok && u.Code == codes.Unavailable
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}
