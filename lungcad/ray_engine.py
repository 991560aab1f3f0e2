"""``detect(..., engine=Ray(...))``: the batch of :func:`lungcad.api.detect` on Ray Data.

One scan is one row (and one block) of a Ray dataset:

1. a CPU task reads the scan and computes the lung mask (:meth:`ScanJob.load`);
2. an actor that holds the networks (``map_batches`` with a callable class, a pool of
   actors, ``num_gpus`` each) runs the rest of the pipeline and renders the crops and the
   other per-scan files that ``--outputs`` chooses, as bytes (:meth:`ScanJob.networks`);
3. the driver writes each scan's outputs as it arrives (atomically, the same files as the
   serial engine) and finalizes the tables and ``run.json``, whose ``engine`` entry says which
   node of the cluster read how many scans and ran the networks on how many
   (``engine.nodes``).

A scan that fails is returned as data (an error row), never raised, so that one bad scan
does not fail the Ray job; a worker that dies (killed, out of memory) loses only its own
scan, which is tried again on a new actor at most ``retries`` times (default
:data:`lungcad.engines.SCAN_RETRIES`) and then gets an error row too.  (Ray Data by itself would send a scan
that kills every actor it meets to a new actor without end.)  Ray is an optional extra: ``pip install 'lungcad[ray]'``.  The options are those of
:class:`lungcad.engines.Ray`, checked when it is made; this module uses only the public API of
:class:`~lungcad.pipeline.Pipeline` and of :mod:`lungcad.api` and :mod:`lungcad.scan_job`.
"""
from __future__ import annotations

import gc
import logging
import os
import pickle
from typing import Any

from lungcad.engines import Ray
from lungcad.errors import LungcadError

INSTALL_HINT = "pip install 'lungcad[ray]'"
#: environment variables that the workers need to behave like the driver
_ENV_PASSED = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS", "RAY_BACKEND_LOG_LEVEL")


class RayNotInstalled(LungcadError):
    """``--engine ray`` without the ``ray`` package."""

    def __init__(self, detail: str = ""):
        super().__init__(f"the Ray engine needs Ray, which is not installed{f' ({detail})' if detail else ''}. "
                         f"Install it with: {INSTALL_HINT}")


def import_ray():
    """``ray`` and ``ray.data``, or :class:`RayNotInstalled`."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayNotInstalled(str(e)) from None
    return ray


# ------------------------------------------------------------------ the work, as Ray functions

def _dump(obj) -> bytes:
    return pickle.dumps(obj, protocol=5)


def _error_payload(job, exc) -> bytes:
    return _dump(("error", job.error(exc)))


def _node_id() -> str:
    """The Ray node this task or actor runs on (hex)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _load(row: dict[str, Any], *, pipe_blob: bytes) -> dict[str, Any]:
    """CPU task: read one scan and compute its lung mask (:meth:`ScanJob.load`)."""
    from lungcad.scan_job import ScanJob

    job = ScanJob(pickle.loads(row["series"]))
    try:
        volume, prep = job.load(pickle.loads(pipe_blob))
        payload = _dump(("loaded", job.series, volume, prep))
    except Exception as e:  # noqa: BLE001  a scan's failure is data, not a failed Ray job
        payload = _error_payload(job, e)
    return {"i": row["i"], "payload": payload, "read_node": _node_id()}


class _Networks:
    """Actor holding the networks: the rest of :meth:`Pipeline.run`, and the crops.

    Ray Data replaces an actor that died and sends its scan to another one, without limit;
    ``attempts`` (an :func:`_attempt_counter`) counts the tries of each scan across actors,
    and a scan already tried ``retries + 1`` times gets an error row instead of a new try.
    ``files`` (:func:`weight_files`, or a Ray reference to them) are the weight files that
    travel with the job.  Its process keeps freed memory for the next scan's arrays, as the
    ``lungcad`` command does (:func:`lungcad.memory.reuse_freed_memory`)."""

    def __init__(self, pipe_blob: bytes, attempts=None, retries: int = -1, files=None, outputs=None):
        from lungcad.memory import reuse_freed_memory

        reuse_freed_memory()
        self.pipe = pickle.loads(pipe_blob)
        self.outputs = outputs
        if files is not None:
            import ray

            if isinstance(files, ray.ObjectRef):
                files = ray.get(files)
            load_shipped_weights(self.pipe, files)
        self.pipe.load_models()
        self.attempts, self.retries = attempts, retries

    def _tries(self, i: int) -> int:
        import ray

        return int(ray.get(self.attempts.next.remote(i))) if self.attempts is not None else 1

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from lungcad.scan_job import ScanJob

        out, nodes, here = [], [], _node_id()
        for i, payload in zip(batch["i"], batch["payload"]):
            item = pickle.loads(payload)
            loaded = item[0] == "loaded"
            if loaded:
                _, series, volume, prep = item
                job = ScanJob(series, outputs=self.outputs)
                tries = self._tries(int(i))
                try:
                    if self.retries >= 0 and tries > self.retries + 1:
                        raise LungcadError(worker_died_message(series.path, tries - 1))
                    result, crops, per_scan = job.networks(self.pipe, volume, prep)
                    payload = _dump(("done", series, result, crops, per_scan))
                except Exception as e:  # noqa: BLE001
                    payload = _error_payload(job, e)
                item = volume = prep = None
                gc.collect()
            nodes.append(here if loaded else "")
            out.append(payload)
        return {"i": batch["i"], "payload": out, "read_node": batch["read_node"], "networks_node": nodes}


def weight_files(config, *, skip=()) -> dict[str, tuple[str, bytes]]:
    """The bytes of the pipeline's weight files that are not shipped with lungcad, for the
    workers, so that no node of the cluster needs to see the driver's files:
    ``{"segmenter" | "classifier": (file name, bytes)}``, less the roles in ``skip`` (networks
    given to the Pipeline directly, which travel with it)."""
    out = {}
    for role, ref in (("segmenter", config.candidates.weights), ("classifier", config.fpr.weights)):
        if role in skip or ref.startswith("builtin:"):
            continue
        path = config.resolve_weights(ref)
        try:
            out[role] = (path.name, path.read_bytes())
        except OSError as e:
            raise LungcadError(f"{path}: cannot read the {role} weights: {e.strerror or e}") from None
    return out


def load_shipped_weights(pipe, files: dict[str, tuple[str, bytes]]) -> None:
    """Load the networks of :func:`weight_files` into ``pipe`` from a private temporary copy
    (the pipeline's config, and so its hash in the outputs, stays as the driver had it)."""
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="lungcad-weights-"))
    try:
        paths = {}
        for role, (name, data) in files.items():
            paths[role] = tmp / name
            paths[role].write_bytes(data)
        pipe.load_models(**paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def worker_died_message(path, times: int | None = None) -> str:
    n = f" {times} time(s)" if times else ""
    return (f"{path}: the Ray worker running this scan died{n} (killed, or out of memory); "
            f"see the Ray logs")


def _attempt_counter(ray):
    """A small actor that counts the tries of each scan (row index -> count)."""

    @ray.remote(num_cpus=0)
    class Attempts:
        def __init__(self):
            self.n: dict[int, int] = {}

        def next(self, i: int) -> int:
            self.n[i] = self.n.get(i, 0) + 1
            return self.n[i]

    return Attempts.remote()


# ------------------------------------------------------------------ the driver

def ray_init(ray, address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at ``address`` (``"auto"``: the one this node belongs to), or
    start a local one.  False when Ray was already initialized (the caller keeps it)."""
    if ray.is_initialized():
        return False
    # Ray's C++ core logs at ERROR level things that are not errors of this run (an actor's
    # constructor arguments in the object store); a scan that a worker lost still gets its
    # error row.  Set RAY_BACKEND_LOG_LEVEL yourself to see them.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    env = {k: os.environ[k] for k in _ENV_PASSED if k in os.environ}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "logging_level": logging.ERROR}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    # Ray Data's INFO lines (plan, "execution finished") would go to the driver's stderr,
    # which a batch job keeps for its own one-line errors
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise LungcadError(f"cannot connect to the Ray cluster at {address!r}: {e}") from None
    return True


def run_batch(batch, engine: Ray, counts: dict[str, int], info: dict[str, Any] | None = None) -> None:
    """Run the pending scans of ``batch`` (:func:`lungcad.api.start_batch`) on Ray, as
    ``engine`` says; ``counts`` (``done``, ``failed``) is kept up to date as each scan ends, so
    that a batch stopped midway still counts what it finished.  ``info`` (the ``engine`` entry
    of ``run.json``) gets ``nodes``: :func:`node_table`.  :func:`lungcad.api.detect` calls it
    and writes the tables afterwards, whatever happened here."""
    ray = import_ray()
    pipe = batch.pipe
    # the pipeline as the workers get it: before any model is loaded here (models given to
    # Pipeline(...) directly travel with it; the shipped weights are on every node with lungcad;
    # other weight files travel as bytes, so that no node needs the driver's files)
    given = pipe.networks_held()
    pipe_blob = _dump(pipe)
    pipe.load_models()        # a missing or unfit weights file: one error, before Ray starts
    files = weight_files(pipe.config, skip=given)
    started = ray_init(ray, engine.address, num_cpus=engine.num_cpus)
    work: dict[str, dict[str, int]] = {}
    try:
        _run(ray, batch, pipe_blob, files, engine=engine, counts=counts, work=work)
    finally:
        if info is not None:
            info["nodes"] = node_table(ray, work)
        if started:
            ray.shutdown()


def node_table(ray, work: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """``run.json``'s ``engine.nodes``: per node that did work, its id, host name and IP, the
    scans it read and lung-masked (``scans_read``) and those it ran the networks on
    (``scans_networks``)."""
    try:
        known = {n["NodeID"]: n for n in ray.nodes()}
    except Exception:  # noqa: BLE001  the table is information: without Ray's node list, the ids alone
        known = {}
    return [{"node_id": node, "hostname": known.get(node, {}).get("NodeManagerHostname", ""),
             "ip": known.get(node, {}).get("NodeManagerAddress", ""),
             "scans_read": n.get("read", 0), "scans_networks": n.get("networks", 0)}
            for node, n in sorted(work.items())]


def _run(ray, batch, pipe_blob, files, *, engine: Ray, counts: dict[str, int], work: dict[str, dict[str, int]]):
    from ray.data import DataContext

    from lungcad.scan_job import ScanJob, done_line, logger, report_error

    out, pending = batch.out, batch.pending
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = batch.options.progress
    # a block (= one scan) whose worker died is left out instead of failing the job; the
    # driver gives that scan an error row below
    ctx.max_errored_blocks = len(pending)
    items = [{"i": i, "series": _dump(s)} for i, s in enumerate(pending)]
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
    except TypeError:  # Ray < 2.10
        ds = ray.data.from_items(items, parallelism=len(items))
    # reading + lung mask: CPU tasks.  max_calls=0 is Ray's default for tasks (a worker
    # process is reused without limit); said explicitly, it also keeps Ray Data from fusing
    # these tasks into the actors below (it fuses only operators with equal remote args).
    ds = ds.map(_load, fn_kwargs={"pipe_blob": pipe_blob}, num_cpus=1, max_calls=0)
    # the networks: a pool of `actors` actors, each holding the models (and its GPUs).  Ray
    # Data restarts a dead actor and retries its task without limit: the counter stops a
    # scan that kills every actor it meets
    files_ref = ray.put(files) if files else None
    ds = ds.map_batches(_Networks, fn_constructor_args=(pipe_blob, _attempt_counter(ray), engine.retries, files_ref,
                                                        batch.options.outputs),
                        batch_size=1, num_cpus=1, num_gpus=engine.gpus or None,
                        compute=ray.data.ActorPoolStrategy(size=engine.actors))
    logging.getLogger("ray.data").setLevel(logging.ERROR)

    seen: set[int] = set()
    for row in ds.iter_rows():
        i = int(row["i"])
        seen.add(i)
        for key, node in (("read", row.get("read_node")), ("networks", row.get("networks_node"))):
            if node:
                work.setdefault(node, {}).setdefault(key, 0)
                work[node][key] += 1
        item = pickle.loads(row["payload"])
        job = ScanJob(pending[i], outputs=batch.options.outputs)
        if item[0] == "done":
            _, _, result, crops, per_scan = item
            try:
                job.write(out, result, crops, per_scan)
                counts["done"] += 1
                logger.info(done_line(result))
            except Exception as e:  # noqa: BLE001  whatever fails one scan is that scan's error row
                counts["failed"] += 1
                report_error(out, job.error(e), e)
        else:
            counts["failed"] += 1
            report_error(out, item[1])
        item = result = crops = per_scan = None
    for i, s in enumerate(pending):
        if i not in seen:
            counts["failed"] += 1
            report_error(out, ScanJob(s).error(LungcadError(worker_died_message(s.path))))
