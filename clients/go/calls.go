package chatmem

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/chatmem/chatmem/clients/go/chatmemv1"
)

// Text builds a message input from a role ("user", "assistant", "system", "tool") and its content.
func Text(role, content string) *pb.MessageInput {
	return &pb.MessageInput{Role: pb.Role(pb.Role_value["ROLE_"+upper(role)]), Content: content}
}

func upper(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if 'a' <= ch && ch <= 'z' {
			b[i] = ch - 'a' + 'A'
		}
	}
	return string(b)
}

// Append appends messages to a thread atomically; it generates the request id unless req has one, so
// that a retry stores nothing twice. req may set ExpectedLastSeq, UserId, Title or Ttl.
func (c *Client) Append(ctx context.Context, threadID string, messages []*pb.MessageInput, req *pb.AppendMessagesRequest) (*pb.AppendMessagesResponse, error) {
	if req == nil {
		req = &pb.AppendMessagesRequest{}
	}
	req.WorkspaceId, req.ThreadId, req.Messages = c.opts.WorkspaceID, threadID, messages
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	var out *pb.AppendMessagesResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Threads.AppendMessages(ctx, req, o...)
		return err
	})
	return out, err
}

// GetHistory returns the last limit messages (0: the server's window), oldest first.
func (c *Client) GetHistory(ctx context.Context, threadID string, limit int32) ([]*pb.Message, error) {
	req := &pb.GetHistoryRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID, Limit: limit}
	var out *pb.GetHistoryResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Threads.GetHistory(ctx, req, o...)
		return err
	})
	return out.GetMessages(), err
}

// GetContext returns the prompt block of a thread and a user's preferences (0: the server's bounds).
func (c *Client) GetContext(ctx context.Context, threadID, userID string, maxMessages, maxChars int32) (string, error) {
	req := &pb.GetContextRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID, UserId: userID, MaxMessages: maxMessages, MaxChars: maxChars}
	var out *pb.GetContextResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Threads.GetContext(ctx, req, o...)
		return err
	})
	return out.GetContext(), err
}

// GetThread returns a thread's metadata; a *NotFoundError (reason THREAD_NOT_FOUND) if there is none.
func (c *Client) GetThread(ctx context.Context, threadID string) (*pb.Thread, error) {
	req := &pb.GetThreadRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID}
	var out *pb.GetThreadResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Threads.GetThread(ctx, req, o...)
		return err
	})
	return out.GetThread(), err
}

// DeleteThread deletes a thread from every tier and returns how many messages it had; a missing
// thread is not an error, so that a retried delete succeeds.
func (c *Client) DeleteThread(ctx context.Context, threadID string) (int64, error) {
	req := &pb.DeleteThreadRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID, RequestId: NewRequestID(), AllowMissing: true}
	var out *pb.DeleteThreadResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Threads.DeleteThread(ctx, req, o...)
		return err
	})
	return out.GetDeletedMessages(), err
}

// GetPreferences returns a user's preferences (all, or only keys).
func (c *Client) GetPreferences(ctx context.Context, userID string, keys ...string) (map[string]string, error) {
	req := &pb.GetPreferencesRequest{WorkspaceId: c.opts.WorkspaceID, UserId: userID, Keys: keys}
	var out *pb.GetPreferencesResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Preferences.GetPreferences(ctx, req, o...)
		return err
	})
	prefs := map[string]string{}
	for _, p := range out.GetPreferences() {
		prefs[p.GetKey()] = p.GetValue()
	}
	return prefs, err
}

// SetPreferences upserts some of a user's preferences.
func (c *Client) SetPreferences(ctx context.Context, userID string, prefs map[string]string) error {
	req := &pb.SetPreferencesRequest{WorkspaceId: c.opts.WorkspaceID, UserId: userID, Preferences: prefs, RequestId: NewRequestID()}
	return c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		_, err := c.Preferences.SetPreferences(ctx, req, o...)
		return err
	})
}

// DeletePreferences deletes some keys of a user's preferences, or all of them when keys is empty.
func (c *Client) DeletePreferences(ctx context.Context, userID string, keys ...string) error {
	req := &pb.DeletePreferencesRequest{WorkspaceId: c.opts.WorkspaceID, UserId: userID, Keys: keys, All: len(keys) == 0, RequestId: NewRequestID()}
	return c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) error {
		_, err := c.Preferences.DeletePreferences(ctx, req, o...)
		return err
	})
}

// UpdateThread changes a thread's title and/or pin (nil leaves it as it is) and returns the thread.
func (c *Client) UpdateThread(ctx context.Context, threadID string, title *string, pinned *bool) (*pb.Thread, error) {
	req := &pb.UpdateThreadRequest{WorkspaceId: c.opts.WorkspaceID, ThreadId: threadID, Title: title, Pinned: pinned, RequestId: NewRequestID()}
	var out *pb.UpdateThreadResponse
	err := c.call(ctx, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		out, err = c.Threads.UpdateThread(ctx, req, o...)
		return err
	})
	return out.GetThread(), err
}
