package grpcinterop

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec passes []byte messages through as they are, so that the test
// service needs no protoc-generated code. It is registered under the
// content-subtype "raw": clients select it with
// grpc.CallContentSubtype("raw") (content-type application/grpc+raw, which
// the proxy must pass on), while the health service on the same server keeps
// protobuf.
type rawCodec struct{}

func (rawCodec) Name() string { return "raw" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*m = append((*m)[:0], data...)
	return nil
}

func init() { encoding.RegisterCodec(rawCodec{}) }

const (
	serviceName = "quench.interop.Echo"
	methodEcho  = "/" + serviceName + "/Echo"
	methodChat  = "/" + serviceName + "/Chat"
	methodHang  = "/" + serviceName + "/Hang"
)

// echoServer implements the hand-written service:
//
//   - Echo (unary): replies "echo:"+request, with header x-unary-hdr and
//     x-client-md-seen (the values of the request's x-client-md) and
//     x-deadline-in (the call's deadline, from grpc-timeout), and trailer
//     x-unary-trl; the request "notfound" gets a NotFound status, message
//     "x", with a detail (grpc-status-details-bin, a binary field) and only
//     the trailer x-err-trl set, which grpc-go's server sends as a
//     trailers-only response (one HEADERS frame ending the stream);
//   - Chat (bidi): sends header x-stream-hdr at once, before reading
//     anything, then replies "re:"+m to every message m, and ends with
//     trailer x-stream-trl when the client closes its side;
//   - Hang (bidi): reads one message, reports it on started, then waits for
//     its context to end and reports that on cancelled.
type echoServer struct {
	started   chan struct{}
	cancelled chan time.Time
}

func newEchoServer() *echoServer {
	return &echoServer{started: make(chan struct{}, 1), cancelled: make(chan time.Time, 1)}
}

func (s *echoServer) echo(ctx context.Context, req []byte) ([]byte, error) {
	if string(req) == "notfound" {
		grpc.SetTrailer(ctx, metadata.Pairs("x-err-trl", "gone"))
		st, err := status.New(codes.NotFound, "x").WithDetails(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	hdr := metadata.Pairs("x-unary-hdr", "h1")
	hdr.Set("x-client-md-seen", md.Get("x-client-md")...)
	if dl, ok := ctx.Deadline(); ok {
		// grpc-timeout came through.
		hdr.Set("x-deadline-in", time.Until(dl).String())
	}
	if err := grpc.SetHeader(ctx, hdr); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, metadata.Pairs("x-unary-trl", "t1")); err != nil {
		return nil, err
	}
	return append([]byte("echo:"), req...), nil
}

func (s *echoServer) chat(stream grpc.ServerStream) error {
	if err := stream.SendHeader(metadata.Pairs("x-stream-hdr", "s1")); err != nil {
		return err
	}
	stream.SetTrailer(metadata.Pairs("x-stream-trl", "s2"))
	for {
		var m []byte
		if err := stream.RecvMsg(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if err := stream.SendMsg(append([]byte("re:"), m...)); err != nil {
			return err
		}
	}
}

func (s *echoServer) hang(stream grpc.ServerStream) error {
	var m []byte
	if err := stream.RecvMsg(&m); err != nil {
		return err
	}
	s.started <- struct{}{}
	<-stream.Context().Done()
	s.cancelled <- time.Now()
	return stream.Context().Err()
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req []byte
			if err := dec(&req); err != nil {
				return nil, err
			}
			return srv.(*echoServer).echo(ctx, req)
		},
	}},
	Streams: []grpc.StreamDesc{
		{
			StreamName:    "Chat",
			Handler:       func(srv any, stream grpc.ServerStream) error { return srv.(*echoServer).chat(stream) },
			ServerStreams: true, ClientStreams: true,
		},
		{
			StreamName:    "Hang",
			Handler:       func(srv any, stream grpc.ServerStream) error { return srv.(*echoServer).hang(stream) },
			ServerStreams: true, ClientStreams: true,
		},
	},
}

var chatStreamDesc = &grpc.StreamDesc{StreamName: "Chat", ServerStreams: true, ClientStreams: true}
var hangStreamDesc = &grpc.StreamDesc{StreamName: "Hang", ServerStreams: true, ClientStreams: true}
