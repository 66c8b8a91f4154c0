"""A local run's Ray cluster listens on 127.0.0.1 only (docs/cluster.md, "Which commands
listen where")."""

from __future__ import annotations

import os

import psutil

from datamodels.orchestrate.executor import init_ray


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            found.append((conn.laddr.ip, conn.laddr.port, name))
    return found


def _loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or address.startswith("127.")


def test_a_local_cluster_listens_on_loopback_only():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_ADDRESS", None)
    variable = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    try:
        init_ray()

        @ray.remote
        def pid() -> int:
            return os.getpid()

        worker = ray.get(pid.remote())  # a worker is started and serving
        me = psutil.Process()
        pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
        assert worker in pids
        sockets = _listening(pids)
        names = {name for _, _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert [s for s in sockets if not _loopback(s[0])] == []
        assert ray._private.worker.global_worker.node.node_ip_address == "127.0.0.1"
        assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == variable  # restored
    finally:
        ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
