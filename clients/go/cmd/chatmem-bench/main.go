// Command chatmem-bench measures the per-call cost of Client.GetHistory against the raw generated stub's
// GetHistory on the same connection (bench/client_overhead.py runs it). Prints JSON: wall and CPU
// microseconds per call, per round.
package main

import (
	"context"
	"encoding/json"
	"log"
	"os"
	"strconv"
	"syscall"
	"time"

	chatmem "github.com/chatmem/chatmem/clients/go"
	pb "github.com/chatmem/chatmem/clients/go/chatmemv1"
)

func main() {
	target, thread, workspace := os.Args[1], os.Args[2], os.Args[3]
	calls, _ := strconv.Atoi(os.Args[4])
	rounds, _ := strconv.Atoi(os.Args[5])
	c, err := chatmem.Dial(target, chatmem.Options{WorkspaceID: workspace})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	request := &pb.GetHistoryRequest{WorkspaceId: workspace, ThreadId: thread}
	raw := func() error {
		// The same deadline the wrapper sets, so that the comparison is of the wrapper alone.
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := c.Threads.GetHistory(ctx, request)
		return err
	}
	wrapped := func() error { _, err := c.GetHistory(ctx, thread, 0); return err }
	timed := func(body func() error) (float64, float64) {
		start, cpu := time.Now(), cpuTime()
		for i := 0; i < calls; i++ {
			if err := body(); err != nil {
				log.Fatal(err)
			}
		}
		return float64(time.Since(start).Microseconds()) / float64(calls), float64((cpuTime() - cpu).Microseconds()) / float64(calls)
	}
	timed(raw)
	timed(wrapped) // warm-up
	out := map[string][]float64{"raw": {}, "wrapper": {}, "raw_cpu": {}, "wrapper_cpu": {}}
	for r := 0; r < rounds; r++ {
		order := []struct {
			name string
			body func() error
		}{{"raw", raw}, {"wrapper", wrapped}}
		if r%2 == 1 { // alternate, so that neither always goes first
			order[0], order[1] = order[1], order[0]
		}
		for _, v := range order {
			wall, cpu := timed(v.body)
			out[v.name] = append(out[v.name], wall)
			out[v.name+"_cpu"] = append(out[v.name+"_cpu"], cpu)
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}
