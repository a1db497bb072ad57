"""A real 2-node Ray cluster (indexer/ray_cluster.py) on 127.0.0.1 inside the suite's loopback namespace: both
nodes join, a task runs on each, and stop() leaves none of the cluster's processes alive."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.ray_cluster import LocalRayCluster, in_loopback_namespace
from tests.ray_probe import ask

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
    cluster = LocalRayCluster(temp_dir=short_temp_dir, nodes=2, cpus_per_node=1)
    cluster.start()  # raises LoopbackNamespaceError when the suite does not run as root
    try:
        assert in_loopback_namespace()
        answer = ask(cluster.address, "nodes")  # a driver process of its own: see tests/ray_probe.py
        assert len(answer["nodes"]) == 2
        assert {node["address"] for node in answer["nodes"]} == {"127.0.0.1"}
        assert {task["node"] for task in answer["tasks"]} == {node["id"] for node in answer["nodes"]}
        pids = cluster.pids()
        assert pids, "the cluster's processes are known by PID"
    finally:
        cluster.stop()
    assert [pid for pid in pids if _running(pid)] == []
    assert cluster.pids() == []
