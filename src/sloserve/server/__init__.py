"""Transports: HTTP (a lean HTTP/1.1 server on httptools), gRPC (grpc.aio) and the metrics endpoint."""
