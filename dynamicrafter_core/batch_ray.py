"""The batch's workers as Ray actors (`batch --ray`): one per GPU of the cluster (`num_gpus=1`), or per CPU worker
asked for where there is none, each loading the model once from a path every node reads. Ray is an optional extra
(`pip install "dynamicrafter-animate[ray]"`), imported here only.

Ray restarts an actor whose process died (killed, out of memory) and it loads the model again; the row it was on is
given to another actor by `batch.drive`, a bounded number of times.
"""
from __future__ import annotations

from typing import Optional

from .batch import ModelSpec, Settings, Worker
from .errors import InputError

INSTALL = 'pip install "dynamicrafter-animate[ray]"'


def require_ray():
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed here: {INSTALL} (or `pip install ray`), on the "
                         "driver and every node; or leave --ray out to run on this machine") from None
    return ray


def lost_worker_errors() -> tuple:
    """What a row's worker raising means the worker, not the row, failed: the actor died or was unreachable, or an
    exception other than the row's own (out of memory) came out of it."""
    return (require_ray().exceptions.RayError,)


class RayPool:
    """Ray actors running `Worker`, for `batch.drive`."""

    def __init__(self, spec: ModelSpec, settings: Settings, address: Optional[str] = None,
                 workers: Optional[int] = None):
        ray = require_ray()
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address)  # None: $RAY_ADDRESS, the cluster this job runs in, else a local Ray
        cluster = ray.cluster_resources()
        gpus = int(cluster.get("GPU", 0))
        n = workers or gpus or 1
        if gpus and n > gpus:  # the extra actors would wait for a GPU forever
            self.close()
            raise InputError(f"--workers {n}, but the Ray cluster has {gpus} GPU(s), one per worker; give --workers "
                             f"{gpus} or less, or leave it out")
        # a GPU each where the cluster has them (Ray sets CUDA_VISIBLE_DEVICES, so the actor's GPU is cuda:0), else
        # an equal share of the CPUs: Ray gives an actor as many torch threads, as the embedded workers get
        share = max(1, int(cluster.get("CPU", 1)) // n)
        resources = {"num_gpus": 1} if gpus else {"num_cpus": share}
        actor = ray.remote(Worker).options(max_restarts=-1, max_task_retries=0, **resources)
        self.workers = [actor.remote(spec, settings, "cuda" if gpus else "cpu") for _ in range(n)]
        try:  # a checkpoint that does not load is one error now, not one per row
            ray.get([w.ready.remote() for w in self.workers])
        except ray.exceptions.RayActorError as e:
            self.close()
            cause = getattr(e, "error_msg", None) or str(e)
            raise InputError(f"the Ray workers could not load the model: {cause.strip().splitlines()[-1]}") from None

    def submit(self, index: int, row):
        return self.workers[index].run.remote(row)

    def wait(self, pending):
        return self.ray.wait(pending, num_returns=1)[0][0]

    def get(self, ref):
        return self.ray.get(ref)

    def close(self) -> None:
        for w in self.workers if hasattr(self, "workers") else ():
            self.ray.kill(w)
        if self.started:
            self.ray.shutdown()
