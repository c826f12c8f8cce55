// The chatmem Go client. In this repository it is built and tested in GOPATH mode against Debian's Go
// packages (see README.md); elsewhere these are the versions it was tested with (newer ones work too).
module github.com/chatmem/chatmem/clients/go

go 1.19

require (
	github.com/golang/protobuf v1.5.2
	google.golang.org/genproto v0.0.0-20200413115906-b5235f65be36
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
