"""Duet benchmarks: recall through the real index path, latency and size. Never imports training."""
