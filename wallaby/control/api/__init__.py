"""The gRPC API server (``wallaby``): flow store, lifecycle, local worker dispatch."""
