"""What gRPC health reports for each service, from what each one depends on.

- ``""`` (the whole server), ``recsvc.v1.Recommender`` and the extra services (Admin): SERVING once
  a model is loaded. Recommendations degrade gracefully without Redis (bundle only), so a Redis
  outage does not take them out of rotation.
- ``recsvc.v1.Outreach``: SERVING once a model is loaded *and* while the throttle's circuit breaker
  is closed (Redis answers). While it is open, every decision would fail closed, so a load balancer
  or a client can send outreach traffic to a replica whose Redis answers. The breaker's background
  probe closes it within ``outreach.breaker_reset_ms`` of Redis coming back, and health follows.

After ``enter_graceful_shutdown`` the health servicer ignores further changes (all NOT_SERVING).
"""

from __future__ import annotations

import threading

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    def __init__(
        self, servicer: health.HealthServicer, model_services: list[str], store_services: list[str]
    ) -> None:
        self._servicer = servicer
        self._model_services = ["", *model_services]
        self._store_services = store_services  # also need the model
        self._lock = threading.Lock()
        self._model_loaded = False
        self._store_up = True
        self._publish()

    def model_loaded(self) -> None:
        with self._lock:
            self._model_loaded = True
            self._publish()

    def store_changed(self, down: bool) -> None:
        """A circuit breaker listener: ``down`` is True when it opens."""
        with self._lock:
            self._store_up = not down
            self._publish()

    def _publish(self) -> None:
        model = SERVING if self._model_loaded else NOT_SERVING
        for name in self._model_services:
            self._servicer.set(name, model)
        store = SERVING if self._model_loaded and self._store_up else NOT_SERVING
        for name in self._store_services:
            self._servicer.set(name, store)
