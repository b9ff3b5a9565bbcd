"""Measuring recsvc: load tests and benchmarks, beside the product and not part of it (no wheel
or server install carries this folder). Run from a source checkout: ``python -m bench ...``, or
``recsvc load ...`` which hands over to ``bench.cli`` when the checkout is there.

Nothing here imports Locust (it monkey-patches the standard library through gevent); the Locust
process imports these modules, never the other way round.

- ``loadconfig``  the load-test config file (TOML): target, traffic mix, think times, shapes
- ``shapes``      load shapes as pure functions of elapsed time (steady, ramp, spike)
- ``traffic``     what a simulated caller asks for: Zipf members from the bundle, unknown members,
                  product pages, events, outreach requests
- ``report``      Locust CSVs -> summary.md (req/s, p50/p95/p99, failures by status code, spike phases)
- ``loadrun``     ``recsvc load run``: starts Redis, sample data, training and the server, runs Locust
- ``ratebench``   fixed offered-rate gRPC client on ``grpc.aio`` (open loop)
- ``timing``      latency statistics for in-process call costs
- ``memory``      resident / proportional memory of a process tree from /proc
"""
