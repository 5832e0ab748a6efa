"""What a job may use of its Ray cluster, and how it asks for it.

A cluster under an autoscaler is often the head alone when a job starts (worker types at
``min_workers: 0``), so a job never sizes itself from the nodes that are up. It takes a bound
(:class:`Limits`): ``--max-cpus``/``--max-gpus``, else the most the autoscaler may launch
(Ray's cluster config where the platform reports one, else the config of the autoscaler Ray
runs on the head), else what is up. Its parallel work runs in actor pools of at most the bound
that *start* at the size the work needs (:func:`actor_pool`): the pending actors are the
demand the autoscaler launches nodes for, in one round. A Ray Train worker group or a GPU is
waited for up front, with a timeout (:func:`wait_for`). Nothing here outlives the job: pools
end with their dataset, the placement group of a wait is removed at once, and the
autoscaler's idle timeout gives the nodes back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings

from pipeline.errors import ClusterError
from pipeline.retry import RetryPolicy

log = logging.getLogger(__name__)

# What has no upper bound (a node type at max_count -1 in Ray's cluster config) counts as this
# many nodes, and a plan is made for at most this many CPUs: enough for any plan here, few
# enough to size partitions and blocks from.
_UNBOUNDED = 1000


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a job may ask of its cluster, as given on the command line: ``max_cpus`` and
    ``max_gpus`` (None: what the autoscaler may bring up, else what is up), and ``wait_s``,
    how long to wait for nodes a stage cannot start without (GPUs, Train workers)."""

    max_cpus: int | None = None
    max_gpus: int | None = None
    wait_s: float = 900.0

    def limits(self) -> "Limits":
        """Resolved against the cluster this process is connected to."""
        return cluster_limits(self.max_cpus, self.max_gpus)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a catalog run (extract, score, tag) runs: on the Ray cluster at ``address`` (None:
    ``RAY_ADDRESS``, else embedded local Ray), within ``bounds``, ``songs_per_window`` songs
    at a time (None: :func:`plan_window`), committing at least every ``commit_every_s``
    seconds; a song whose last try failed for a reason that may pass is tried again when
    ``retries`` says it is due, every failed song now with ``retry_errors``."""

    address: str | None = None
    bounds: Bounds = Bounds()
    songs_per_window: int | None = None
    commit_every_s: float = 60.0
    retry_errors: bool = False
    retries: RetryPolicy = RetryPolicy()


def connect(address: str | None, bounds: Bounds, *, stage: str, gpus: int = 0) -> Limits:
    """Ray started or joined, and the most of it the ``stage`` may use, applied to Ray Data;
    a cluster that can never give the ``gpus`` it needs stops the run here, before any
    work."""
    from pipeline.runtime.session import init_ray

    init_ray(address)
    limits = bounds.limits()
    if gpus:
        check_gpus(limits, gpus, purpose=f"{stage} --use-gpu")
    apply_to_data(limits)
    log.info("%s: %s", stage, limits.describe())
    return limits


@dataclasses.dataclass(frozen=True)
class Limits:
    """The most a job's work may use: ``cpus`` for CPU work (tasks and actors; the CPUs of
    CPU-only nodes when the cluster has any, since GPU nodes' CPUs feed their GPUs), ``gpus``
    for GPU work; ``source`` says where they come from."""

    cpus: int
    gpus: int
    source: str
    up_cpus: int = 0  # of those, on the nodes up when the job started

    @property
    def grows(self) -> bool:
        """Whether the cluster must grow to give the job its CPUs."""
        return self.cpus > self.up_cpus

    def describe(self) -> str:
        return f"up to {self.cpus} CPU(s) and {self.gpus} GPU(s) ({self.source})"


def node_type_limits(node_types: dict, max_workers: int | None = None) -> tuple[int, int]:
    """(CPUs for CPU work, GPUs) an autoscaler with these node types may bring up: each
    type's ``resources`` times its ``max_workers`` (all of the cluster's ``max_workers`` when
    a type has none), the head's own (``head: True``) once. No Ray: unit-tested."""
    cpu_only = gpu_nodes_cpus = gpus = 0
    for node_type in node_types.values():
        resources = node_type.get("resources") or {}
        count = 1 if node_type.get("head") else node_type.get("max_workers", max_workers or 0)
        count = _UNBOUNDED if count is None or count < 0 else count
        if max_workers is not None and not node_type.get("head"):
            count = min(count, max_workers)
        cpus, node_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        gpus += count * node_gpus
        if node_gpus:
            gpu_nodes_cpus += count * cpus
        else:
            cpu_only += count * cpus
    return int(cpu_only or gpu_nodes_cpus), int(gpus)


def cluster_limits(max_cpus: int | None = None, max_gpus: int | None = None) -> Limits:
    """The job's :class:`Limits`: the flags where given, else what the autoscaler may bring
    up (never less than what is up now), else what is up now (at least one CPU)."""
    up_cpus, up_gpus = _up_now()
    found = _autoscaler_limits()
    if found is not None:
        (cpus, gpus), source = found
        cpus, gpus = max(cpus, up_cpus), max(gpus, up_gpus)
    else:
        cpus, gpus, source = up_cpus, up_gpus, "the nodes up now"
    given = [name for name, value in (("--max-cpus", max_cpus), ("--max-gpus", max_gpus))
             if value is not None]
    if given:
        source = " and ".join(given) + ("" if len(given) == 2 else f", else {source}")
    return Limits(cpus=max(1, max_cpus if max_cpus is not None else cpus),
                  gpus=max_gpus if max_gpus is not None else gpus, source=source,
                  up_cpus=up_cpus)


def _up_now() -> tuple[int, int]:
    """(CPUs for CPU work, GPUs) of the nodes alive now."""
    import ray

    # each node counted once, as the head is
    return node_type_limits({node["NodeID"]: {"resources": node["Resources"], "head": True}
                             for node in ray.nodes() if node["Alive"]})


def _autoscaler_limits() -> tuple[tuple[int, int], str] | None:
    """((CPUs, GPUs), source) of the autoscaler's node types, or None where Ray shows none."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        types = {group.name or str(i): {"resources": dict(group.resources),
                                        "max_workers": group.max_count}
                 for i, group in enumerate(config.node_group_configs)}
        return node_type_limits(types), "Ray's cluster config"
    path = _monitor_config_path()
    if path is None:
        return None
    try:
        import yaml

        with open(path) as f:
            config = yaml.safe_load(f)
        types = dict(config["available_node_types"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        log.warning("cluster: cannot read the autoscaler's config %s (%s)", path, e)
        return None
    head = config.get("head_node_type")
    if head in types:
        types[head] = {**types[head], "head": True}
    return node_type_limits(types, config.get("max_workers")), f"the autoscaler's {path}"


def _monitor_config_path() -> str | None:
    """The config file of the autoscaler Ray runs for this cluster, when it runs on this node
    (`ray up` starts the head with ``--autoscaling-config=~/ray_bootstrap_config.yaml``, and a
    job's driver runs on the head): its monitor process, found by the cluster's GCS address."""
    import psutil
    import ray

    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    for process in psutil.process_iter(["cmdline"]):
        args = process.info["cmdline"] or []
        if gcs in args and any(a.endswith("autoscaler/_private/monitor.py") for a in args):
            for a in args:
                if a.startswith("--autoscaling-config="):
                    return os.path.expanduser(a.split("=", 1)[1])
    return None


# an actor of a pool lost with its worker or node is started again 3 times at most, and its
# batch waits for it: Ray counts a try at each call refused while the actor restarts, which uses
# up any small max_task_retries before a model has loaded (ray-project/ray#44719). Deaths, not
# calls, bound a run.
ACTOR_RETRIES = {"max_restarts": 3, "max_task_retries": -1}


def map_bounded(ds, fn, *, retries: dict, **named):
    """``ds.map_batches(fn, **named)`` with bounds on Ray's retries (``retries``:
    ``max_retries``/``retry_exceptions`` for tasks, :data:`ACTOR_RETRIES` for actors).

    Ray Data retries a task and restarts an actor without limit by default, and Ray 2.60 takes
    bounds only through ``**ray_remote_args``, deprecated for Ray 2.64 with no named parameter
    to replace them yet. A run that never ends is worse than a deprecated argument, so they
    are passed here, the only place, and its deprecation warning silenced by its message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **named, **retries)


def actor_pool(most: int, units: int):
    """An autoscaling Ray Data actor pool for ``units`` pieces of work (blocks): at least one
    actor, at most ``most``, starting with as many as the work can use. Started actors wait
    for nodes as pending demand, which the autoscaler launches together; a pool that starts at
    one grows a step at a time, each step after the previous step's nodes are up."""
    import ray

    most = max(1, most)
    return ray.data.ActorPoolStrategy(min_size=1, max_size=most,
                                      initial_size=max(1, min(most, units)))


def apply_to_data(limits: Limits) -> None:
    """Bound Ray Data's own use and its requests to the autoscaler by ``limits``."""
    from ray.data import DataContext, ExecutionResources

    options = DataContext.get_current().execution_options
    options.resource_limits = ExecutionResources(cpu=limits.cpus, gpu=limits.gpus)


def check_gpus(limits: Limits, gpus: float, *, purpose: str) -> None:
    """ClusterError, in one line, when ``limits`` say the cluster can never hold ``gpus``."""
    if gpus > limits.gpus:
        raise ClusterError(f"{purpose} needs {gpus:g} GPU(s) and this cluster can have "
                           f"{limits.gpus} ({limits.source}); add a GPU worker type to the "
                           f"cluster, pass --max-gpus where its autoscaler has GPUs a job "
                           f"cannot see (KubeRay), or drop --use-gpu")


def wait_for(bundles: list[dict], *, purpose: str, timeout_s: float,
             limits: Limits | None = None) -> dict:
    """Wait until the cluster holds ``bundles`` (e.g. ``[{"GPU": 1}] * 2``) at once, asking the
    autoscaler for them by a placement group that is removed as soon as it is placed (the
    work's own tasks, actors or Train workers then take the nodes). Refused at once with one
    line when ``limits`` say the cluster can never hold them; a ClusterError after
    ``timeout_s``. With GPUs: ``gpus_seen``, the CUDA devices TensorFlow finds on the first
    GPU node (0 for a GPU *resource* without a device: the work then runs on its CPU)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = [b for b in ({k: v for k, v in b.items() if v} for b in bundles) if b]
    if not bundles:  # nothing to wait for (a Train worker that reserves nothing)
        return {}
    gpus = sum(b.get("GPU", 0) for b in bundles)
    if limits is not None:
        check_gpus(limits, gpus, purpose=purpose)
    started = time.monotonic()
    group = placement_group(bundles, strategy="PACK")
    try:
        ready, _ = ray.wait([group.ready()], timeout=timeout_s)
        if not ready:
            raise ClusterError(f"{purpose}: the cluster did not provide {_bundles(bundles)} "
                               f"within {timeout_s:.0f} s; check `ray status` for the "
                               f"autoscaler's launches (or raise the timeout)")
        waited = time.monotonic() - started
        if waited > 1:
            log.info("%s: the cluster provided %s after %.0f s", purpose, _bundles(bundles),
                     waited)
        found = {"waited_s": waited}
        if gpus:
            gpu_bundle = next(i for i, b in enumerate(bundles) if b.get("GPU"))
            probe = ray.remote(num_cpus=0, num_gpus=bundles[gpu_bundle]["GPU"],
                               max_retries=1)(_cuda_devices).options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=gpu_bundle))
            found["gpus_seen"] = ray.get(probe.remote(), timeout=timeout_s)
            if not found["gpus_seen"]:
                log.warning("%s: the GPU node shows TensorFlow no CUDA device (a CPU build of "
                            "TensorFlow, or no driver): the GPU work runs on its CPU", purpose)
        return found
    finally:
        remove_placement_group(group)


def _cuda_devices() -> int:
    """Ray task on a GPU bundle: the GPUs TensorFlow sees there."""
    from pipeline.models.keras import select_legacy_keras

    select_legacy_keras()
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def gpus_seen_here(purpose: str) -> int:
    """In a worker or actor given a GPU: the CUDA devices TensorFlow sees (memory growth on
    for each), with a warning when it sees none and the work runs on the CPU."""
    from pipeline.models.keras import tf_keras

    tf_keras()  # before anything imports TensorFlow with another Keras
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU")
    for gpu in devices:
        tf.config.experimental.set_memory_growth(gpu, True)
    if not devices:
        log.warning("%s: this node has a GPU resource but TensorFlow sees no CUDA device; "
                    "running on the CPU", purpose)
    return len(devices)


def _bundles(bundles: list[dict]) -> str:
    counts: dict[str, int] = {}
    for b in bundles:
        key = ", ".join(f"{k} {v:g}" for k, v in sorted(b.items()))
        counts[key] = counts.get(key, 0) + 1
    return " + ".join(f"{n} x {{{k}}}" if n > 1 else f"{{{k}}}" for k, n in counts.items())


def plan_batches(n_songs: int, n_cpus: int, *, max_batch: int = 32) -> int:
    """Songs per task: at least 4 tasks per CPU for balance, at most ``max_batch`` songs
    each, in a number of tasks that fills every CPU in each round (300 songs on 2 CPUs: 10
    tasks of 30, not 9 of 32 and a last one of 12 that runs alone)."""
    tasks = max(4 * n_cpus, math.ceil(n_songs / max_batch))
    tasks = math.ceil(tasks / n_cpus) * n_cpus
    return max(1, math.ceil(n_songs / tasks))


# A window holds at least this many songs, and 16 tasks (or blocks) per CPU the job may use
_WINDOW_SONGS = 200_000
_WINDOW_TASKS_PER_CPU = 16


def plan_window(limits: Limits, songs_per_task: int) -> int:
    """Songs per window of a run (:func:`windows`): 200k, or 16 tasks of ``songs_per_task``
    per CPU the job may use where that is more (so that the end of a window, where CPUs run
    out of work, stays a small part of it)."""
    return max(_WINDOW_SONGS, _WINDOW_TASKS_PER_CPU * plan_size(limits) * songs_per_task)


def windows(todo, n: int, size: int):
    """``todo`` (materialized, ``n`` rows) as materialized datasets of ``size`` rows at most,
    one after the other, the memory each left behind in the driver handed back to the
    operating system before the next.

    The driver's memory grows with the tasks of one execution (Ray's records of each task
    and block, ~0.35 KB a song on extraction; what Python holds is a few MB) and is freed
    when the execution ends, but malloc keeps the pages: 8 windows of 10k songs ended 12 MiB
    above where they began, one run of 80k songs 35-40 MiB."""
    if n <= size:
        yield todo
        return
    parts = todo.split_at_indices(list(range(size, n, size)))
    del todo
    while parts:
        yield parts.pop(0)
        release_memory()


def release_memory() -> None:
    """Hand the memory freed in this process back to the operating system (glibc's
    malloc_trim; nothing elsewhere)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def plan_size(limits: Limits) -> int:
    """CPUs a plan that fixes a number up front (partitions, task sizes) is made for."""
    return max(1, min(limits.cpus, _UNBOUNDED))

