"""Open Inference Protocol v2: wire-neutral types, JSON/binary codecs, gRPC stubs."""
