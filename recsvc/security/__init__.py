"""Caller authentication, TLS, the tamper-evident audit log, pseudonyms and erasure.

Modules: ``auth`` (API keys, roles, the one auth interceptor), ``tls`` (server/client credentials),
``audit`` (hash-chained JSON-lines log), ``privacy`` (pseudonyms, erasure list, ``apply_erasures``),
``erasure`` (forgetting a member in Redis and in every server process), ``admin`` (the Admin
gRPC servicer), ``wiring`` (what the server's composition root calls). See docs/security.md.
"""
