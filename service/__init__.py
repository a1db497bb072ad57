"""Duet search service (FastAPI; built under issue 3). Never imports training."""
