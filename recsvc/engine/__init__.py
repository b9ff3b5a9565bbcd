"""The recommendation engine: a loaded bundle prepared for serving (``ServedModel``), candidate
retrieval, filters, MMR diversity, reasons, cold start and the in-process ``RecommendationPort``."""
