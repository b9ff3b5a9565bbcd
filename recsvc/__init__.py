"""recsvc: personalized recommendations and an outreach throttle for retail member programs."""

__version__ = "0.1.0"
