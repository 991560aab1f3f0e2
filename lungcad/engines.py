"""Where :func:`lungcad.api.detect` runs the scans: :class:`Serial` or :class:`Ray`.

An engine is a small frozen value, checked when it is made, so that a bad option is one
:class:`~lungcad.errors.OptionError` naming its keyword before any scan is read::

    from lungcad.api import detect, Ray

    detect("scans/", "out/", engine=Ray(address="auto", actors=4, gpus=1))

Both engines write the same files (docs/architecture.md, "Scaling out"); the Ray engine adds
an ``engine`` entry to ``run.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lungcad.checks import check_int, check_number
from lungcad.errors import OptionError

__all__ = ["Ray", "SCAN_RETRIES", "Serial", "check_engine"]

#: times a scan whose network actor died (killed, out of memory) is sent to a new actor
SCAN_RETRIES = 2


@dataclass(frozen=True)
class Serial:
    """One scan after another in this process (the default)."""

    def describe(self) -> dict[str, Any] | None:
        """The ``engine`` entry of ``run.json`` (None: the serial engine writes none)."""
        return None


@dataclass(frozen=True)
class Ray:
    """Ray Data: reading and the lung mask as CPU tasks, the networks in a pool of actors.

    Parameters
    ----------
    address : str, optional
        The Ray cluster to join (``"auto"``: the one this node belongs to,
        ``"ray://host:10001"``); None starts a local Ray with ``num_cpus`` CPUs (default all).
    actors : int
        Actors that hold the networks, >= 1.
    gpus : float
        GPUs each actor reserves, >= 0 (0: the networks run on CPU).
    retries : int
        Times a scan whose actor died (killed, out of memory) is sent to a new actor before it
        gets an error row, >= 0.
    num_cpus : int, optional
        CPUs of a local Ray (only without ``address``).
    """

    address: str | None = None
    actors: int = 1
    gpus: float = 0.0
    retries: int = SCAN_RETRIES
    num_cpus: int | None = None

    def __post_init__(self):
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise OptionError("address", "a Ray address such as 'auto' or 'ray://host:10001', or None",
                              self.address)
        object.__setattr__(self, "actors", check_int("actors", self.actors, minimum=1))
        object.__setattr__(self, "gpus", check_number("gpus", self.gpus, minimum=0.0))
        object.__setattr__(self, "retries", check_int("retries", self.retries, minimum=0))
        object.__setattr__(self, "num_cpus", check_int("num_cpus", self.num_cpus, minimum=1, optional=True))

    def describe(self) -> dict[str, Any]:
        return {"name": "ray", "address": self.address or "local", "actors": self.actors,
                "gpus_per_actor": self.gpus}


def check_engine(engine) -> Serial | Ray:
    """``engine`` as an engine: None is :class:`Serial`."""
    if engine is None:
        return Serial()
    if not isinstance(engine, (Serial, Ray)):
        raise OptionError("engine", "lungcad.api.Serial() or lungcad.api.Ray(...)", engine)
    return engine
