package cli

import (
	"fmt"
	"io"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rpcError is a failed gRPC call, kept with what the client was doing and where, so it can
// be printed with a hint.
type rpcError struct {
	what    string // e.g. "get state", "apply cluster orders"
	addr    string
	timeout time.Duration
	err     error
	// hints are extra lines for particular codes, e.g. where to look after NotFound.
	hints map[codes.Code]string
}

func (r *runner) rpcErr(what string, err error) error {
	return &rpcError{what: what, addr: r.g.addr, timeout: r.g.timeout, err: err}
}

// rpcErrHints is rpcErr with a hint printed after the error when its code is in hints.
func (r *runner) rpcErrHints(what string, err error, hints map[codes.Code]string) error {
	return &rpcError{what: what, addr: r.g.addr, timeout: r.g.timeout, err: err, hints: hints}
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("%s: %s", e.what, status.Convert(e.err).Message())
}

func (e *rpcError) Unwrap() error { return e.err }

// print writes the error, then a hint or the fields at fault, to w.
func (e *rpcError) print(w io.Writer) {
	st := status.Convert(e.err)
	switch st.Code() {
	case codes.InvalidArgument:
		fmt.Fprintf(w, "regent: %s: invalid argument: %s\n", e.what, st.Message())
		for _, d := range st.Details() {
			br, ok := d.(*errdetails.BadRequest)
			if !ok {
				continue
			}
			for _, v := range br.GetFieldViolations() {
				fmt.Fprintf(w, "  field %s: %s\n", v.GetField(), v.GetDescription())
			}
		}
	case codes.Unavailable:
		fmt.Fprintf(w, "regent: %s: %s\n", e.what, st.Message())
		fmt.Fprintf(w, "hint: is a regent agent running at %s? Point at one with --addr HOST:PORT or %s.\n",
			e.addr, AddrEnv)
	case codes.DeadlineExceeded:
		fmt.Fprintf(w, "regent: %s: %s\n", e.what, st.Message())
		fmt.Fprintf(w, "hint: no answer from %s within %s; raise --timeout, or check the agent's health.\n",
			e.addr, e.timeout)
	case codes.Unimplemented:
		fmt.Fprintf(w, "regent: %s: %s\n", e.what, st.Message())
		fmt.Fprintf(w, "hint: the agent at %s does not serve this call; is it an older version?\n", e.addr)
	default:
		fmt.Fprintf(w, "regent: %s: %s\n", e.what, st.Message())
	}
	if h := e.hints[st.Code()]; h != "" {
		fmt.Fprintf(w, "hint: %s\n", h)
	}
}
