package chatmem

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pb "github.com/chatmem/chatmem/clients/go/chatmemv1"
)

// MessagePager walks a thread's whole history page by page: for it.Next(ctx) { it.Message() }; it.Err().
type MessagePager struct {
	c       *Client
	req     *pb.ListMessagesRequest
	page    []*pb.Message
	current *pb.Message
	done    bool
	err     error
}

// ListMessages returns a pager over the thread's messages, oldest first (pageSize 0: the server's).
func (c *Client) ListMessages(threadID string, pageSize int32) *MessagePager {
	return &MessagePager{c: c, req: &pb.ListMessagesRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID, PageSize: pageSize}}
}

// Next advances to the next message, fetching a page when needed; false at the end or on an error.
func (p *MessagePager) Next(ctx context.Context) bool {
	for len(p.page) == 0 {
		if p.done || p.err != nil {
			return false
		}
		var out *pb.ListMessagesResponse
		p.err = p.c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
			out, err = p.c.Threads.ListMessages(ctx, p.req, o...)
			return err
		})
		p.page = out.GetMessages()
		p.req.PageToken = out.GetNextPageToken()
		p.done = p.req.PageToken == ""
	}
	p.current, p.page = p.page[0], p.page[1:]
	return true
}

// Message returns the current message.
func (p *MessagePager) Message() *pb.Message { return p.current }

// Err returns the error that stopped the pager, if any.
func (p *MessagePager) Err() error { return p.err }

// HistoryStream iterates StreamHistory message by message; a stream that breaks with UNAVAILABLE (a
// server restart, a dropped connection) is reopened after the last seq received, up to MaxAttempts
// times in a row.
type HistoryStream struct {
	c       *Client
	req     *pb.StreamHistoryRequest
	stream  pb.ThreadMemoryService_StreamHistoryClient
	chunk   []*pb.Message
	current *pb.Message
	failed  int
	err     error
	Resumed int // how many times the stream was reopened
}

// StreamHistory streams the whole thread (or after afterSeq) in chunks; ctx bounds the whole stream.
func (c *Client) StreamHistory(threadID string, afterSeq int64) *HistoryStream {
	return &HistoryStream{c: c, req: &pb.StreamHistoryRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID, AfterSeq: afterSeq}}
}

// Next advances to the next message; false at the end of the thread or on an error (see Err).
func (s *HistoryStream) Next(ctx context.Context) bool {
	for len(s.chunk) == 0 {
		if s.err != nil {
			return false
		}
		if s.stream == nil {
			s.stream, s.err = s.c.Threads.StreamHistory(ctx, s.req)
			if s.err != nil {
				s.err = fromStatus(s.err, "")
				return false
			}
		}
		resp, err := s.stream.Recv()
		if errors.Is(err, io.EOF) {
			s.err = io.EOF
			return false
		}
		if err != nil {
			mapped := fromStatus(err, first(trailerOf(s.stream).Get("x-request-id")))
			s.stream = nil
			var unavailable *UnavailableError
			if s.failed+1 >= s.c.opts.MaxAttempts || !errors.As(mapped, &unavailable) {
				s.err = mapped
				return false
			}
			s.failed++
			s.Resumed++
			select {
			case <-ctx.Done():
				s.err = mapped
				return false
			case <-time.After(time.Duration(s.failed) * 100 * time.Millisecond):
			}
			continue
		}
		s.failed = 0
		s.chunk = resp.GetMessages()
	}
	s.current, s.chunk = s.chunk[0], s.chunk[1:]
	s.req.AfterSeq = s.current.GetSeq() // where a reopened stream resumes
	return true
}

// Message returns the current message.
func (s *HistoryStream) Message() *pb.Message { return s.current }

// Err returns the error that ended the stream, or nil if it reached the end of the thread.
func (s *HistoryStream) Err() error {
	if errors.Is(s.err, io.EOF) {
		return nil
	}
	return s.err
}

func trailerOf(stream grpc.ClientStream) metadata.MD {
	if stream == nil {
		return nil
	}
	return stream.Trailer()
}

// ThreadPager walks a user's threads, newest first, page by page: for it.Next(ctx) { it.Thread() }.
type ThreadPager struct {
	c       *Client
	req     *pb.ListThreadsRequest
	page    []*pb.Thread
	current *pb.Thread
	done    bool
	err     error
}

// ListThreads returns a pager over a user's threads (pageSize 0: the server's).
func (c *Client) ListThreads(userID string, pageSize int32) *ThreadPager {
	return &ThreadPager{c: c, req: &pb.ListThreadsRequest{WorkspaceId: c.opts.WorkspaceID, UserId: userID, PageSize: pageSize}}
}

// Next advances to the next thread, fetching a page when needed; false at the end or on an error.
func (p *ThreadPager) Next(ctx context.Context) bool {
	for len(p.page) == 0 {
		if p.done || p.err != nil {
			return false
		}
		var out *pb.ListThreadsResponse
		p.err = p.c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
			out, err = p.c.Threads.ListThreads(ctx, p.req, o...)
			return err
		})
		p.page = out.GetThreads()
		p.req.PageToken = out.GetNextPageToken()
		p.done = p.req.PageToken == ""
	}
	p.current, p.page = p.page[0], p.page[1:]
	return true
}

// Thread returns the current thread.
func (p *ThreadPager) Thread() *pb.Thread { return p.current }

// Err returns the error that stopped the pager, if any.
func (p *ThreadPager) Err() error { return p.err }
