"""What C libraries write to stderr (GDCM and the OpenJPEG inside it, ITK's MetaIO and VNL),
collected as one-line warnings of the scan instead of reaching the user's terminal raw.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

from lungcad.io.dicom_attributes import _escape_controls

_C_OUTPUT_LOCK = threading.Lock()
#: The most lines of C library output kept as warnings of one series.
_C_OUTPUT_LINES = 5


@contextlib.contextmanager
def _c_library_output(into: list[str]):
    """Collect what C libraries write to file descriptor 2 inside the block (GDCM and the
    OpenJPEG inside it print decoding errors there, whatever SimpleITK's warning display
    says) into ``into``, one escaped line each (duplicates dropped, at most
    :data:`_C_OUTPUT_LINES`), instead of letting it reach the user's terminal raw.

    File descriptors are shared by the whole process: what another thread writes to stderr
    meanwhile lands in ``into`` too (it is not lost).  One block runs at a time.
    """
    with _C_OUTPUT_LOCK:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to protect
            yield into
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield into
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read(1 << 16).decode("utf-8", "replace")
                lines = [_escape_controls(" ".join(ln.split())) for ln in text.splitlines()]
                for line in dict.fromkeys(ln for ln in lines if ln):
                    if len(into) < _C_OUTPUT_LINES:
                        into.append(line[:300])
