"""Measured effect: A/B and campaign reports over the event log (docs/experiments.md)."""
