"""A real multi-node Ray cluster on one machine, confined to a loopback-only network namespace.

Why: the scale-out (Ray Data for the sharded build, Ray Serve for sharded serving) must be tested for real on a
2-core CI machine. Ray advertises the machine's routable address and binds its servers on all interfaces, and
``ray stop`` kills every Ray process on the machine by name. So every cluster started here runs in a network
namespace whose only interface is ``lo`` (its node IP is then 127.0.0.1 and nothing leaves the machine), and it is
stopped by PID: the ``ray start`` processes, their descendants and their sessions, never anything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# A Unix socket path holds at most 107 bytes; Ray puts <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store
# (up to 64 bytes after temp_dir) there.
_MAX_TEMP_DIR_CHARS = 107 - 64


class LoopbackNamespaceError(RuntimeError):
    """The process could not be confined to (or is not in) a loopback-only network namespace."""


class RayClusterError(RuntimeError):
    """A local Ray cluster failed to start; the message carries the tail of its node logs."""


def _interface_flags(sock: socket.socket, name: str) -> int:
    request = struct.pack("16sH14s", name.encode(), 0, b"")
    return int(struct.unpack("16sH14s", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1])


def in_loopback_namespace() -> bool:
    """True when the calling thread's network namespace has one interface, ``lo``, and it is up.

    The interfaces are asked of the kernel (netlink and ioctl on a socket), not read from /sys/class/net: sysfs
    keeps showing the namespace it was mounted in, so after unshare it still lists the host's interfaces.
    """
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return bool(_interface_flags(sock, "lo") & _IFF_UP)


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _interface_flags(sock, "lo") | _IFF_UP
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags, b""))


def enter_loopback_namespace() -> None:
    """Move the calling thread into a new network namespace with only ``lo``, up (a no-op when already in one).

    ``unshare(CLONE_NEWNET)`` (through libc: Python 3.11 has no ``os.unshare``) moves only the calling thread and
    the threads and processes it starts afterwards, so call it first thing, before other threads start (pytest's
    ``pytest_configure``, or the top of a script). ``lo`` is brought up with SIOCSIFFLAGS, as ``ip link set lo up``
    does, without needing iproute2. Needs root (CAP_SYS_ADMIN).
    """
    if in_loopback_namespace():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise LoopbackNamespaceError(
            f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)} (euid {os.geteuid()}). A Ray cluster must run in a "
            "loopback-only network namespace: run as root (with CAP_SYS_ADMIN), or start the process under "
            "`sudo unshare -n sh -c 'ip link set lo up; exec ...'` (or `unshare -rn` where user namespaces are "
            "allowed)")
    try:
        _bring_loopback_up()
    except OSError as error:
        raise LoopbackNamespaceError(f"entered a new network namespace but could not bring lo up: {error}") from error
    if not in_loopback_namespace():
        names = [name for _, name in socket.if_nameindex()]
        raise LoopbackNamespaceError(f"after unshare the network namespace is not loopback-only: {names}")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, session id, start time) of a running process, or None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _net_namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _ancestors(pid: int, stats: dict[int, tuple[int, int, int]]) -> set[int]:
    """The process itself and its ancestors: never members, even when their command line names the temp_dir."""
    chain = set()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        pid = stats[pid][0] if pid in stats else 0
    return chain


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class LocalRayCluster:
    """A head and ``nodes - 1`` workers, each a ``ray start --block`` process in its own session, on 127.0.0.1.

    Every node gets the custom resource ``duet_node_<i>`` (100 units) so work can be pinned to a node: all nodes
    share the IP 127.0.0.1, so Ray's ``node:<ip>`` resource cannot tell them apart.
    """

    def __init__(self, *, temp_dir: Path, nodes: int = 2, cpus_per_node: int = 1,
                 object_store_bytes: int = 300_000_000, start_timeout_s: float = 60.0,
                 stop_grace_s: float = 10.0) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.temp_dir = Path(temp_dir).absolute()
        if len(str(self.temp_dir)) > _MAX_TEMP_DIR_CHARS:
            raise ValueError(f"temp_dir {self.temp_dir} is longer than {_MAX_TEMP_DIR_CHARS} characters: Ray's Unix "
                             "sockets under it would exceed 107 bytes (use e.g. tempfile.mkdtemp(dir='/tmp'))")
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.object_store_bytes = object_store_bytes
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._port: int | None = None
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def address(self) -> str:
        """The GCS address to give ``ray.init(address=...)``."""
        if self._port is None:
            raise RuntimeError("the cluster is not started")
        return f"127.0.0.1:{self._port}"

    def _ray(self) -> str:
        return str(Path(sys.executable).parent / "ray")

    def _node_args(self, index: int, agent_port: int) -> list[str]:
        return ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}",
                f"--object-store-memory={self.object_store_bytes}", f"--resources={{\"duet_node_{index}\": 100}}",
                f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats"]

    def _launch(self, index: int, args: list[str], agent_port: int) -> None:
        log = (self.temp_dir / f"node-{index}.log").open("wb")
        with log:
            self._procs.append(subprocess.Popen([self._ray(), "start", *args, *self._node_args(index, agent_port)],
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True))

    def start(self) -> LocalRayCluster:
        """Start every node and wait (at most ``start_timeout_s``) until all are alive; refuses outside loopback."""
        if not in_loopback_namespace():
            raise LoopbackNamespaceError(
                "refusing to start Ray outside a loopback-only network namespace (Ray would advertise and listen on "
                "the machine's routable address): call indexer.ray_cluster.enter_loopback_namespace() first, as root "
                "with CAP_SYS_ADMIN (tests/conftest.py does for the suite), or run under "
                "`sudo unshare -n sh -c 'ip link set lo up; exec ...'`")
        if self._procs:
            raise RuntimeError("the cluster is already started")
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # every port of the cluster drawn at once: ports drawn apart can coincide, and ray start then refuses
        self._port, client_port, dashboard_port, *agent_ports = _free_ports(3 + self.nodes)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            self._launch(0, ["--head", f"--port={self._port}", f"--ray-client-server-port={client_port}",
                             f"--dashboard-port={dashboard_port}", "--include-dashboard=false",
                             f"--temp-dir={self.temp_dir}"], agent_ports[0])
            self._wait(deadline, self._gcs_listening)
            for index in range(1, self.nodes):
                self._launch(index, [f"--address={self.address}"], agent_ports[index])
            self._wait(deadline, lambda: self.alive_nodes() >= self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def _gcs_listening(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", int(self._port or 0))) == 0

    def _wait(self, deadline: float, ready: Callable[[], bool]) -> None:
        while not ready():
            exited = [proc.args for proc in self._procs if proc.poll() is not None]
            if exited:
                raise RayClusterError(f"a ray start process exited early: {exited}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RayClusterError(f"the Ray cluster was not up within {self.start_timeout_s} s\n{self.log_tail()}")
            time.sleep(0.25)

    def alive_nodes(self) -> int:
        """How many nodes the GCS reports alive (asked directly, so the caller is not left connected to Ray)."""
        # the GCS client Ray's own tools use (compiled: no stubs); ray is pinned to 2.60.0
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.core.generated.gcs_pb2 import GcsNodeInfo  # type: ignore[attr-defined]

        try:
            infos = GcsClient(address=self.address).get_all_node_info(timeout=2)
        except Exception:  # the GCS is still starting
            return 0
        return sum(1 for info in infos.values() if info.state == GcsNodeInfo.ALIVE)

    def log_tail(self) -> str:
        """The tail of every node's ``ray start`` output and of the session's non-empty error logs."""
        paths = sorted(self.temp_dir.glob("node-*.log")) + sorted(self.temp_dir.glob("session_latest/logs/*.err"))
        parts = [f"--- {path} ---\n{tail}" for path in paths if (tail := _tail(path))]
        return "\n".join(parts)

    def pids(self) -> list[int]:
        """Every live process of this cluster: the ``ray start`` processes, their descendants, the processes in
        their sessions and any process whose command line names the cluster's temp_dir (Ray daemonizes some)."""
        return sorted(pid for pid, _ in self._members())

    def _members(self) -> set[tuple[int, int]]:
        roots = {proc.pid for proc in self._procs}
        stats = {pid: stat for pid in _all_pids() if (stat := _stat(pid)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        marker, own_net = str(self.temp_dir), _net_namespace(os.getpid())
        found = {pid for pid, (_, sid, _) in stats.items() if sid in roots}
        found |= {pid for pid in roots if pid in stats}
        found |= {pid for pid in stats if marker in _cmdline(pid) and _net_namespace(pid) == own_net}
        stack = list(found)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        found -= _ancestors(os.getpid(), stats)
        return {(pid, stats[pid][2]) for pid in found if pid in stats}

    def stop(self) -> None:
        """Terminate every process of the cluster by PID, then check that none survives.

        SIGTERM goes to the ``ray start`` processes only: each drains its node and stops its own processes (about
        2.5 s). Signalling the GCS or raylets at the same time stalls that drain for its full 30 s. Whatever is
        left after ``stop_grace_s`` is SIGKILLed, and so are stragglers that name the temp_dir."""
        members = self._members()
        roots = {(proc.pid, started) for proc in self._procs for pid, started in members if pid == proc.pid}
        _signal(roots, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while _alive(members) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(5):
            _signal(_alive(members), signal.SIGKILL)
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
            members = self._members()
            if not members:
                break
            time.sleep(0.2)
        self._procs = []
        if members:
            raise RuntimeError(f"Ray processes survived stop(): {sorted(pid for pid, _ in members)}")

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _alive(members: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """The members still running (not zombies), with the same start time: a reused PID is not ours."""
    alive = set()
    for pid, started in members:
        stat = _stat(pid)
        if stat is not None and stat[2] == started:
            alive.add((pid, started))
    return alive


def _signal(members: Iterable[tuple[int, int]], signum: int) -> None:
    for pid, _ in _alive(members):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def actor_pid(actor: Any) -> int:
    """The OS process id of a Ray actor (a Serve replica too), asked of the actor itself through ``__ray_call__``."""
    import ray

    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


def serve_replica_pids(app: str, deployment: str) -> dict[str, int]:
    """The live replica actors of a Serve deployment (named ``SERVE_REPLICA::<app>#<deployment>#<id>`` in namespace
    "serve"), by actor name, with their process ids; a replica that dies meanwhile is left out. Needs ``ray.init``."""
    import ray
    from ray.exceptions import RayActorError

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    entries = cast(list[dict[str, str]], ray.util.list_named_actors(all_namespaces=True))
    pids = {}
    for name in (entry["name"] for entry in entries if entry["namespace"] == "serve"):
        if name.startswith(prefix):
            with contextlib.suppress(RayActorError, ValueError):  # died, or deregistered since listed
                pids[name] = actor_pid(ray.get_actor(name, namespace="serve"))
    return pids
