"""A real ``python -m service`` process on 127.0.0.1 (for tests and the reliability harness), and a tiny stdlib
HTTP client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.http_bench import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 log_level: str = "warning") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self._log = log.open("a")  # appended: a restarted server's log follows the first one's
        self.process = subprocess.Popen([sys.executable, "-m", "service", *args, "--port", str(self.port),
                                         "--host", "127.0.0.1", "--log-level", log_level],
                                        cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.log_path = log

    def wait_started(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.request("GET", "/healthz").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def wait_ready(self, timeout: float = 300) -> None:
        """Until /readyz answers 200: the index is loaded (its model too)."""
        deadline = time.monotonic() + timeout
        while self.request("GET", "/readyz").status != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"server not ready: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.25)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> Reply:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())

    def post_json(self, path: str, payload: Any, headers: dict[str, str] | None = None, method: str = "POST") -> Reply:
        return self.request(method, path, json.dumps(payload).encode(),
                            {"Content-Type": "application/json", **(headers or {})})

    def post_multipart(self, path: str, fields: dict[str, str | list[str]], files: dict[str, tuple[str, bytes, str]],
                       headers: dict[str, str] | None = None, method: str = "POST") -> Reply:
        """A multipart request: a field given a list is sent as one part per value (captions)."""
        boundary = "duet-test-boundary"
        parts = []
        for name, given in fields.items():
            for value in given if isinstance(given, list) else [given]:
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                             .encode())
        for name, (filename, data, content_type) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request(method, path, body,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)  # a graceful stop waits for a running compaction
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self._log.close()

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        """The exit status once the process has ended (a drained stop: 0)."""
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind (what survives is what was on disk)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self._log.close()


@contextmanager
def serving(index: Path, log: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
            log_level: str = "warning", ready: bool = False) -> Iterator[Server]:
    """A started ``python -m service --index INDEX [ARGS]`` (``ready``: with its index loaded), stopped on exit."""
    running = Server(["--index", str(index), *args], log, env, log_level)
    try:
        running.wait_started()
        if ready:
            running.wait_ready()
        yield running
    finally:
        running.stop()
