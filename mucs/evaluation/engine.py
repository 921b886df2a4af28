"""Where the steps run: in this process one after the other (`SerialEngine`), or as Ray tasks
(`RayEngine`) on a local Ray instance started here or on a running cluster (`address`).

Both take `submit(fn, *args, name=...)` -> handle, where an argument may be another handle (the
dependency: Ray passes the finished value, the serial engine has it already), `ready(handles)` ->
the finished ones, and `get(handle)`. Every Ray task declares its CPUs (`threads`) and, on CUDA,
its GPU share, so Ray places concurrent retrains and attributions on different cores and devices.
"""
import os
from typing import Optional

from ..errors import MucsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # holds mucs/


class _Done:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class SerialEngine:
    """Runs each step when it is submitted, in this process."""
    name = "serial"

    def submit(self, fn, *args, name: str = ""):
        return _Done(fn(*[a.value if isinstance(a, _Done) else a for a in args]))

    def ready(self, handles) -> list:
        return list(handles)

    def get(self, handle):
        return handle.value

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "serial (this process)"


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayEngine:
    """Steps as Ray tasks. With no `address` and no Ray connection yet, starts a local Ray instance
    with `workers` × `threads` CPUs (default: every CPU) and shuts it down on close(); with
    `address` ("auto", "ray://host:10001", "host:6379") joins that cluster and ships the `mucs`
    package to it. A Ray connection made by the caller (ray.init before) is used as it is."""
    name = "ray"

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None, threads: int = 1,
                 device: str = "cpu", gpus_per_task: float = 1.0, start_attempts: int = 2):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")      # never report usage to anyone
        os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")   # busy machines start Ray's agents slowly
        try:
            import ray
        except ImportError as e:
            raise MucsError("the Ray engine needs Ray: pip install 'ray>=2.9' (or use --engine serial)") from e
        self.ray = ray
        self.threads = max(1, int(threads or 1))
        self.num_gpus = float(gpus_per_task) if str(device).startswith("cuda") else 0.0
        self._owned = False
        self._remote: dict = {}
        if not ray.is_initialized():
            kw: dict = dict(include_dashboard=False, log_to_driver=True)
            if address:
                ray.init(address=address, runtime_env=dict(py_modules=[os.path.join(ROOT, "mucs")]), **kw)
            else:
                if workers is not None and workers < 1:
                    raise MucsError("--workers must be ≥ 1")
                num_cpus = None if workers is None else int(workers) * self.threads
                path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
                self._start_local(start_attempts, num_cpus=num_cpus, runtime_env=dict(env_vars=dict(PYTHONPATH=path)), **kw)
            self._owned = True
        if self.num_gpus and not ray.cluster_resources().get("GPU"):
            raise MucsError("--device cuda on Ray, but the Ray cluster has no GPU")

    def _start_local(self, attempts: int = 2, **kw) -> None:
        """ray.init for a local instance, tried `attempts` times: on a heavily loaded machine the raylet
        can give up waiting for its metrics agent (Ray 2.60 waits about 15 s; Ray then raises a plain
        Exception); a later start finds the files in the page cache and is faster."""
        for attempt in range(1, attempts + 1):
            try:
                self.ray.init(**kw)
                return
            except Exception as e:      # noqa: BLE001 - Ray reports a failed node start as Exception
                self.ray.shutdown()
                if attempt == attempts:
                    raise MucsError(f"could not start a local Ray instance ({str(e).splitlines()[0][:200]}); "
                                    "try again when the machine is less busy, or use --engine serial") from e

    def submit(self, fn, *args, name: str = ""):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn)
        opts: dict = dict(num_cpus=self.threads, num_gpus=self.num_gpus)
        if name:
            opts["name"] = name
        return self._remote[fn].options(**opts).remote(*args)

    def ready(self, handles) -> list:
        handles = list(handles)
        if not handles:
            return []
        done, _ = self.ray.wait(handles, num_returns=1)
        more, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        return list({id(h): h for h in done + more}.values())

    def get(self, handle):
        return self.ray.get(handle)

    def close(self) -> None:
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()
        self._owned = False

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        return (f"ray ({res.get('CPU', 0):.0f} CPUs, {res.get('GPU', 0):.0f} GPUs; each task {self.threads} CPU"
                + (f", {self.num_gpus:g} GPU" if self.num_gpus else "") + ")")


def make_engine(kind: str = "auto", address: Optional[str] = None, workers: Optional[int] = None,
                threads: Optional[int] = None, device: str = "cpu", gpus_per_task: float = 1.0):
    """'serial', 'ray', or 'auto' (Ray when installed or when an address is given, else serial)."""
    if kind == "auto":
        kind = "ray" if (address or ray_available()) else "serial"
    if kind == "serial":
        if address:
            raise MucsError("--address needs the Ray engine (--engine ray)")
        return SerialEngine()
    if kind == "ray":
        return RayEngine(address=address, workers=workers, threads=threads or 1, device=device,
                         gpus_per_task=gpus_per_task)
    raise MucsError(f"unknown engine {kind!r}: 'auto', 'ray' or 'serial'")
