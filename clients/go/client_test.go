package chatmem

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/chatmem/chatmem/clients/go/chatmemv1"
)

// The tests run against a real server: tests/integration/test_client_go.py starts one and sets
// CHATMEM_TARGET (go test alone, without a server, fails rather than pass on nothing).
func dial(t *testing.T, target string) *Client {
	t.Helper()
	c, err := Dial(target, Options{WorkspaceID: fmt.Sprintf("go-%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func target(t *testing.T) string {
	t.Helper()
	value := os.Getenv("CHATMEM_TARGET")
	if value == "" {
		t.Fatal("CHATMEM_TARGET is not set: run through tests/integration/test_client_go.py")
	}
	return value
}

func TestAppendHistoryContextAndPreferences(t *testing.T) {
	c, ctx := dial(t, target(t)), context.Background()
	out, err := c.Append(ctx, "t1", []*pb.MessageInput{Text("user", "Hi! I'm Ada."), Text("assistant", "Hello Ada.")}, nil)
	if err != nil || fmt.Sprint(out.GetSeqs()) != "[1 2]" {
		t.Fatalf("append: %v %v", out, err)
	}
	history, err := c.GetHistory(ctx, "t1", 0)
	if err != nil || len(history) != 2 || history[1].GetContent() != "Hello Ada." || history[1].GetRole() != pb.Role_ROLE_ASSISTANT {
		t.Fatalf("history: %v %v", history, err)
	}
	if err := c.SetPreferences(ctx, "ada", map[string]string{"tone": "brief"}); err != nil {
		t.Fatal(err)
	}
	prefs, err := c.GetPreferences(ctx, "ada")
	if err != nil || prefs["tone"] != "brief" {
		t.Fatalf("preferences: %v %v", prefs, err)
	}
	block, err := c.GetContext(ctx, "t1", "ada", 0, 0)
	want := "Previous conversation:\nuser: Hi! I'm Ada.\nassistant: Hello Ada.\n\nUser preferences:\ntone: brief"
	if err != nil || block != want {
		t.Fatalf("context: %q %v", block, err)
	}
	if err := c.DeletePreferences(ctx, "ada"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.DeleteThread(ctx, "t1"); err != nil || n != 2 {
		t.Fatalf("delete: %d %v", n, err)
	}
}

func TestPagersWalkEveryPageAndUpdateThread(t *testing.T) {
	c, ctx := dial(t, target(t)), context.Background()
	for i := 0; i < 5; i++ {
		if _, err := c.Append(ctx, "paged", []*pb.MessageInput{Text("user", fmt.Sprint(i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	pager, seen := c.ListMessages("paged", 2), []int64{}
	for pager.Next(ctx) {
		seen = append(seen, pager.Message().GetSeq())
	}
	if pager.Err() != nil || fmt.Sprint(seen) != "[1 2 3 4 5]" {
		t.Fatalf("pager: %v %v", seen, pager.Err())
	}
	for _, id := range []string{"a", "b", "c"} {
		if _, err := c.Append(ctx, id, []*pb.MessageInput{Text("user", id)}, &pb.AppendMessagesRequest{UserId: "ada"}); err != nil {
			t.Fatal(err)
		}
	}
	title, pinned := "renamed", true
	if thread, err := c.UpdateThread(ctx, "b", &title, &pinned); err != nil || thread.GetTitle() != "renamed" || !thread.GetPinned() {
		t.Fatalf("update: %v %v", thread, err)
	}
	threads, ids := c.ListThreads("ada", 1), map[string]bool{}
	for threads.Next(ctx) {
		ids[threads.Thread().GetThreadId()] = true
	}
	if threads.Err() != nil || fmt.Sprint(ids) != "map[a:true b:true c:true]" {
		t.Fatalf("threads: %v %v", ids, threads.Err())
	}
}

func TestTypedErrorsCarryReasonFieldsAndRequestID(t *testing.T) {
	c, ctx := dial(t, target(t)), context.Background()
	_, err := c.Append(ctx, "bad id!", nil, &pb.AppendMessagesRequest{UserId: "no spaces"})
	var invalid *InvalidArgumentError
	if !errors.As(err, &invalid) || invalid.Reason != "INVALID_ARGUMENT" || invalid.Domain != "chatmem.dev" {
		t.Fatalf("want InvalidArgumentError, got %#v", err)
	}
	if fmt.Sprint(invalid.Fields()) != "[thread_id user_id messages]" || invalid.RequestID == "" {
		t.Fatalf("fields %v, request id %q", invalid.Fields(), invalid.RequestID)
	}
	_, err = c.GetThread(ctx, "nobody")
	var missing *NotFoundError
	if !errors.As(err, &missing) || missing.Reason != "THREAD_NOT_FOUND" || missing.Metadata["thread_id"] != "nobody" {
		t.Fatalf("want NotFoundError, got %#v", err)
	}
	var base *StatusError
	if !errors.As(err, &base) || Reason(err) != "THREAD_NOT_FOUND" || status.Code(err) != codes.NotFound {
		t.Fatalf("the base error and the gRPC status stay reachable: %v", err)
	}
	if _, err := c.Append(ctx, "cas", []*pb.MessageInput{Text("user", "one")}, nil); err != nil {
		t.Fatal(err)
	}
	expected := int64(9)
	_, err = c.Append(ctx, "cas", []*pb.MessageInput{Text("user", "two")}, &pb.AppendMessagesRequest{ExpectedLastSeq: &expected})
	var conflict *ConflictError
	if !errors.As(err, &conflict) || conflict.Reason != "LAST_SEQ_MISMATCH" {
		t.Fatalf("want ConflictError, got %#v", err)
	}
}

func TestNoServerIsUnavailableAfterTheRetries(t *testing.T) {
	listener, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := listener.Addr().String()
	listener.Close()
	c, err := Dial(addr, Options{MaxAttempts: 2, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.GetHistory(context.Background(), "t", 0)
	var unavailable *UnavailableError
	if !errors.As(err, &unavailable) || unavailable.Reason != "" {
		t.Fatalf("want UnavailableError without a server reason, got %#v", err)
	}
}

// cutProxy forwards to target but breaks its first connection after limit bytes from the server, as a
// dropped connection would; later connections pass everything.
func cutProxy(t *testing.T, target string, limit int64) (string, *int32) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	var conns int32
	go func() {
		for {
			client, err := listener.Accept()
			if err != nil {
				return
			}
			n := atomic.AddInt32(&conns, 1)
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			var once sync.Once
			closeBoth := func() { client.Close(); server.Close() }
			go func() { io.Copy(server, client); once.Do(closeBoth) }()
			go func() {
				if n == 1 {
					io.CopyN(client, server, limit)
				} else {
					io.Copy(client, server)
				}
				once.Do(closeBoth)
			}()
		}
	}()
	return listener.Addr().String(), &conns
}

func TestStreamHistoryResumesAfterADroppedConnection(t *testing.T) {
	direct, ctx := dial(t, target(t)), context.Background()
	const total = 3000
	for i := 0; i < total; i += 100 {
		batch := make([]*pb.MessageInput, 100)
		for j := range batch {
			batch[j] = Text("user", fmt.Sprintf("message %d with some padding to make the frames larger", i+j))
		}
		if _, err := direct.Append(ctx, "long", batch, nil); err != nil {
			t.Fatal(err)
		}
	}
	proxy, conns := cutProxy(t, target(t), 64*1024)
	c, err := Dial(proxy, Options{WorkspaceID: direct.opts.WorkspaceID})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stream, next := c.StreamHistory("long", 0), int64(1)
	for stream.Next(ctx) {
		if got := stream.Message().GetSeq(); got != next {
			t.Fatalf("seq %d, want %d", got, next)
		}
		next++
	}
	if stream.Err() != nil || next != total+1 {
		t.Fatalf("stream ended at %d: %v", next, stream.Err())
	}
	if stream.Resumed < 1 || atomic.LoadInt32(conns) < 2 {
		t.Fatalf("the connection was never cut (resumed %d, connections %d)", stream.Resumed, atomic.LoadInt32(conns))
	}
}

func TestServiceConfigForOtherLanguagesIsAcceptedByGRPCGo(t *testing.T) {
	config, err := os.ReadFile("../service_config.json")
	if err != nil {
		t.Fatal(err)
	}
	// grpc-go validates a default service config when dialling: a bad one fails here.
	conn, err := grpc.Dial(target(t), grpc.WithInsecure(), grpc.WithDefaultServiceConfig(string(config)))
	if err != nil {
		t.Fatalf("service_config.json: %v", err)
	}
	defer conn.Close()
	reply, err := pb.NewThreadMemoryServiceClient(conn).GetHistory(context.Background(), &pb.GetHistoryRequest{ThreadId: "t"})
	if err != nil || len(reply.GetMessages()) != 0 {
		t.Fatalf("a call through the configured channel: %v %v", reply, err)
	}
	if _, err := grpc.Dial(target(t), grpc.WithInsecure(), grpc.WithDefaultServiceConfig(`{"methodConfig": [{"timeout": 10}]}`)); err == nil {
		t.Fatal("grpc-go accepted a malformed service config, so this check proves nothing")
	}
}
