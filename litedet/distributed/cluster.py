"""Start or join the Ray cluster that ``stream`` and ``split`` run on: one place for both.

A cluster litedet starts itself (no ``address``) is **local**: every Ray process (GCS, raylet,
workers, agents, metrics servers) listens on 127.0.0.1 only, the dashboard and the agents'
Prometheus export are off unless asked for (``dashboard=True``, still bound to 127.0.0.1), and the
cluster is stopped when the run ends, when the driver exits (``atexit``) or gets SIGTERM/SIGINT
(a SIGTERM handler the application installed before is kept; otherwise Ray's turns SIGTERM into
``SystemExit``).
If the driver is SIGKILLed, Ray's reaper stops the GCS and raylet and a small watchdog
(``litedet.distributed.watchdog``) stops the agents and workers Ray would leave running for a
minute.

Joining a cluster the user started (``address="auto"`` or ``"HOST:PORT"``) changes nothing about
that cluster: its binding, dashboard and lifetime are the user's.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import signal
import threading
from typing import Any

LOGGER = logging.getLogger(__name__)

__all__ = ["LOCAL_HOST", "connect_ray", "shutdown_ray", "start_local_ray"]

LOCAL_HOST = "127.0.0.1"

# The watchdog of the local cluster this process started (one at a time, like ``ray.init``).
_watchdogs: list[Any] = []


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError("several workers need Ray: pip install 'litedet[distributed]' (or ray)") from None
    return ray


def start_local_ray(num_cpus: int, resources: dict[str, float] | None = None, dashboard: bool = False) -> Any:
    """Start a Ray head on this machine bound to 127.0.0.1 only; returns the ``ray`` module.

    ``dashboard=True`` also starts the dashboard (http://127.0.0.1:8265) and the Prometheus metrics
    export; both still listen on the loopback interface only.
    """
    ray = _import_ray()
    from ray._private import ray_constants  # noqa: PLC0415 - only to keep the node IP on loopback

    # Ray binds its gRPC and HTTP servers to the loopback interface only when the node IP is a
    # loopback address, but ray.init replaces ``_node_ip_address="127.0.0.1"`` with the routable IP
    # unless Ray believes clusters are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once at import
    # time, hence the module attribute). It is restored right after the head has started.
    import psutil

    driver = psutil.Process()
    before = {p.pid for p in driver.children()}
    # ray.init replaces the SIGTERM handler (with sys.exit); a handler the application set itself,
    # such as `litedet stream`'s "SIGTERM ends the run like Ctrl-C", is put back afterwards.
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigterm_handler = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            # "local": a new private instance even when another Ray runs on this machine (without
            # it ray.init joins the newest cluster in /tmp/ray and refuses num_cpus)
            address="local",
            num_cpus=num_cpus,
            resources=resources or None,
            include_dashboard=dashboard,
            dashboard_host=LOCAL_HOST,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address=LOCAL_HOST,
            _system_config={"enable_metrics_collection": bool(dashboard)},
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    if callable(sigterm_handler):
        signal.signal(signal.SIGTERM, sigterm_handler)
    from litedet.distributed.watchdog import spawn_watchdog

    _watchdogs.append(spawn_watchdog([p for p in driver.children() if p.pid not in before]))
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        shutdown_ray(ray)
        raise RuntimeError(
            f"Ray {ray.__version__} started on {node_ip}, not on {LOCAL_HOST}: litedet will not run a cluster open "
            "to the network; start one yourself (`ray start --head --node-ip-address 127.0.0.1`) and pass --address"
        )
    # Ray registers its own atexit shutdown and turns SIGTERM into SystemExit (so ``finally``
    # blocks and this hook run); the extra hook covers a driver that re-installed its handlers.
    atexit.unregister(shutdown_ray)  # once, however many runs this process makes
    atexit.register(shutdown_ray, ray)
    LOGGER.info("started a local Ray on %s (dashboard %s)", node_ip, "on" if dashboard else "off")
    return ray


def shutdown_ray(ray: Any) -> None:
    """``ray.shutdown()``, then release the watchdog of a cluster :func:`start_local_ray` started
    (it stops any process of that cluster still alive)."""
    if ray.is_initialized():
        ray.shutdown()
    while _watchdogs:
        watchdog = _watchdogs.pop()
        watchdog.stdin.close()
        try:
            watchdog.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a stuck watchdog must not keep the driver from exiting
            LOGGER.warning("the Ray watchdog (pid %d) did not stop in time", watchdog.pid)


def connect_ray(address: str | None, num_cpus: int, resources: dict[str, float] | None = None,
                dashboard: bool = False) -> tuple[Any, bool]:
    """Return ``(ray, started_here)``: reuse a connection this process already has, join the
    cluster at ``address``, or (``address=None``) start a local one with :func:`start_local_ray`.
    Whoever gets ``started_here=True`` calls ``ray.shutdown()`` when done."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    if address is None:
        return start_local_ray(num_cpus, resources, dashboard), True
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as err:
        raise ValueError(f"cannot reach a Ray cluster at --address {address!r}: {err}; start one with `ray start --head`") from None
    return ray, True
