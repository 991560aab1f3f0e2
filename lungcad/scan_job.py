"""One scan of a batch, in the steps an engine may run in different processes
(:class:`ScanJob`), and what a failure of it becomes: an error row of ``errors.csv`` and one
ERROR record of the ``lungcad`` logger (:func:`report_error`).

Both engines (:mod:`lungcad.api`, :mod:`lungcad.ray_engine`) use these, so a scan's outputs
and its errors are the same whichever runs it.  See docs/architecture.md, "Errors".
"""
from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager

from lungcad.errors import InputError, LungcadError, StageError

__all__ = ["ScanFailure", "ScanJob", "captured_warnings", "done_line", "in_stage", "one_line",
           "report_error", "unexpected_message"]

logger = logging.getLogger("lungcad")


def unexpected_message(exc: BaseException, stage: str) -> str:
    """The one-line message of an exception that is not a :class:`LungcadError`: a bug in lungcad
    or a library's surprise, not a problem lungcad knows how to name."""
    text = " ".join(str(exc).split())
    return (f"unexpected {type(exc).__name__}{': ' + text if text else ''} (in stage {stage}; "
            f"a bug in lungcad: run with --debug for the traceback and report it)")


@contextmanager
def captured_warnings(into: list):
    """Python warnings issued inside the block (pydicom's, numpy's, ...) appended to ``into`` as
    ``"Category: message"`` lines, each once, instead of being printed to stderr.  The warning
    filters in force decide, as ever, which warnings are issued."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        finally:
            for w in caught:
                line = f"{w.category.__name__}: {' '.join(str(w.message).split())}"
                if line not in into:
                    into.append(line)


class ScanFailure(StageError):
    """A step of :class:`ScanJob` failed with an exception that is not a
    :class:`~lungcad.errors.LungcadError` (a bug, or memory running out).  ``message`` is the
    error row's message as it stands: it names the exception and says that it is a bug."""


@contextmanager
def in_stage(stage: str, series: str | None = None):
    """Run the block as part of ``stage``: a :class:`LungcadError` passes as it is (an
    :class:`InputError` is the reader's, a :class:`StageError` names its own stage); anything
    else becomes a :class:`ScanFailure` of ``stage``, chained to the original."""
    try:
        yield
    except LungcadError:
        raise
    except MemoryError as e:
        raise ScanFailure(stage, series, f"out of memory in stage {stage}") from e
    except Exception as e:
        raise ScanFailure(stage, series, unexpected_message(e, stage)) from e


class ScanJob:
    """One scan's work, in the steps that an engine may run in different processes:
    :meth:`load` (reading and the lung mask: CPU only), :meth:`networks` (the rest of the
    pipeline and the crops) and :meth:`write`.  A failure of a step names its stage
    (:func:`in_stage`).  Python warnings issued by a step (a library's) go into the scan's
    warnings, not to stderr."""

    def __init__(self, series, outputs=None):
        from lungcad.results.folder import safe_id
        from lungcad.results.kinds import check_outputs

        self.series = series
        self.sid = safe_id(series.patient_id, series.series_uid)
        self.outputs = check_outputs(outputs)          #: the kinds chosen (``--outputs``)

    def load(self, pipe):
        """``(volume, prepared)``: the scan read, and :meth:`Pipeline.prepare` of it.  The
        reading's seconds are the first of the scan's timings (``read``)."""
        from lungcad.io import load_series

        caught: list = []
        uid = self.series.series_uid
        with captured_warnings(caught):
            t0 = time.perf_counter()
            with in_stage("io", uid):
                volume = load_series(self.series)
            read_s = round(time.perf_counter() - t0, 4)
            with in_stage("pipeline", uid):
                prep = pipe.prepare(volume)
        prep.timings = {"read": read_s, **prep.timings}
        prep.warnings.extend(w for w in caught if w not in prep.warnings)
        return volume, prep

    def networks(self, pipe, volume, prep):
        """``(result, crops, files)``: :meth:`Pipeline.finish`, the report's PNG images of the
        nodules shown (with ``html``), and the other per-scan files of the chosen outputs
        (:func:`lungcad.results.kinds.render_files`: SR, SEG, viewer files; an output that this
        scan cannot have is a warning line and a note, not a failure).  The result's arrays on
        the volume grid (``lung_mask``, ``nodule_labels``) are dropped once the files are made,
        so that they travel no further (the Ray engine sends the result to the driver).  Making
        the images and files is the scan's last timing (``outputs``)."""
        from lungcad.results import crops as _crops
        from lungcad.results.kinds import render_files

        caught: list = []
        uid = self.series.series_uid
        with captured_warnings(caught):
            with in_stage("pipeline", uid):
                result = pipe.finish(volume, prep, input_path=str(self.series.path))
            t0 = time.perf_counter()
            with in_stage("outputs", uid):
                crops = (_crops.render_crops(volume, result.candidates, top_n=3, overview=True)
                         if "html" in self.outputs else {})
                if getattr(result, "lung_mask", None) is None and getattr(prep, "lung", None) is not None:
                    result.lung_mask = prep.lung.mask
                files = render_files(volume, result, self.outputs)
                for name in ("lung_mask", "nodule_labels"):
                    if getattr(result, name, None) is not None:
                        setattr(result, name, None)
            result.timings["outputs"] = round(time.perf_counter() - t0, 4)
        result.warnings.extend(w for w in caught if w not in result.warnings)
        return result, crops, files

    def write(self, out, result, crops, files=None) -> None:
        """Write the scan (:meth:`OutputDir.write_scan`), then log a WARNING naming its path for
        each chosen output it could not have."""
        with in_stage("outputs", self.series.series_uid):
            out.write_scan(result, crops=crops, files=files)
        for kind, note in sorted(((result.meta or {}).get("outputs") or {}).items()):
            if isinstance(note, str) and note.startswith("skipped: "):
                logger.warning(one_line(f"{self.series.path}: no {kind} output: {note[len('skipped: '):]}"))

    def error(self, exc: BaseException, *, stage: str = "pipeline") -> dict[str, str]:
        """The error row of a failure of this scan (``stage``, ``message``, ...) and its one
        log line (``line``, which names the scan's path).  The stage is the one the error
        names (:class:`StageError`), ``io`` for an :class:`InputError`, else ``stage``;
        an exception that is not a :class:`LungcadError` is reported as a bug."""
        s, path = self.series, str(self.series.path)
        if isinstance(exc, ScanFailure):
            stage, message = exc.stage, exc.message
        elif isinstance(exc, StageError):
            stage, message = exc.stage, str(exc)
        elif isinstance(exc, InputError):
            stage, message = "io", str(exc)
        elif isinstance(exc, LungcadError):
            message = str(exc)
        elif isinstance(exc, MemoryError):
            message = f"out of memory in stage {stage}"
        else:
            message = unexpected_message(exc, stage)
        line = message if message.startswith(path) else f"{path}: {message}"
        return {"sid": self.sid, "path": path, "stage": stage, "message": message,
                "patient_id": s.patient_id, "series_uid": s.series_uid, "line": one_line(line)}


def report_error(out, row: dict[str, str], exc: BaseException | None = None) -> None:
    """Write one scan's error row (:meth:`ScanJob.error`) and log its line at ERROR.  The
    record carries ``exc`` as ``scan_exception`` (``lungcad --debug`` prints its traceback),
    and as ``exc_info`` too when it is a bug (not a :class:`LungcadError`, or one wrapping
    an exception of a library)."""
    out.write_error(row["sid"], path=row["path"], stage=row["stage"], message=row["message"],
                    patient_id=row["patient_id"], series_uid=row["series_uid"])
    bug = exc is not None and (not isinstance(exc, LungcadError) or isinstance(exc, ScanFailure)
                               or (isinstance(exc, StageError) and exc.__cause__ is not None))
    logger.error(row["line"], exc_info=exc if bug else None, extra={"scan_exception": exc})


def one_line(text: str) -> str:
    """``text`` as one log line: control characters from headers or file names (newlines,
    NUL, terminal escapes) written as visible escapes."""
    from lungcad.results.tables import escape_controls

    return escape_controls(str(text))


def done_line(result) -> str:
    """The log line of a scan done."""
    return one_line(f"done  {result.patient_id}  {result.series_uid}  P(cancer)={result.cancer_probability:.3f}  "
                    f"candidates={len(result.candidates)}  {sum(result.timings.values()):.1f}s")
