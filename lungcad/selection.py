"""Finding and choosing the scans of a batch: every series under an input (a tree, a series
folder, an image file, or a list file), one series per patient, and a shard's share.

:func:`lungcad.api.detect` calls these before the first scan (:func:`lungcad.api.start_batch`);
what they cannot use is reported, never raised, so that one bad input does not stop a batch.
See docs/architecture.md, "Errors".
"""
from __future__ import annotations

from pathlib import Path

from lungcad.errors import InputError
from lungcad.scan_job import unexpected_message

__all__ = ["LIST_SUFFIXES", "resolve_inputs", "select_series", "shard"]

#: a text file with one path per line
LIST_SUFFIXES = {".txt", ".lst", ".list"}


def resolve_inputs(input_path, *, errors: list | None = None):
    """Every series under ``input_path`` (a tree, a series folder, an image file, or a list file).

    Problems that do not stop the batch (a corrupt file, a listed path that does not
    exist) are appended to ``errors`` as ``(path, message)``, or ``(path, message,
    exception)`` for a bug met while reading a listed path.  A top-level path that
    does not exist, or holds no scan, raises :class:`InputError`.
    """
    from lungcad.io import discover

    errors = [] if errors is None else errors
    p = Path(input_path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(p, f"cannot read the list of scans: {e}") from e
        found = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            q = Path(line) if Path(line).is_absolute() else p.parent / line
            if not q.exists():
                errors.append((str(q), "listed in " + str(p) + " but no such file or folder"))
                continue
            n_err = len(errors)
            series = _discover(q, errors)
            if not series and len(errors) == n_err:
                errors.append((str(q), "no DICOM series or image file found here"))
            found.extend(series)
        return _unique(found)
    n_err = len(errors)
    series = discover(p, errors=errors)
    if not series and len(errors) == n_err:
        raise InputError(p, "no CT scan found (no DICOM series, .mhd/.mha or .nii/.nii.gz file)")
    return _unique(series)


def _discover(path, errors: list) -> list:
    """:func:`lungcad.io.discover` of one listed path; whatever stops it (an input error, or a
    bug: then with the exception as a third item, for ``--debug``) is one entry of ``errors``."""
    from lungcad.io import discover

    try:
        return discover(path, errors=errors)
    except InputError as e:
        errors.append((e.path or str(path), e.problem))
    except Exception as e:  # noqa: BLE001  a bug while reading one listed path: the others go on
        errors.append((str(path), unexpected_message(e, "io"), e))
    return []


def _unique(series):
    seen, out = set(), []
    for s in series:
        key = (s.series_uid, str(s.path))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def select_series(series, *, all_series: bool = False, series_uids=()):
    """Split discovered series into (to run, rejected as (series, reason), not chosen).

    Non-CT series, and series that cannot be stacked (missing slices, tilt, ...), are
    rejected with the reason.  By default one series per patient is chosen by
    :func:`lungcad.io.choose_series` (the thinnest slices, then the softest kernel); should
    that fail on a patient's series (a bug), they are rejected as ``(series, reason,
    exception)`` and the other patients are chosen as usual.
    """
    from lungcad.io import choose_series

    rejected, ct = [], []
    for s in series:
        modality = (s.modality or "CT").upper()
        if modality != "CT":
            rejected.append((s, f"not a CT series (Modality {modality}); lungcad reads chest CT only"))
        elif s.problem:
            rejected.append((s, s.problem))
        else:
            ct.append(s)
    if series_uids:
        wanted = set(series_uids)
        chosen = [s for s in ct if s.series_uid in wanted]
    elif all_series:
        chosen = ct
    else:
        chosen = []
        by_patient: dict = {}
        for s in ct:
            by_patient.setdefault(s.patient_id, []).append(s)
        for group in by_patient.values():
            try:
                chosen.extend(choose_series(group).values())
            except Exception as e:  # noqa: BLE001  a bug in choosing: this patient's series fail, not the batch
                rejected.extend((s, unexpected_message(e, "io"), e) for s in group)
        failed = {id(r[0]) for r in rejected}
        ct = [s for s in ct if id(s) not in failed]
    chosen_ids = {id(s) for s in chosen}
    not_chosen = [s for s in ct if id(s) not in chosen_ids]
    chosen.sort(key=lambda s: (str(s.patient_id), str(s.series_uid), str(s.path)))
    return chosen, rejected, not_chosen


def shard(items: list, num_shards: int, shard_index: int) -> list:
    """The deterministic share of ``items`` (already sorted) for one shard."""
    return [x for i, x in enumerate(items) if i % num_shards == shard_index]
