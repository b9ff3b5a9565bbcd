"""Member profiles, audiences and send times over the served bundle and live state (docs/profiles.md)."""
