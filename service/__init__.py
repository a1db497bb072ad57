"""Duet search service (FastAPI). Never imports training."""
