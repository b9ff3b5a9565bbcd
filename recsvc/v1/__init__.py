"""Generated gRPC stubs for recsvc.v1. Do not edit: run `python proto/generate.py`."""
