"""A sharded collection served on Ray Serve: each shard a deployment of reader replicas plus one writer replica,
and an ingress deployment running Duet's HTTP app (the same API and web page) behind Serve's HTTP proxy. The
ingress encodes each query once, asks every shard through its deployment handle and merges their answers
(indexer/search.py).

Per shard ``shard-NNN`` (``indexer/sharding.py`` names them):
  duet-shard-NNN          reader replicas (``--replicas``, one per node where there are enough): each follows the
                          shard's write-ahead log, so a search on any replica sees every acknowledged write
  duet-shard-NNN-writer   one replica holding the shard's writer lock: writes, stats, compaction
  duet                    the ingress (``--ingress-replicas``), at route prefix /
Every shard call is retried on another replica when the one it went to dies (``RayActorError``) or does not
answer in time; a shard none of whose replicas answers raises ``ShardUnavailableError`` naming it, which the API
answers with 503: a search never silently returns a ranking without a shard's items.

The collection directory must be on a filesystem every node sees at the same path.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from core.cancel import Cancellation, check
from core.encoder import DuetEncoder
from indexer.filters import Filter
from indexer.live import CompactionResult, WriteResult
from indexer.merge import ItemRecord, ShardCandidates, ShardUnavailableError
from indexer.params import SearchParams
from indexer.query import Query
from indexer.served import ServedCollection, ShardService, sharded_engine
from indexer.sharding import ShardedLayout, read_layout
from indexer.store import IndexManifest, IndexUnavailableError, read_manifest
from indexer.writes import PreparedWrite
from service.settings import ServiceSettings

_logger = logging.getLogger("service")
T = TypeVar("T")
APP_PREFIX = "duet"
INGRESS_APP = APP_PREFIX
# A replica that stops answering is found by its health check within about 3 s, and replaced; a read waits up to
# the shard timeout for a replica, a number of attempts (settings), before its shard is reported unavailable.
HEALTH_CHECK_PERIOD_S = 1.0
HEALTH_CHECK_TIMEOUT_S = 2.0


def reader_app(shard: str) -> str:
    return f"{APP_PREFIX}-{shard}"


def writer_app(shard: str) -> str:
    return f"{APP_PREFIX}-{shard}-writer"


class ShardReplica(ShardService):
    """One Serve replica of a shard: a follower of its log (reads), or its writer; its methods are the shard's."""

    def __init__(self, shard_dir: str, shard: int, shards: int, writer: bool,
                 auto_compact_ratio: float | None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        super().__init__(shard_dir, shard=shard, shards=shards, follow=not writer,
                         auto_compact_ratio=auto_compact_ratio)

    def pid(self) -> int:
        return os.getpid()


def _retryable() -> tuple[type[BaseException], ...]:
    from ray.exceptions import GetTimeoutError, RayActorError

    return (RayActorError, GetTimeoutError, TimeoutError)


class RayShard:
    """A shard's deployments, called like ``ShardService``: reads on the readers, writes on the writer."""

    def __init__(self, name: str, reader: Any, writer: Any, manifest: IndexManifest, *, timeout_s: float,
                 attempts: int) -> None:
        """``manifest``: the shard's as the ingress read it from disk (counts as of then; the fusion defaults and
        the binding do not change)."""
        self.name, self.reader, self.writer, self.manifest = name, reader, writer, manifest
        self.timeout_s, self.attempts = timeout_s, attempts

    def _call(self, handle: Any, method: str, *args: Any, timeout_s: float | None = None,
              attempts: int | None = None) -> Any:
        retryable = _retryable()
        failure: BaseException | None = None
        for attempt in range(attempts or self.attempts):
            try:
                return getattr(handle, method).remote(*args).result(timeout_s=timeout_s or self.timeout_s)
            except retryable as e:  # that replica died or did not answer: the next call goes to another
                failure = e
                _logger.warning("shard %s: %s failed on attempt %d (%s)", self.name, method, attempt + 1,
                                type(e).__name__)
        raise ShardUnavailableError(self.name, f"no replica answered {method} ({type(failure).__name__})")

    def candidates(self, side: str, queries: Sequence[Query], params: SearchParams, k: int, *,
                   threads: int = 1) -> list[ShardCandidates]:
        del threads  # a replica searches with its own threads
        return self._call(self.reader, "candidates", side, list(queries), params, k)

    def records(self, side: str, ids: Sequence[str]) -> list[ItemRecord | None]:
        return self._call(self.reader, "records", side, list(ids))

    def find(self, item_id: str) -> tuple[str, dict[str, Any]] | None:
        return self._call(self.reader, "find", item_id)

    def facets(self, side: str, field: str, filter_: Filter | None) -> dict[Any, int]:
        return self._call(self.reader, "facets", side, field, filter_)

    def apply(self, write: PreparedWrite) -> WriteResult:
        # a write is not retried after its replica died: it may have been logged; the client sees 503 and
        # retries (an upsert by id and a delete are idempotent)
        return self._call(self.writer, "apply", write, attempts=1)

    def delete(self, item_id: str) -> WriteResult:
        return self._call(self.writer, "delete", item_id, attempts=1)

    def stats(self) -> dict[str, Any]:
        return self._call(self.writer, "stats")

    def needs_compaction(self) -> bool:
        return bool(self._call(self.writer, "needs_compaction"))

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        # a started compaction runs in the shard's writer replica, out of reach of ``cancel``: it is only not
        # started once cancelled
        check(cancel)
        return self._call(self.writer, "compact", timeout_s=24 * 3600.0, attempts=1)

    def close(self) -> None:
        """The deployments outlive this client (``undeploy`` removes them)."""


def connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        raise IndexUnavailableError("--engine ray needs a cluster: --address HOST:PORT or the RAY_ADDRESS setting")
    ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.ERROR)


def shard_deployments(layout: ShardedLayout, settings: ServiceSettings) -> dict[str, Any]:
    """The Serve applications of every shard: its readers and its writer, by application name."""
    from ray import serve

    nodes = _alive_nodes()
    shards = len(layout.shard_dirs)
    apps: dict[str, Any] = {}
    for n, (entry, shard_dir) in enumerate(zip(layout.manifest.shards, layout.shard_dirs, strict=True)):
        common: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}, "health_check_period_s": HEALTH_CHECK_PERIOD_S,
                                  "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S}
        replica: Any = serve.deployment(ShardReplica)  # its overloads leave the class form untyped
        readers = replica.options(
            name=entry.name, num_replicas=settings.replicas,
            max_replicas_per_node=1 if settings.replicas <= nodes else None, **common)
        writer = replica.options(name=f"{entry.name}-writer", num_replicas=1, **common)
        ratio = settings.auto_compact_ratio or None
        apps[reader_app(entry.name)] = readers.bind(str(shard_dir), n, shards, False, None)
        apps[writer_app(entry.name)] = writer.bind(str(shard_dir), n, shards, True, ratio)
    return apps


def _alive_nodes() -> int:
    import ray

    return len([node for node in ray.nodes() if node.get("Alive")])


def open_deployed(settings: ServiceSettings, encoder: DuetEncoder | None = None) -> ServedCollection:
    """The collection as the ingress serves it: the read engine over the deployed shards (``serve_on_ray``),
    handles to each one's readers and writer."""
    from ray import serve

    layout = read_layout(settings.index_dir)
    shards = [RayShard(entry.name, serve.get_app_handle(reader_app(entry.name)),
                       serve.get_app_handle(writer_app(entry.name)), read_manifest(shard_dir),
                       timeout_s=settings.shard_timeout_s, attempts=settings.shard_attempts)
              for entry, shard_dir in zip(layout.manifest.shards, layout.shard_dirs, strict=True)]
    encoder = encoder or DuetEncoder.from_checkpoint(settings.checkpoint or layout.checkpoint_dir)
    return ServedCollection(sharded_engine(layout, shards, encoder), shards,
                            generation=layout.version.name)


def ingress_deployment(settings: ServiceSettings) -> Any:
    """The ingress: Duet's HTTP app, built in each replica (its state, threads and metrics are the replica's own),
    over the shards' handles. It encodes each query once, fans out and merges (indexer/search.py)."""
    from ray import serve

    @serve.deployment(name="ingress", num_replicas=settings.ingress_replicas, ray_actor_options={"num_cpus": 0},
                      health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S)
    @serve.ingress()
    class Ingress:
        def __init__(self, settings: ServiceSettings) -> None:
            self.settings = settings

        def __serve_build_asgi_app__(self) -> Any:
            from service.app import create_app

            return create_app(self.settings, engine_loader=open_deployed)

    deployment: Any = Ingress  # a Deployment once decorated; the stubs keep the class type
    return deployment.bind(settings)


def deploy(settings: ServiceSettings) -> list[str]:
    """Deploy every shard (writers first: a reader follows the log its writer keeps), then the ingress behind
    Serve's HTTP proxy on ``settings.host:port``; the application names, once every replica runs."""
    from ray import serve

    connect(settings.address)
    layout = read_layout(settings.index_dir)
    serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port})
    _check_proxy(settings)
    apps = shard_deployments(layout, settings)
    started = time.perf_counter()
    deployed: list[str] = []
    try:
        for name in sorted(apps, key=lambda app: not app.endswith("-writer")):
            serve.run(apps[name], name=name, route_prefix=None)
            deployed.append(name)
        serve.run(ingress_deployment(settings), name=INGRESS_APP, route_prefix="/")
        deployed.append(INGRESS_APP)
    except BaseException:
        undeploy(deployed)
        raise
    _logger.info("serving %s on http://%s:%d: %d shards x %d replicas, %d ingress replicas, deployed in %.1fs",
                 settings.index_dir, settings.host, settings.port, len(layout.shard_dirs), settings.replicas,
                 settings.ingress_replicas, time.perf_counter() - started)
    return deployed


def _check_proxy(settings: ServiceSettings) -> None:
    """Refuse to deploy behind a Serve that another service started on another address (its HTTP options win)."""
    from ray import serve

    client = serve.context._get_global_client()  # Serve has no public accessor for it (ray is pinned: 2.60.0)
    http = client.http_config if client is not None else None
    if http is not None and (http.host, http.port) != (settings.host, settings.port):
        raise IndexUnavailableError(f"Serve on this cluster already listens on {http.host}:{http.port} for "
                                    "another service; use that address, or stop that service first")


def undeploy(names: Sequence[str]) -> None:
    """Remove the applications, the ingress first (no request reaches a shard being removed)."""
    from ray import serve

    for name in sorted(names, key=lambda app: app != INGRESS_APP):
        serve.delete(name)


def serve_on_ray(settings: ServiceSettings) -> int:
    """``python -m service --engine ray``: deploy, serve until SIGTERM or Ctrl-C, then remove the deployments."""
    connect(settings.address)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(signum, lambda *_: stopping.set())
    names = deploy(settings)
    try:
        stopping.wait()
    finally:
        undeploy(names)
        _shutdown_if_unused()
    return 0


def _shutdown_if_unused() -> None:
    """Stop Serve (its controller and HTTP proxy) once no application is left, so that the next service on this
    cluster starts its proxy on its own host and port (Serve keeps the first one's otherwise)."""
    from ray import serve

    if not serve.status().applications:
        serve.shutdown()


__all__ = ["RayShard", "ShardReplica", "deploy", "open_deployed", "serve_on_ray", "undeploy"]
