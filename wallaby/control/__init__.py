"""The roof: the console scripts (``wallaby``, ``wallaby-worker``, ``wallaby-admin``) and the gRPC API server."""
