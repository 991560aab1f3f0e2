"""Fuzzing the readers (issue 20): only ``InputError`` leaves them, whatever the bytes.

Real files (lungcad's own DICOM series, multi-frame files, pydicom's test files, ``.mhd``,
``.mha``, ``.nii``, ``.nii.gz``) are mutated by ``tests/fuzz_inputs.py``, at the byte and the
element level, with hypothesis choosing every mutation (a fixed seed: ``derandomize=True``,
no example database, so CI runs the same inputs every time).  Each mutated input is written
into a fresh folder and given to ``discover``, ``read_header``/``read_itk_info``,
``load_series``/``load_itk`` and ``load_ct``.  The test fails, saving the input under
``$LUNGCAD_FUZZ_REPRO`` (default: pytest's temporary folder, ``fuzz-repro``), when

* any exception other than InputError leaves a reader, or discover swallows one as a bug;
* an InputError's message has several lines or names no file of the input;
* a file outside the input folder is opened (sentinel files beside it, watched with an audit
  hook, and a volume holding the sentinels' values);
* a warning, or text on stdout/stderr (SimpleITK, GDCM, OpenJPEG), is let out;
* an input takes more than 30 s, makes the peak resident memory grow by more than 256 MiB,
  or is refused for lack of memory;
* a volume is returned that breaks the CTVolume contract, or with another shape than the
  one ``discover``/``read_itk_info`` announced

(``tests/fuzz_harness.py``).

``tests/fuzz_corpus/`` holds every input that once broke one of these promises (and the
hand-found cases of issue 20); each is replayed here.  ``benchmarks/fuzz_campaign.py`` runs
the same mutators for as long as wanted.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_inputs as fi
from fuzz_harness import Outcome, case_from_folder, run_case
from lungcad.errors import InputError
from lungcad.io import discover, load_ct
from lungcad.io.dicom_header import read_header

CORPUS = Path(__file__).parent / "fuzz_corpus"
#: Examples per fuzz test: the whole file takes about 95 s of CPU (measured: 93 s of CPU, 147 s
#: of wall time on a 2-core machine busy with other work).  ``LUNGCAD_FUZZ_SCALE=10`` runs ten
#: times as many.
_SCALE = float(os.environ.get("LUNGCAD_FUZZ_SCALE", "1"))
EXAMPLES = {k: max(1, round(v * _SCALE)) for k, v in
            {"synthetic_dicom": 1500, "pydicom_files": 1200, "metaimage": 800,
             "nifti": 700}.items()}
FUZZ = dict(derandomize=True, database=None, deadline=None, print_blob=False,
            suppress_health_check=list(HealthCheck))
#: A claimed size must be refused this fast (s) and with at most this much memory (bytes).
FAST_S = 2.0
SMALL_PEAK = 50 * 2**20


#: Broken promises that are known and still open, by kind of input: the fuzz tests let them
#: pass, and a corpus case of each (in CORPUS_OPEN, a strict xfail) fails once they are fixed,
#: so that both marks go with the fix.
KNOWN_OPEN: dict[str, re.Pattern] = {}


class Env:
    """Seeds, sentinels and a fresh case folder for each input."""

    def __init__(self, root: Path, repro: Path):
        self.root = root
        self.seeds = fi.build_seeds(root / "seeds")
        self.outside = fi.plant_sentinels(root / "outside")
        self.repro = repro

    def run(self, case: fi.Case, label: str, *, tolerate: bool = False,
            traced_mb: float | None = None) -> Outcome:
        folder = fi.write_case(case, self.root / "case")
        outcome = run_case(folder, case, outside=self.outside, traced_mb=traced_mb)
        known = KNOWN_OPEN.get(case.kind) if tolerate else None
        if known is not None:
            outcome.violations = [v for v in outcome.violations if not known.match(v)]
        if not outcome.ok:  # keep it (hypothesis's last, shrunk example overwrites the others)
            keep = self.repro / label
            if keep.exists():
                shutil.rmtree(keep)
            shutil.copytree(folder, keep)
            (keep / "WHAT.txt").write_text(f"{case.describe()}\n\n{outcome.report()}\n")
        return outcome

    def check(self, case: fi.Case, label: str, *, tolerate: bool = False,
              traced_mb: float | None = None) -> Outcome:
        outcome = self.run(case, label, tolerate=tolerate, traced_mb=traced_mb)
        assert outcome.ok, (f"{case.describe()}\n{outcome.report()}\n"
                            f"reproducer saved in {self.repro / label}")
        return outcome


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    repro = Path(os.environ.get("LUNGCAD_FUZZ_REPRO")
                 or tmp_path_factory.getbasetemp() / "fuzz-repro")
    return Env(tmp_path_factory.mktemp("fuzz"), repro)


def _fuzz(env: Env, data, names, label: str) -> None:
    names = [n for n in names if n in env.seeds]
    seed = env.seeds[data.draw(st.sampled_from(names), label="seed")]
    case = fi.mutate(seed, fi.HypothesisDraws(data), outside=env.outside)
    env.check(case, label, tolerate=True)


# ------------------------------------------------------------------------------ fuzz tests

@settings(max_examples=EXAMPLES["synthetic_dicom"], **FUZZ)
@given(data=st.data())
def test_mutated_synthetic_dicom_gives_input_error_or_a_volume(env, data):
    _fuzz(env, data, fi.SYNTH_DICOM, "synthetic_dicom")


@settings(max_examples=EXAMPLES["pydicom_files"], **FUZZ)
@given(data=st.data())
def test_mutated_pydicom_test_files_give_input_error_or_a_volume(env, data):
    _fuzz(env, data, fi.PYDICOM_FILES, "pydicom_files")


@settings(max_examples=EXAMPLES["metaimage"], **FUZZ)
@given(data=st.data())
def test_mutated_metaimage_gives_input_error_or_a_volume(env, data):
    _fuzz(env, data, fi.METAIMAGE, "metaimage")


@settings(max_examples=EXAMPLES["nifti"], **FUZZ)
@given(data=st.data())
def test_mutated_nifti_gives_input_error_or_a_volume(env, data):
    _fuzz(env, data, fi.NIFTI, "nifti")


# ------------------------------------------------------------------- the seeds and the index

def test_seeds_unmutated_load_as_written(env):
    """The mutations start from good scans: every synthetic seed loads (its HU as written),
    every pydicom file gives an InputError or a volume and nothing else."""
    expected = fi._volume().hu
    for name, seed in env.seeds.items():
        case = fi.Case(seed.name, seed.kind, dict(seed.files), seed.target,
                       mutated=list(seed.mutable))
        outcome = env.check(case, f"seed-{name}")
        if name in fi.SYNTH_DICOM or seed.kind != "dicom" or name == "ct_small_series":
            assert outcome.kind == "loaded", (name, outcome.report())
        if name in fi.SYNTH_DICOM or seed.kind != "dicom":
            target = env.root / "case" / seed.target if seed.target else env.root / "case"
            vol = load_ct(target)
            inside = vol.hu != -1024 if name == "series_padded" else np.ones(vol.shape, bool)
            assert inside.mean() > 0.5
            np.testing.assert_array_equal(vol.hu[inside], expected[inside], err_msg=name)
    assert len([n for n in fi.PYDICOM_FILES if n in env.seeds]) >= 10  # pydicom's data there


def test_index_finds_every_element_where_pydicom_reads_it(env):
    """The element mutators hit what they aim at: the index gives, for every element pydicom
    reads at the top level of each seed, its tag at its offset and its value's length."""
    for name, seed in env.seeds.items():
        if seed.kind != "dicom" or name in ("image_dfl.dcm",):  # deflated: not walkable
            continue
        for fname, data in seed.files.items():
            index = {e.tag: e for e in fi.index_dicom(data) if e.depth == 0}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), force=True)
            tags = [t for t in ds.keys() if t >> 16 != 2 and t != 0x7FE00010]
            assert tags, (name, fname)
            for tag in tags:
                raw = ds.get_item(tag)
                if not hasattr(raw, "value_tell"):
                    continue
                e = index.get(int(tag))
                assert e is not None, (name, fname, tag)
                assert e.value_start == raw.value_tell, (name, fname, tag)
                if raw.length != 0xFFFFFFFF:
                    assert e.length == raw.length, (name, fname, tag)


# ----------------------------------------------------------- the harness can see a failure

def _seed_case(env: Env, name: str) -> fi.Case:
    seed = env.seeds[name]
    return fi.Case(seed.name, seed.kind, dict(seed.files), seed.target, mutated=list(seed.mutable))


def test_harness_reports_an_exception_that_is_not_input_error(env, monkeypatch):
    def broken(*a, **kw):
        raise OverflowError("Python int too large to convert to C long")
    monkeypatch.setattr("lungcad.io.dicom_decode._to_hu", broken)
    outcome = env.run(_seed_case(env, "series"), "harness-escape")
    assert not outcome.ok and outcome.kind == "escape"
    assert outcome.error.startswith("OverflowError") and "load_series" in outcome.where


def test_harness_reports_a_file_read_outside_the_input(env, monkeypatch):
    """With the ElementDataFile guard removed, a header pointing at ../outside is seen."""
    monkeypatch.setattr("lungcad.io.metaimage_checks._data_file",
                        lambda path, name, what: os.path.join(os.path.dirname(path), name))
    case = _seed_case(env, "mhd")
    case.files["scan.mhd"] = case.files["scan.mhd"].replace(
        b"ElementDataFile = scan.raw", b"ElementDataFile = ../outside/sentinel.raw")
    outcome = env.run(case, "harness-outside")
    assert outcome.kind == "loaded"
    assert any(v.startswith("outside read") for v in outcome.violations), outcome.report()


def test_harness_reports_slow_inputs_hangs_warnings_and_printing(env, monkeypatch):
    io_discover = importlib.import_module("lungcad.io.discover")  # the module, not the function
    real = io_discover.read_header
    case = _seed_case(env, "series")
    folder = fi.write_case(case, env.root / "case")

    def slow(path, pause):
        time.sleep(pause)
        return real(path)
    monkeypatch.setattr(io_discover, "read_header", lambda p: slow(p, 0.02))
    outcome = run_case(folder, case, outside=env.outside, hang_s=0.1, interrupt_s=30)
    assert outcome.kind == "loaded"
    assert any(v.startswith("slow") for v in outcome.violations), outcome.report()
    monkeypatch.setattr(io_discover, "read_header", lambda p: slow(p, 1.0))
    t = time.perf_counter()
    outcome = run_case(folder, case, outside=env.outside, hang_s=0.1, interrupt_s=0.2)
    assert any(v.startswith("hang") for v in outcome.violations), outcome.report()
    assert time.perf_counter() - t < 1.0  # interrupted, not waited for

    def noisy(path):
        warnings.warn("a library warning", UserWarning)
        os.write(2, b"a C++ library writing to stderr\n")
        return real(path)
    monkeypatch.setattr(io_discover, "read_header", noisy)
    outcome = run_case(folder, case, outside=env.outside)
    assert any(v.startswith("warning let out") for v in outcome.violations), outcome.report()
    assert any(v.startswith("printed") and "C++ library" in v for v in outcome.violations)


# ------------------------------------------------- claimed sizes checked before allocation

def _pydicom_edit(path: Path, **elements) -> None:
    with fi.lenient_pydicom():
        ds = pydicom.dcmread(path)
        for name, value in elements.items():
            setattr(ds, name, value)
        ds.save_as(path)


def _claimed_case(env: Env, name: str, tmp: Path) -> Path:
    """A small input whose header claims a huge image; the path to give load_ct."""
    seeds = env.seeds
    if name.startswith(("mhd", "nii")):
        seed = seeds["mhd" if name.startswith("mhd") else "nii"]
        fi.write_case(fi.Case(seed.name, seed.kind, dict(seed.files), seed.target), tmp)
        target = tmp / seed.target
        if name == "mhd_dimsize_1e5_cubed":
            target.write_bytes(target.read_bytes().replace(
                b"DimSize = 32 32 6", b"DimSize = 100000 100000 100000"))
        else:  # nii_dim_32767_cubed
            data = bytearray(target.read_bytes())
            struct.pack_into("<3h", data, 42, 32767, 32767, 32767)
            target.write_bytes(bytes(data))
        return target
    if name == "element_length_4gib":  # implicit VR: every length has 4 bytes
        seed = seeds["series_implicit_nometa"]
        fi.write_case(fi.Case(seed.name, seed.kind, dict(seed.files), seed.target), tmp)
        f = tmp / "IM00002"
        data = bytearray(f.read_bytes())
        (el,) = [e for e in fi.index_dicom(bytes(data)) if e.name == "PatientID"]
        data[el.length_at:el.length_at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
        f.write_bytes(bytes(data))
        return tmp
    src = {"frames_65536": "series", "rows_columns_65535": "series",
           "rows_columns_16384": "series", "rle_rows_columns_16384": "series_rle",
           "j2k_rows_columns_16384": "series_j2k", "enhanced_frames_65536": "enhanced",
           "classic_frames_2_to_32": "classic_multiframe"}[name]
    seed = seeds[src]
    fi.write_case(fi.Case(seed.name, seed.kind, dict(seed.files), seed.target), tmp)
    files = sorted(tmp.iterdir())
    for f in files:
        if name in ("frames_65536", "enhanced_frames_65536"):
            _pydicom_edit(f, NumberOfFrames=65536)
        elif name == "classic_frames_2_to_32":
            _pydicom_edit(f, NumberOfFrames=2**32)
        elif name == "rows_columns_65535":
            _pydicom_edit(f, Rows=65535, Columns=65535)
        else:
            _pydicom_edit(f, Rows=16384, Columns=16384)
    return files[0] if seed.target else tmp


@pytest.mark.parametrize("name", [
    "frames_65536", "rows_columns_65535", "rows_columns_16384", "rle_rows_columns_16384",
    "j2k_rows_columns_16384", "enhanced_frames_65536", "classic_frames_2_to_32",
    "element_length_4gib", "mhd_dimsize_1e5_cubed", "nii_dim_32767_cubed"])
def test_claimed_size_refused_at_once_without_a_big_allocation(env, tmp_path, name):
    """A header that claims 65,536 frames, 65535 x 65535 pixels, a 4 GiB element or 100000^3
    voxels of a file of a few KB is refused from the header: within 2 s, with a peak of traced
    memory (numpy arrays, bytes and buffers that Python allocates) under 50 MB."""
    target = _claimed_case(env, name, tmp_path / "in")
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(InputError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_ct(target)
        errors: list = []
        discover(target, errors=errors) if target.is_dir() else None
        if target.suffix == ".dcm":
            with pytest.raises(InputError):
                read_header(target)
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < FAST_S, f"{name}: {seconds:.2f} s"
    assert peak < SMALL_PEAK, f"{name}: a peak of {peak / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------- the corpus

#: Corpus inputs that must load (the others must give an InputError).
CORPUS_LOADS: set[str] = {"niigz_sform_code_4_vnl_prints"}
#: Corpus inputs that still break a promise, with the reason (strict: they fail the test
#: once fixed, so that the mark, and the pattern in KNOWN_OPEN, are removed with the fix).
CORPUS_OPEN: dict[str, str] = {}


_CORPUS_CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) if CORPUS.is_dir() else []


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=CORPUS_OPEN[n]))
    if n in CORPUS_OPEN else n for n in _CORPUS_CASES])
def test_corpus_input_gives_input_error_or_a_volume(env, name):
    """Each corpus input, with the fuzz checks and its Python/numpy allocations traced (a
    peak above 50 MiB fails: several cases once allocated gigabytes)."""
    if name in CORPUS_OPEN:  # in a process of its own: an open case may crash the interpreter
        run = subprocess.run([sys.executable, str(Path(fi.__file__).with_name("fuzz_harness.py")),
                              str(CORPUS / name)], capture_output=True, text=True, timeout=300)
        # it passes once it keeps every promise, whether it loads or is refused
        assert run.returncode == 0, f"exit {run.returncode}: {run.stdout[-2000:]}{run.stderr[-2000:]}"
        return
    outcome = env.check(case_from_folder(CORPUS / name), f"corpus-{name}",
                        traced_mb=SMALL_PEAK / 2**20)
    assert outcome.kind == ("loaded" if name in CORPUS_LOADS else "InputError"), outcome.report()


def test_corpus_is_small_and_listed():
    sizes = {p: p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()}
    assert sum(sizes.values()) < 1_000_000
    assert max(sizes.values()) < 64_000
    readme = (CORPUS / "README.md").read_text()
    for name in _CORPUS_CASES:
        assert f"`{name}`" in readme, f"{name} is not listed in tests/fuzz_corpus/README.md"
    assert len(_CORPUS_CASES) >= 8
