"""The live catalog: item changes in Redis that every server process follows (docs/operations.md)."""
