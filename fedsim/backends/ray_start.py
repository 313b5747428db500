"""Starting Ray for fedsim's Ray backend: in a thread of its own, and as early as possible.

Ray's start (``ray.init``: the GCS, the raylet and its agents, the driver's connection) takes
2.5-4.5 s on 2 cores, mostly spent waiting for other processes. ``fedsim run`` therefore
begins it before it even loads the experiment (``start_early``), which imports torch,
Flower and the methods for 3-4 s; the Ray backend's grid then takes it over
(``take_start``). Without an early start, the grid begins one itself, still in the
background of the driver's round 0.

The thread that calls ``ray.init`` stays alive, parked, until Ray is stopped: Ray ties its
daemons to the thread that spawned them (``PR_SET_PDEATHSIG``), so they would die with it.
This module imports neither torch nor Flower, so that nothing slows the early start.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading

from fedsim.errors import FedsimError

log = logging.getLogger("fedsim")
RAY_SHARE_VAR = "FEDSIM_RAY_SHARE"  # N: a local Ray takes 1/N of the CPUs (sweeps set it)


class RayBackendError(FedsimError):
    """Ray could not start, or no worker fits the resources asked for."""


def quiet_ray_environment() -> None:
    """Before Ray starts: no telemetry, no per-line dedup, no accelerator-variable notice."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def ray_init_args() -> dict:
    """Settings of a local Ray that fedsim starts: quiet, always a new cluster of this
    process (``address="local"``: never another run's, which may stop at any time), in a
    temp dir of its own."""
    root = os.environ.get("FEDSIM_RAY_TMP", tempfile.gettempdir())
    return {
        "address": "local",
        "logging_level": "ERROR",
        "log_to_driver": False,
        "include_dashboard": False,
        "_temp_dir": f"{root}/fedsim-ray-{os.getpid()}",
    }


def usable_cpus() -> int:
    """The CPUs this process may use, for the local Ray's size: its affinity mask (taskset,
    a SLURM or cpuset allocation) and its container's CPU quota (cgroups, by Ray's own
    reading), whichever is fewer. ``os.cpu_count()`` counts the whole machine: on a 4-CPU
    allocation of a 64-core node it would start 64 CPUs' worth of workers. With
    ``FEDSIM_RAY_SHARE=N`` (``fedsim sweep --jobs N`` sets it for its runs), a 1/N share."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    try:
        from ray._private.utils import get_num_cpus

        quota = int(get_num_cpus(override_docker_cpu_warning=True))
    except Exception:  # Ray's internals differ: the affinity mask alone
        quota = 0
    count = min(count, quota) if quota > 0 else count
    share = os.environ.get(RAY_SHARE_VAR, "")
    return max(1, count // int(share) if share.isdigit() and int(share) > 0 else count)


class RayStart:
    """``ray.init`` (a new lean local head, or joining ``address``) in a background thread."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None  # "" (the config's default) is a local Ray too
        self.temp_dir: str | None = None  # set when this start made a local Ray
        self.joined = False  # this start connected the driver to a running cluster
        self.error: BaseException | None = None
        self._resources = (0.0, 0.0)
        self._up = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedsim-ray", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._init()
        except BaseException as exc:  # raised in the driver's thread, by wait()
            self.error = exc
        finally:
            self._up.set()
        if self.temp_dir is not None:
            self._release.wait()

    def _init(self) -> None:
        try:
            import ray

            from fedsim.backends.ray_lean import lean_local_head

            if not ray.is_initialized():
                quiet_ray_environment()
                args = ray_init_args()
                if self.address:  # a cluster someone else runs: join it
                    check_reachable(self.address)
                    args = {k: v for k, v in args.items() if k not in ("_temp_dir", "address")}
                    ray.init(address=self.address, **args)
                    self.joined = True
                else:
                    self.temp_dir = args["_temp_dir"]
                    with lean_local_head():
                        ray.init(num_cpus=usable_cpus(), **args)
            resources = ray.cluster_resources()
            self._resources = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
        except RayBackendError:
            raise
        except Exception as exc:
            raise RayBackendError(
                f"run.backend = ray: Ray could not start ({type(exc).__name__}: {exc})"
            ) from exc

    def wait(self) -> tuple[float, float]:
        """Block until Ray is up; its (CPUs, GPUs), or the error of its start."""
        self._up.wait()
        if self.error is not None:
            raise self.error
        return self._resources

    def stop(self) -> None:
        """Stop the local Ray this started, in the background (it waits about a second for
        Ray's processes to exit); ``wait_for_ray_stop`` joins it. A joined cluster is left
        running, the driver disconnected from it (the next run may want another one). A Ray
        the driver was already connected to (the user's own ``ray.init``) is left as it is.
        Before Ray is up, the stop happens once it is."""
        global _STOPPING
        wait_for_ray_stop()
        _STOPPING = threading.Thread(target=self._stop, name="fedsim-ray-stop")
        _STOPPING.start()

    def _stop(self) -> None:
        self._up.wait()
        try:
            if self.temp_dir is not None or self.joined:
                import ray

                if ray.is_initialized():
                    ray.shutdown()
        finally:
            self._release.set()  # the thread that started Ray may end now
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise RayBackendError at once if nothing listens at ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``): ``ray.init`` would retry such an address for minutes, silently.
    Addresses without a port (``auto``, a bare host) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayBackendError(
            f"run.ray_address = {address!r}: nothing answers at {host}:{port} "
            f"({exc.strerror or type(exc).__name__}); start the cluster there "
            "(ray start --head) or fix the address"
        ) from exc


_STOPPING: threading.Thread | None = None  # a local Ray being stopped
_EARLY: RayStart | None = None  # begun by start_early, not yet taken


def wait_for_ray_stop() -> None:
    """Block until the last local Ray fedsim stopped has exited (if one is stopping)."""
    global _STOPPING
    if _STOPPING is not None:
        _STOPPING.join()
        _STOPPING = None


def start_early(address: str | None) -> None:
    """Begin Ray's start now, for a Ray-backend run this process is about to make."""
    global _EARLY
    if _EARLY is None:
        wait_for_ray_stop()
        _EARLY = RayStart(address)


def take_start(address: str | None) -> RayStart:
    """The early start, if one was begun for ``address``; else a new one (an early start
    for another address is stopped first)."""
    global _EARLY
    early, _EARLY = _EARLY, None
    if early is not None and early.address == (address or None):
        return early
    if early is not None:
        early.stop()
    wait_for_ray_stop()
    return RayStart(address)


def cancel_early() -> None:
    """Stop an early start no run took (the experiment was invalid, its run directory
    locked...): in the background, as ``stop``."""
    global _EARLY
    early, _EARLY = _EARLY, None
    if early is not None:
        early.stop()
