"""The service process the tests start (benchmarks/service_process.py), under the names the tests use."""

from benchmarks.service_process import ROOT, Reply, Server, serving

__all__ = ["ROOT", "Reply", "Server", "serving"]
