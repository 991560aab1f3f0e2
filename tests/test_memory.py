"""lungcad.memory: glibc keeps freed memory for the next large array, in a process of its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lungcad.memory import _glibc, reuse_freed_memory

# A child process: optionally tune, then allocate and touch 200 MB and free it;
# report whether the tuning took, how many mappings of >= 150 MB besides the heap the array
# added while it lived and after it was freed, and the heap's size once it was freed.
CHILD = r"""
import json, sys
import numpy as np
from lungcad.memory import reuse_freed_memory

def maps():
    # (mappings of >= 150 MB besides the brk heap, the heap's size in MB)
    n, heap = 0, 0
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if line.rstrip().endswith("[heap]"):     # the brk heap: where the tuned blocks go
            heap += (hi - lo) // 2**20
        else:
            n += (hi - lo) >= 150 * 2**20
    return n, heap

tuned = reuse_freed_memory() if sys.argv[1] == "tune" else False
before, _ = maps()
a = np.ones(200 * 2**20, dtype=np.uint8)
during, _ = maps()
del a
after, heap = maps()
print(json.dumps({"tuned": tuned, "during": during - before, "after": after - before,
                  "heap_mb": heap}))
"""

glibc_only = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is Linux/glibc only")


def _child(mode: str, **env) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LUNGCAD_MALLOC"}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=full, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_untuned_glibc_maps_and_unmaps_each_large_array():
    r = _child("plain")
    assert (r["tuned"], r["during"], r["after"]) == (False, 1, 0)   # mapped, then given back
    assert r["heap_mb"] < 150


@glibc_only
def test_tuned_glibc_keeps_the_freed_block_for_the_next_array():
    r = _child("tune")
    assert r["tuned"] is True
    assert r["during"] == 0 and r["after"] == 0     # served from the heap, not a mapping of its own
    assert r["heap_mb"] >= 200                       # and kept there once freed, for the next array


@glibc_only
def test_opt_out_and_user_tunables_leave_the_allocator_alone():
    assert _child("tune", LUNGCAD_MALLOC="system")["tuned"] is False
    assert _child("tune", MALLOC_ARENA_MAX="2")["tuned"] is True    # not one of the tunables it sets
    r = _child("tune", MALLOC_MMAP_MAX_="65536")
    assert r["tuned"] is False and r["during"] == 1                  # the user's setting stands


def test_decisions_without_touching_this_process():
    assert reuse_freed_memory({"LUNGCAD_MALLOC": " System "}) is False
    assert reuse_freed_memory({"MALLOC_TRIM_THRESHOLD_": "1"}) is False
    assert reuse_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) is False


@glibc_only
def test_the_lungcad_command_tunes_at_start_up(tmp_path):
    """``lungcad`` (any sub-command) runs the tuning before it parses its arguments: shown by
    ``lungcad info --help``, which exits in argparse after that."""
    code = ("import sys, lungcad.memory as m, lungcad.cli as c\n"
            "calls = []\n"
            "real = c.reuse_freed_memory\n"
            "c.reuse_freed_memory = lambda: calls.append(real()) or calls[-1]\n"
            "try:\n    c.main(['info', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(calls)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
    assert out.stdout.strip().splitlines()[-1] == "[True]"
