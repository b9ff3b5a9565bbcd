"""The gRPC server: composition root (``app.build_server``), servicers, the error interceptor
and multi-process serving."""
