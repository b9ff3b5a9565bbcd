"""The durable event log: recommendation ids and attribution (``ids``), what the server writes to
Redis Streams (``log``), the sink that writes them to Parquet (``sink``, ``schema``) and what
training reads back (``feed``). See docs/experiments.md and docs/operations.md."""
