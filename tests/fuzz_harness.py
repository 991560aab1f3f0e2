"""Running lungcad's readers on one fuzzed input and judging what they did (issue 20).

:func:`run_case` gives a case written by ``tests/fuzz_inputs.py`` to ``discover``,
``read_header``/``read_itk_info``, ``load_series``/``load_itk`` and ``load_ct``, and returns an
:class:`Outcome`: the volume loaded, an :class:`~lungcad.errors.InputError`, or a broken
promise: any other exception; a file outside the case opened (an audit hook on ``open``) or
its sentinel values returned; a warning let out, or text written on stdout/stderr (C++
libraries write there directly); an InputError message of several lines or naming no file
of the case; more than the hang limit; a big allocation; a volume that breaks the CTVolume
contract or the shape announced by discover/read_itk_info.
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzz_inputs import SENTINEL_HU, Case
from lungcad.errors import InputError
from lungcad.io import discover, load_ct, load_series
from lungcad.io.dicom_header import read_header
from lungcad.io.itk import load_itk, read_itk_info
from lungcad.volume import CTVolume

__all__ = ["Outcome", "run_case", "case_from_folder", "replay", "HANG_S", "MEMORY_MB"]

#: The hang limit of one input (s).
HANG_S = 30.0
#: Growth of the peak resident memory during one input above which it counts as a big
#: allocation (MiB).  The inputs are a few KB.
MEMORY_MB = 256


@dataclass
class Outcome:
    """What lungcad did with one case.

    kind : "loaded" (the main loader returned a volume), "InputError", or "escape" (another
        exception left a reader)
    error : the InputError's message, or the escaped exception's type and message
    where : the call that raised
    violations : broken promises besides an escape (outside file read, warning let out,
        message of several lines, too slow, big allocation, bad volume)
    """

    kind: str
    error: str = ""
    where: str = ""
    trace: str = ""
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kind != "escape" and not self.violations

    @property
    def key(self) -> str:
        """A short label for counting: the kind, or what went wrong."""
        if self.kind == "escape":
            return f"escape {self.error.split(':')[0]} in {self.where.split('(')[0]}"
        if self.violations:
            return f"{self.violations[0].split(':')[0]} ({self.kind})"
        return self.kind

    def report(self) -> str:
        lines = [f"{self.key} after {self.seconds:.2f} s"]
        if self.error:
            lines.append(f"{self.where}: {self.error}")
        lines += self.violations
        if self.trace:
            lines.append(self.trace)
        return "\n".join(lines)


class _Hang(BaseException):
    """Raised by the alarm when one input runs far past the hang limit."""


_watch: dict = {"dir": None, "hits": []}
_hook_lock = threading.Lock()
_hook_installed = False


def _audit(event, args):
    d = _watch["dir"]
    if d is None or event != "open" or not args:
        return
    p = args[0]
    if isinstance(p, int):
        return
    try:
        full = os.path.abspath(os.fsdecode(p))
    except (TypeError, ValueError):
        return
    if full == d or full.startswith(d + os.sep):
        _watch["hits"].append(full)


def _install_hook():
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)  # cannot be removed: inactive while _watch["dir"] is None
            _hook_installed = True


@contextlib.contextmanager
def _captured_output():
    """What is written to file descriptors 1 and 2 inside the block (C++ libraries write
    there directly); yields a list that receives the text on exit."""
    box: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            box.append(tmp.read().decode("utf-8", "replace"))


def _inside(path: str | None, folder: Path) -> bool:
    if path is None:
        return False
    full = os.path.abspath(path)
    base = os.path.abspath(folder)
    return full == base or full.startswith(base + os.sep)


def _check_volume(vol, where: str, out: list[str]) -> None:
    if not isinstance(vol, CTVolume):
        out.append(f"volume: {where} returned {type(vol).__name__}")
        return
    hu = vol.hu
    problems = []
    if hu.dtype != np.int16 or hu.ndim != 3 or hu.size == 0:
        problems.append(f"hu {hu.dtype} of shape {hu.shape}")
    elif int(hu.min()) < -1024:
        problems.append(f"HU below -1024 ({int(hu.min())})")
    if not all(np.isfinite(s) and s > 0 for s in vol.spacing):
        problems.append(f"spacing {vol.spacing}")
    if not np.isfinite(vol.origin).all():
        problems.append(f"origin {vol.origin}")
    dmat = np.asarray(vol.direction, dtype=float)
    if not (np.isfinite(dmat).all() and np.abs(dmat.T @ dmat - np.eye(3)).max() < 1e-2):
        problems.append(f"direction {dmat.round(3).tolist()}")
    if hu.size and np.count_nonzero(hu == SENTINEL_HU) >= 64:
        out.append(f"outside read: {where} returned the sentinel's values ({SENTINEL_HU} HU)")
    if problems:
        out.append(f"volume: {where}: " + ", ".join(problems))


def run_case(folder: str | os.PathLike, case: Case, *, outside: str | os.PathLike,
             hang_s: float = HANG_S, interrupt_s: float | None = None,
             traced_mb: float | None = None) -> Outcome:
    """Run lungcad's readers on a case written in ``folder``.

    DICOM: ``discover(folder)``, ``read_header`` of each mutated file, ``load_series`` of each
    usable series found (its shape must be the one discover said), ``load_ct(folder)`` (the
    outcome), and ``load_ct(file)`` for a multi-frame or single-file seed.  MetaImage and
    NIfTI: ``discover(folder)``, ``read_itk_info(file)``, ``load_itk(file)`` (the outcome) and
    ``load_ct(folder)``.  Every InputError must be one line naming a path inside ``folder``;
    nothing may open a file under ``outside``; no warning may leave.

    An input that takes more than ``hang_s`` is a violation; one still running after
    ``interrupt_s`` (default ``2 * hang_s``) is interrupted (in the main thread, where Python
    code runs; a hang inside C code is seen when it returns).  With ``traced_mb``, memory is
    traced (``tracemalloc``: what Python and numpy allocate, not C++ libraries) and a peak
    above it is a violation; without, only a growth of the peak resident memory by
    :data:`MEMORY_MB` is.
    """
    folder = Path(folder).resolve()
    outside = Path(outside).resolve()
    _install_hook()
    out = Outcome("InputError")
    state = {"first": None}

    def call(where: str, fn):
        try:
            return fn()
        except InputError as e:
            msg = str(e)
            if "\n" in msg or "\r" in msg:
                out.violations.append(f"message of several lines: {where}: {msg[:300]!r}")
            if not _inside(e.path, folder):
                out.violations.append(f"message names no file of the case: {where}: {msg[:200]}")
            if any(w in msg for w in ("not enough memory", "too large to load", "MemoryError")):
                # the inputs are a few KB: a header's claimed size was believed
                out.violations.append(f"big allocation: {where}: {msg[:200]}")
            if state["first"] is None:
                state["first"] = (where, msg)
            return None

    t0 = time.perf_counter()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    interrupt_s = 2 * hang_s if interrupt_s is None else interrupt_s
    main = threading.current_thread() is threading.main_thread()
    if main:
        def on_alarm(signum, frame):
            raise _Hang()
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, interrupt_s)
    _watch["hits"] = []
    _watch["dir"] = str(outside)
    tracing = traced_mb is not None and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    where = "discover"
    primary = None
    printed: list[str] = []
    try:
        with _captured_output() as printed, warnings.catch_warnings(record=True) as leaked:
            warnings.simplefilter("always")
            target = folder / case.target if case.target else folder
            errors: list = []
            found = call(where, lambda: discover(folder, errors=errors)) or []
            for path, message in errors:
                if "bug in lungcad" in message:
                    out.violations.append(f"discover swallowed a bug: {path}: {message[:300]}")
            if case.kind == "dicom":
                for name in case.mutated:
                    if (folder / name).is_file():
                        where = f"read_header({name})"
                        call(where, lambda: read_header(folder / name))
                for info in [s for s in found if s.usable][:3]:
                    where = f"load_series({Path(info.path).name})"
                    vol = call(where, lambda: load_series(info))
                    if vol is not None:
                        _check_volume(vol, where, out.violations)
                        if vol.shape != tuple(info.shape):
                            out.violations.append(f"inconsistent: discover said {info.shape}, "
                                                  f"{where} gave {vol.shape}")
                where = "load_ct(folder)"
                primary = call(where, lambda: load_ct(folder))
                if case.target and target.is_file():
                    where = f"load_ct({case.target})"
                    vol = call(where, lambda: load_ct(target))
                    if vol is not None:
                        _check_volume(vol, where, out.violations)
            else:
                info = None
                if target.is_file():
                    where = f"read_itk_info({case.target})"
                    info = call(where, lambda: read_itk_info(target))
                    where = f"load_itk({case.target})"
                    primary = call(where, lambda: load_itk(target))
                    if primary is not None and info is not None \
                            and tuple(info["shape"]) != primary.shape:
                        out.violations.append(f"inconsistent: read_itk_info said "
                                              f"{info['shape']}, load_itk gave {primary.shape}")
                where = "load_ct(folder)"
                vol = call(where, lambda: load_ct(folder))
                if vol is not None:
                    _check_volume(vol, where, out.violations)
            if primary is not None:
                out.kind = "loaded"
                _check_volume(primary, "the main load", out.violations)
        for w in leaked:
            out.violations.append(f"warning let out: {w.category.__name__}: "
                                  f"{str(w.message)[:200]} ({Path(w.filename).name}:{w.lineno})")
    except _Hang:
        out.violations.append(f"hang: {where} still running after {interrupt_s:g} s")
    except Exception as e:  # noqa: BLE001 - the point of the harness: anything but InputError
        out.kind = "escape"
        out.where = where
        out.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        out.trace = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
    finally:
        _watch["dir"] = None
        if tracing:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            if peak > traced_mb:
                out.violations.append(f"big allocation: a traced peak of {peak:.0f} MiB")
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
    out.seconds = time.perf_counter() - t0
    if out.kind == "InputError" and state["first"] is not None:
        out.where, out.error = state["first"]
    if printed and printed[0].strip():
        text = " | ".join(ln.strip() for ln in printed[0].strip().splitlines()[:4])
        out.violations.append(f"printed on stdout/stderr: {text[:300]}")
    if _watch["hits"]:
        out.violations.append(f"outside read: opened {sorted(set(_watch['hits']))[:3]}")
    if out.seconds > hang_s:
        out.violations.append(f"slow: {out.seconds:.1f} s, over the hang limit of {hang_s:g} s")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    if grown > MEMORY_MB:
        out.violations.append(f"big allocation: peak memory grew {grown:.0f} MiB")
    return out


# ============================================================================ replaying a folder

def case_from_folder(folder: str | os.PathLike) -> Case:
    """A saved input (a corpus folder, a reproducer) as a case: a folder holding an
    ``.mhd``/``.mha``/``.nii``/``.nii.gz`` is given to the ITK reader, any other is a DICOM
    series (``WHAT.txt``, written beside a reproducer, is left out)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "WHAT.txt"}
    itk = [n for n in files if n.lower().endswith((".mhd", ".mha", ".nii", ".nii.gz"))]
    if itk:
        kind = "nifti" if itk[0].lower().endswith((".nii", ".nii.gz")) else "metaimage"
        return Case(folder.name, kind, files, itk[0], mutated=[itk[0]])
    return Case(folder.name, "dicom", files, "", mutated=sorted(files))


def replay(folder: str | os.PathLike, work: str | os.PathLike, **kw) -> Outcome:
    """Run a saved input again: copied into ``work/case``, with sentinels in
    ``work/outside`` (see :func:`run_case` for ``kw``)."""
    from fuzz_inputs import plant_sentinels, write_case

    work = Path(work)
    case = case_from_folder(folder)
    outside = plant_sentinels(work / "outside")
    return run_case(write_case(case, work / "case"), case, outside=outside, **kw)


if __name__ == "__main__":
    # python tests/fuzz_harness.py FOLDER...: replay saved inputs (in a process of their own,
    # so that one that crashes the interpreter is seen as such); exit 1 if any breaks a promise
    import argparse
    import logging
    import shutil

    ap = argparse.ArgumentParser(description="Replay saved fuzz inputs (corpus folders, "
                                 "reproducers) through lungcad's readers.")
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--traced-mb", type=float, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    bad = 0
    for f in args.folders:
        work = Path(tempfile.mkdtemp(prefix="lungcad-replay-"))
        try:
            o = replay(f, work, traced_mb=args.traced_mb)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        bad += not o.ok
        print(f"{f}: {o.report()}", flush=True)
    sys.exit(1 if bad else 0)
