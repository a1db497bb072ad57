"""``python -m tests.ray_probe nodes|replicas ADDRESS ...``: asks a Ray cluster something from a process of its own
and prints the answer as JSON.

The test process never connects to Ray itself: ``ray.init`` replaces the process's SIGSEGV handler and
``ray.shutdown`` resets it, while the JVM the suite's Lucene indexes run in relies on its own (a later Lucene call
could then kill the whole test run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nodes() -> dict[str, Any]:
    import ray

    @ray.remote(num_cpus=1)
    def where() -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    nodes = [n for n in ray.nodes() if n["Alive"]]
    placed = ray.get([where.options(resources={f"duet_node_{i}": 1}).remote() for i in range(len(nodes))], timeout=60)
    return {"nodes": [{"id": n["NodeID"], "address": n["NodeManagerAddress"]} for n in nodes],
            "tasks": [{"node": node, "pid": pid} for node, pid in placed]}


def _replicas(app: str, deployment: str) -> dict[str, int]:
    from indexer.ray_cluster import serve_replica_pids

    return serve_replica_pids(app, deployment)


def main(argv: list[str]) -> int:
    import ray

    from indexer.ray_cluster import enter_loopback_namespace

    enter_loopback_namespace()  # inherited from the test process (a no-op then): the cluster is on its loopback
    command, address, *rest = argv
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        answer = _nodes() if command == "nodes" else _replicas(*rest)
    finally:
        ray.shutdown()
    print(json.dumps(answer))  # noqa: T201
    return 0


def ask(address: str, *args: str) -> Any:
    """Run the probe against the cluster at ``address``; its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "tests.ray_probe", args[0], address, *args[1:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
