"""Transports: HTTP (ASGI on uvicorn), gRPC (grpc.aio) and the metrics endpoint."""
