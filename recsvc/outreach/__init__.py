"""Outreach throttle: per-member caps, quiet hours, consent and fatigue decided atomically in
Redis, campaign planning and next-best-outreach. See docs/outreach.md.

Modules: ``policy`` (the validated, hot-reloaded policy file), ``quiet_hours`` (zoneinfo),
``keys`` (Redis key layout), ``throttle`` (decisions via the Lua scripts in ``scripts/``, run by
``recsvc.script_runner``),
``validation`` (request checks), ``planning`` (PlanCampaign), ``next_best`` (NextBestOutreach),
``ports`` (what we need from the recommender), ``service`` (the gRPC servicer).
"""
