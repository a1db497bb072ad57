"""Duet benchmarks: recall through the real index path, latency and size (issue 4). Never imports training."""
