"""The ``lungcad`` command: a thin shell over the library.

Each sub-command lives in its own module ``lungcad.cli.<name>`` with two functions:
``add_parser(subparsers, parents)`` registers it, and sets ``func`` to a function
``run(args) -> int`` that returns the exit code.  Heavy imports (Keras) happen inside
``run`` so that ``lungcad --help`` stays fast.

The library logs through ``logging.getLogger("lungcad")``; :func:`main` shows those records
as the command's lines (:class:`LogLines`).

Exit codes: 0 success, 1 a scan or input failed (each failure printed as one line),
2 usage error.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback

from lungcad import __version__
from lungcad.errors import LungcadError
from lungcad.memory import reuse_freed_memory

COMMANDS = ["info", "synth", "zoo", "detect", "merge", "train", "evaluate", "calibrate"]


def import_keras(*, debug: bool = False):
    """Import Keras (and its backend) with the backend's import-time C++ log lines hidden.

    TensorFlow writes INFO lines (oneDNN, CUDA probing) straight to file descriptor 2 while
    it is imported and when it first looks for GPUs (done here, while hidden), whatever
    TF_CPP_MIN_LOG_LEVEL says; a batch job's stderr should hold
    only its own one-line errors.  With ``debug`` nothing is hidden.  Import errors are
    raised as usual once stderr is restored.
    """
    if debug:
        import keras
        return keras
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import keras
            if keras.backend.backend() == "tensorflow":
                # probing for GPUs (on first use) logs "failed call to cuInit" on CPU machines
                import tensorflow as tf
                tf.config.list_physical_devices("GPU")
            elif keras.backend.backend() == "jax":
                import jax
                jax.devices()                # PjRt logs its device count once, here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras


def load_backend(command: str, *, debug: bool = False) -> bool:
    """:func:`import_keras` for ``lungcad COMMAND``: False, after one line on stderr, when the
    backend named by KERAS_BACKEND is not installed."""
    try:
        import_keras(debug=debug)
    except ImportError as e:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        print(f"lungcad {command}: error: the Keras backend '{backend}' is not installed ({e}). "
              f"Install it (e.g. pip install {backend}) or choose another with --backend.", file=sys.stderr)
        return False
    return True


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungcad", description="Lung-nodule CAD for chest CT (DICOM, LUNA16 .mhd, NIfTI).")
    parser.add_argument("--version", action="version", version=f"lungcad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_parser()
    for name in COMMANDS:
        modname = f"lungcad.cli.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).add_parser(sub, [common])
    return parser


class LogLines(logging.Handler):
    """The ``lungcad`` logger as a command's output: INFO records as lines on stdout (none
    with ``--quiet``), WARNING and ERROR records as ``lungcad COMMAND: error: ...`` lines on
    stderr.  The exception of a record (``exc_info``, or a scan's ``scan_exception``) is
    printed as a traceback only with ``--debug``."""

    def __init__(self, command: str, *, quiet: bool = False, debug: bool = False):
        super().__init__(logging.INFO)
        self.command, self.quiet, self.debug = command, quiet, debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno < logging.WARNING:
                if not self.quiet:
                    print(msg, file=sys.stdout, flush=True)
                return
            if self.debug:
                exc = record.exc_info[1] if record.exc_info else getattr(record, "scan_exception", None)
                if exc is not None:
                    traceback.print_exception(exc, file=sys.stderr)
            kind = "error" if record.levelno >= logging.ERROR else "warning"
            print(f"lungcad {self.command}: {kind}: {msg}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001  logging's own rule: a handler never raises
            self.handleError(record)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    reuse_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("lungcad")
    handler = LogLines(args.command, quiet=getattr(args, "quiet", False), debug=getattr(args, "debug", False))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return int(args.func(args) or 0)
    except LungcadError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"lungcad {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lungcad: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
