"""The corral.v1 API: generated protobuf and gRPC modules (see proto/generate.py)."""
