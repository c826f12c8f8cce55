"""Thin gRPC servicers: validate, call the repository, convert to protobuf."""
