"""The local Ray launcher's relay (connections accepted on its socket reach the service's port, both ways), and the Ray
serving command's refusal without a cluster."""

from __future__ import annotations

import socket
import threading

from service.local_ray import relay


def test_relay_carries_bytes_both_ways_until_stopped() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    port = upstream.getsockname()[1]

    def echo() -> None:
        connection, _ = upstream.accept()
        with connection:
            while data := connection.recv(1024):
                connection.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()
    relaying = threading.Thread(target=relay, args=(listener, port, stopping))
    relaying.start()
    with socket.create_connection(listener.getsockname(), timeout=5) as client:
        client.sendall(b"hello over the relay")
        received = b""
        while len(received) < 20:
            received += client.recv(1024)
    assert received == b"HELLO OVER THE RELAY"
    stopping.set()
    relaying.join(timeout=5)
    assert not relaying.is_alive()
    listener.close()
    upstream.close()


def test_serving_on_ray_without_a_cluster_exits_2_saying_what_is_missing(
        tmp_path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    from service.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--engine", "ray", "--index", str(tmp_path)]) == 2
    assert "--address HOST:PORT or the RAY_ADDRESS setting" in caplog.text
