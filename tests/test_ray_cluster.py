"""A real 2-node Ray cluster (indexer/ray_cluster.py) on 127.0.0.1 inside the suite's loopback namespace: both
nodes join, a task runs on each, and stop() leaves none of the cluster's processes alive."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.ray_cluster import LocalRayCluster, in_loopback_namespace

pytestmark = pytest.mark.ray


@pytest.fixture
def short_temp_dir() -> Iterator[Path]:
    # Ray's Unix sockets live under temp_dir and must stay within 107 bytes: pytest's tmp_path can be too long
    path = Path(tempfile.mkdtemp(prefix="duet-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_two_node_cluster_runs_a_task_on_each_node_and_stops_every_process(short_temp_dir: Path) -> None:
    import ray

    cluster = LocalRayCluster(temp_dir=short_temp_dir, nodes=2, cpus_per_node=1)
    cluster.start()  # raises LoopbackNamespaceError when the suite does not run as root
    try:
        assert in_loopback_namespace()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        try:
            nodes = [node for node in ray.nodes() if node["Alive"]]
            assert len(nodes) == 2
            assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}

            @ray.remote(num_cpus=1)
            def where() -> tuple[str, int]:
                return ray.get_runtime_context().get_node_id(), os.getpid()

            placed = ray.get([where.options(resources={f"duet_node_{i}": 1}).remote() for i in range(2)], timeout=60)
            assert {node_id for node_id, _ in placed} == {node["NodeID"] for node in nodes}
            pids = cluster.pids()  # while connected: a job's workers exit with its driver
            assert {pid for _, pid in placed} <= set(pids), "the task workers are among the cluster's processes"
        finally:
            ray.shutdown()
    finally:
        cluster.stop()
    assert [pid for pid in pids if _running(pid)] == []
    assert cluster.pids() == []
