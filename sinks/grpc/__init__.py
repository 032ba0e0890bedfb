"""The grpc destination."""
