"""Exceptions that lungcad raises on purpose.

Every error meant for a user is a :class:`LungcadError`.  Its ``str()`` is one
line that names the file (or the stage and series) and the problem, so that the
CLI can print it without a traceback and go on with the next scan.
"""
from __future__ import annotations

import os


class LungcadError(Exception):
    """Base class of every error that lungcad raises for a user to read."""


class InputError(LungcadError):
    """A scan or file that cannot be used: missing, corrupt, not CT, incomplete.

    Parameters
    ----------
    path : str or os.PathLike
        The file or folder the problem is about.
    problem : str
        What is wrong, and where useful what to do about it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class StageError(LungcadError):
    """A failure inside a pipeline stage, naming the stage and the series.

    Raise it ``from`` the original exception so that ``--debug`` can show the cause.
    """

    def __init__(self, stage: str, series: str | None, message: str):
        self.stage = stage
        self.series = series
        self.message = message
        where = f"stage '{stage}'" + (f", series {series}" if series else "")
        super().__init__(f"{where}: {message}")


class ConfigError(LungcadError, ValueError):
    """A pipeline file or option that is invalid: says what was expected and received."""


class OptionError(ConfigError):
    """An argument of a library call that is invalid, naming the keyword.

    ``str()`` is ``"<keyword> must be <requirement>. Received <value>"``; the CLI prints the
    same sentence with the flag (``--ray-actors``) in place of the keyword (``actors``).
    """

    def __init__(self, keyword: str, requirement: str, received):
        self.keyword = keyword
        self.requirement = requirement
        self.received = received
        super().__init__(f"{keyword} must be {requirement}. Received {received!r}")


class OutputSkipped(LungcadError):
    """One output of a scan that cannot be written (a DICOM SR for a NIfTI input, a DICOM
    attribute that a SEG needs and the input lacks).  The scan is not failed: the other
    outputs are written, and the reason becomes one warning line and a note in the scan's
    JSON.

    Parameters
    ----------
    output : str
        The output kind, as ``--outputs`` names it (``sr``, ``seg``, ...).
    reason : str
        Why, naming the file or attribute.
    """

    def __init__(self, output: str, reason: str):
        self.output = output
        self.reason = reason
        super().__init__(f"no {output} output: {reason}")
