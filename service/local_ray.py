"""``python -m service.local_ray``: the Ray path on one machine, in one command: a 2-node Ray cluster confined to a
loopback-only network namespace, the sharded collection built on it (unless it is there and current), served by
``python -m service --engine ray``, and reachable from this machine's own 127.0.0.1:PORT.

The listening socket is bound before this process leaves the machine's network namespace, so it stays in it; every
connection it accepts is relayed to the service inside the cluster's namespace. Nothing of the cluster listens on
or reaches any other interface. Ctrl-C (or SIGTERM) stops the service, then every process of the cluster by PID.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from core.data import dataset_dir_setting
from core.progress import setup_logging
from indexer.ray_cluster import LocalRayCluster, enter_loopback_namespace

_logger = logging.getLogger("service")
CHUNK = 64 * 1024


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(listener: socket.socket, port: int, stopping: threading.Event) -> None:
    """Accept on ``listener`` until ``stopping``; relay each connection to 127.0.0.1:``port`` (opened in the
    namespace the calling thread is in), both ways."""
    listener.settimeout(0.5)
    while not stopping.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            client.close()  # the service is not up yet (or has gone): the client sees a reset
            continue
        upstream.settimeout(None)
        client.settimeout(None)
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, target), daemon=True).start()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _build_args(args: argparse.Namespace, address: str) -> list[str]:
    return [sys.executable, "-m", "indexer", "build", "--engine", "ray", "--address", address, "--shards",
            str(args.shards), "--workers", str(args.workers), "--checkpoint", str(args.checkpoint), "--data",
            str(args.data), "--splits", args.splits, "--out", str(args.out)]


def _current(args: argparse.Namespace) -> bool:
    """Whether the collection exists and verifies against the checkpoint."""
    check = [sys.executable, "-m", "indexer", "--log-level", "WARNING", "verify", "--index", str(args.out),
             "--checkpoint", str(args.checkpoint)]
    return subprocess.run(check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _serve(args: argparse.Namespace, address: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service", "--engine", "ray", "--address", address, "--index",
                             str(args.out), "--replicas", str(args.replicas), "--host", "127.0.0.1", "--port",
                             str(port)])


def _until_stopped(process: subprocess.Popen[bytes], stopping: threading.Event) -> int:
    """Wait for ``process``; on Ctrl-C or SIGTERM meanwhile, terminate it (its output is published only when done)."""
    while process.poll() is None:
        if stopping.wait(0.5):
            process.terminate()
            return process.wait(timeout=120)
    return process.returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.local_ray", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/grounded/best"))
    data_setting = dataset_dir_setting()  # --data may be left out only where the DUET_DATA setting names one
    parser.add_argument("--data", type=Path, default=data_setting, required=data_setting is None,
                        help="Karpathy dataset directory (default: the DUET_DATA setting)")
    parser.add_argument("--splits", default="train,val,test")
    parser.add_argument("--out", type=Path, default=Path("indexes/flickr8k-sharded"), help="the sharded collection")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="encoding actors of the build")
    parser.add_argument("--replicas", type=int, default=2, help="Serve replicas of each shard")
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes of the local cluster")
    parser.add_argument("--port", type=int, default=8000, help="port on this machine's 127.0.0.1")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    listener = socket.create_server(("127.0.0.1", args.port))  # bound here, in this machine's namespace
    enter_loopback_namespace()  # from here on, this process and what it starts see only loopback
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    temp_dir = Path(tempfile.mkdtemp(prefix="duet-ray-", dir="/tmp"))
    cluster = LocalRayCluster(temp_dir=temp_dir, nodes=args.nodes, cpus_per_node=max(1, (os.cpu_count() or 2) //
                                                                                         args.nodes))
    service: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        _logger.info("Ray cluster of %d nodes at %s (loopback namespace)", args.nodes, cluster.address)
        built = 0 if _current(args) else _until_stopped(subprocess.Popen(_build_args(args, cluster.address)),
                                                         stopping)
        if stopping.is_set():  # stopped by the user: the build, interrupted, published nothing
            return 0
        if built != 0:
            return 1
        inner = _free_port()
        service = _serve(args, cluster.address, inner)
        threading.Thread(target=relay, args=(listener, inner, stopping), daemon=True).start()
        _logger.info("serving http://127.0.0.1:%d/ (Ctrl-C stops it)", args.port)
        while not stopping.is_set() and service.poll() is None:
            time.sleep(0.5)
    finally:
        listener.close()
        if service is not None and service.poll() is None:
            service.terminate()
            service.wait(timeout=120)
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0 if service is not None and service.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
