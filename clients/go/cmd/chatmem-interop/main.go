// Command chatmem-interop is the Go side of tests/interop: one command per step, JSON on stdout. The
// target, workspace and API key come from CHATMEM_TARGET, CHATMEM_WORKSPACE and CHATMEM_API_KEY; TLS
// from CHATMEM_CA (and CHATMEM_CERT, CHATMEM_KEY for a client certificate), PEM files.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	"google.golang.org/grpc/credentials"

	chatmem "github.com/chatmem/chatmem/clients/go"
	pb "github.com/chatmem/chatmem/clients/go/chatmemv1"
)

type failure struct {
	Code      int      `json:"code"`
	Reason    string   `json:"reason"`
	Domain    string   `json:"domain"`
	Fields    []string `json:"fields"`
	RequestID bool     `json:"request_id"`
	Message   string   `json:"message"`
}

func describe(err error) (failure, error) {
	var e *chatmem.StatusError
	if !errors.As(err, &e) {
		return failure{}, fmt.Errorf("not a chatmem error: %v", err)
	}
	return failure{int(e.Code), e.Reason, e.Domain, e.Fields(), e.RequestID != "", e.Message}, nil
}

func transport() (credentials.TransportCredentials, error) {
	caFile := os.Getenv("CHATMEM_CA")
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	config := &tls.Config{RootCAs: x509.NewCertPool()}
	config.RootCAs.AppendCertsFromPEM(pem)
	if cert, key := os.Getenv("CHATMEM_CERT"), os.Getenv("CHATMEM_KEY"); cert != "" && key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

func run(args []string) (interface{}, error) {
	creds, err := transport()
	if err != nil {
		return nil, err
	}
	c, err := chatmem.Dial(os.Getenv("CHATMEM_TARGET"), chatmem.Options{
		WorkspaceID: os.Getenv("CHATMEM_WORKSPACE"), APIKey: os.Getenv("CHATMEM_API_KEY"), MaxAttempts: 1, Credentials: creds,
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, thread := context.Background(), "t"
	if len(args) > 1 {
		thread = args[1]
	}
	switch args[0] {
	case "append":
		count, _ := strconv.Atoi(args[2])
		seqs := []string{}
		for i := 0; i < count; i++ {
			out, err := c.Append(ctx, thread, []*pb.MessageInput{
				chatmem.Text("user", fmt.Sprintf("question %d from go", i)),
				chatmem.Text("assistant", fmt.Sprintf("answer %d from go", i)),
			}, nil)
			if err != nil {
				return nil, err
			}
			for _, s := range out.GetSeqs() {
				seqs = append(seqs, strconv.FormatInt(s, 10))
			}
		}
		return map[string][]string{"seqs": seqs}, nil
	case "window":
		messages, err := c.GetHistory(ctx, thread, 0)
		if err != nil {
			return nil, err
		}
		out := []map[string]interface{}{}
		for _, m := range messages {
			out = append(out, map[string]interface{}{"seq": m.GetSeq(), "content": m.GetContent()})
		}
		return out, nil
	case "invalid":
		_, err := c.Append(ctx, "bad id!", nil, &pb.AppendMessagesRequest{UserId: "no spaces"})
		return describe(err)
	case "missing":
		_, err := c.GetThread(ctx, thread)
		return describe(err)
	case "history":
		_, err := c.GetHistory(ctx, thread, 0)
		return describe(err)
	}
	return nil, fmt.Errorf("unknown command %v", args)
}

func main() {
	out, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}
