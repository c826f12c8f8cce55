package chatmem

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FieldViolation is one bad field of a request, as the server's google.rpc.BadRequest names it.
type FieldViolation struct {
	Field       string // the field's path, for example "messages[2].role"
	Description string // what is wrong with it
}

// StatusError is what every failed call returns, wrapped in one of the typed errors below; errors.As
// reaches it from any of them.
type StatusError struct {
	Code       codes.Code
	Message    string
	Reason     string            // google.rpc.ErrorInfo reason (e.g. "THREAD_NOT_FOUND"); "" if the status did not come from the server's code
	Domain     string            // ErrorInfo domain: "chatmem.dev"
	Metadata   map[string]string // ErrorInfo metadata (e.g. "thread_id")
	Violations []FieldViolation  // from google.rpc.BadRequest
	RetryAfter time.Duration     // from google.rpc.RetryInfo; 0 if none
	RequestID  string            // the x-request-id the server echoed, if any
	status     *status.Status
}

func (e *StatusError) Error() string { return fmt.Sprintf("chatmem: %s: %s", e.Code, e.Message) }

// GRPCStatus lets status.FromError and status.Code see the original status through the wrapper.
func (e *StatusError) GRPCStatus() *status.Status { return e.status }

// Fields returns the paths of the offending fields, in the server's order.
func (e *StatusError) Fields() []string {
	out := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		out[i] = v.Field
	}
	return out
}

// The typed errors, one per kind of failure; match them with errors.As.
type (
	InvalidArgumentError   struct{ StatusError } // INVALID_ARGUMENT, OUT_OF_RANGE: Violations names every bad field
	NotFoundError          struct{ StatusError } // NOT_FOUND
	ConflictError          struct{ StatusError } // ABORTED (LAST_SEQ_MISMATCH), ALREADY_EXISTS
	UnauthenticatedError   struct{ StatusError } // UNAUTHENTICATED
	PermissionDeniedError  struct{ StatusError } // PERMISSION_DENIED
	ResourceExhaustedError struct{ StatusError } // RESOURCE_EXHAUSTED (quotas; RetryAfter set)
	UnavailableError       struct{ StatusError } // UNAVAILABLE after the retries
	DeadlineExceededError  struct{ StatusError } // DEADLINE_EXCEEDED
	InternalError          struct{ StatusError } // INTERNAL, UNKNOWN, DATA_LOSS and anything else
)

func (e *InvalidArgumentError) Unwrap() error   { return &e.StatusError }
func (e *NotFoundError) Unwrap() error          { return &e.StatusError }
func (e *ConflictError) Unwrap() error          { return &e.StatusError }
func (e *UnauthenticatedError) Unwrap() error   { return &e.StatusError }
func (e *PermissionDeniedError) Unwrap() error  { return &e.StatusError }
func (e *ResourceExhaustedError) Unwrap() error { return &e.StatusError }
func (e *UnavailableError) Unwrap() error       { return &e.StatusError }
func (e *DeadlineExceededError) Unwrap() error  { return &e.StatusError }
func (e *InternalError) Unwrap() error          { return &e.StatusError }

// Reason returns the ErrorInfo reason of a chatmem error, or "".
func Reason(err error) string {
	var e *StatusError
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// fromStatus maps a gRPC error to the typed error, decoding the google.rpc details.
func fromStatus(err error, requestID string) error {
	st, ok := status.FromError(err)
	if !ok {
		return err // a context error or a bug of ours, not a status
	}
	base := StatusError{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}, RequestID: requestID, status: st}
	for _, d := range st.Details() {
		switch detail := d.(type) {
		case *errdetails.ErrorInfo:
			base.Reason, base.Domain = detail.GetReason(), detail.GetDomain()
			for k, v := range detail.GetMetadata() {
				base.Metadata[k] = v
			}
		case *errdetails.BadRequest:
			for _, v := range detail.GetFieldViolations() {
				base.Violations = append(base.Violations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			delay := detail.GetRetryDelay()
			base.RetryAfter = time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
		}
	}
	switch base.Code {
	case codes.InvalidArgument, codes.OutOfRange:
		return &InvalidArgumentError{base}
	case codes.NotFound:
		return &NotFoundError{base}
	case codes.Aborted, codes.AlreadyExists:
		return &ConflictError{base}
	case codes.Unauthenticated:
		return &UnauthenticatedError{base}
	case codes.PermissionDenied:
		return &PermissionDeniedError{base}
	case codes.ResourceExhausted:
		return &ResourceExhaustedError{base}
	case codes.Unavailable:
		return &UnavailableError{base}
	case codes.DeadlineExceeded:
		return &DeadlineExceededError{base}
	default:
		return &InternalError{base}
	}
}
