// Package grpcinterop holds an end-to-end interop test of quench-enclave's
// h2c upstreams (-app-url h2c://...) with a real gRPC stack, grpc-go, on both
// sides: a grpc-go server as the app behind quench-enclave (userspace network
// mode, development attester) and quench-host, and a grpc-go client over the
// enclave's TLS. It lives in the tools module so that the library's go.mod
// does not require grpc. The package has no code of its own; see
// interop_test.go.
package grpcinterop
