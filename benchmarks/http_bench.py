"""HTTP overhead: the same text queries through a real uvicorn server versus the server's own search time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.stats import percentiles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_overhead(index_dir: Path, texts: Sequence[str], *, mode: str = "hybrid", warmup: int = 5,
                  log: Path | None = None) -> dict[str, Any]:
    """Client-observed latency vs the in-process time the server reports (timings_ms.total) per request."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    output = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "service", "--index", str(index_dir), "--port", str(port),
                                "--log-level", "warning"], stdout=output, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not become ready") from None
                time.sleep(0.5)
        client, server = [], []
        for n, text in enumerate([*texts[:warmup], *texts]):
            body = json.dumps({"text": text, "mode": mode, "top_k": 10}).encode()
            request = urllib.request.Request(base + "/v1/search", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = json.loads(response.read())
            elapsed = (time.perf_counter() - started) * 1000
            if n >= warmup:
                client.append(elapsed)
                server.append(payload["timings_ms"]["total"])
    finally:
        process.terminate()
        process.wait(timeout=30)
    client_p, server_p = percentiles(client), percentiles(server)
    return {"mode": mode, "client_ms": client_p, "server_ms": server_p,
            "overhead_p50_ms": client_p["p50"] - server_p["p50"],
            "overhead_share_of_p50": (client_p["p50"] - server_p["p50"]) / client_p["p50"]}
