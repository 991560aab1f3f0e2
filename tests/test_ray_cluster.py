"""Clusters: `lungcad detect --engine ray` on a real two-node Ray cluster (`ray start`), and the
examples/ scripts for Slurm, Kubernetes and Ray, checked against the CLI they call."""
import json
import math
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml  # a dependency of Ray, which the "test" extra installs

from lungcad.cli import build_parser
from lungcad.cli.detect import shard_from_env
from lungcad.io import write_dicom_series
from lungcad.synthetic import generate_phantom

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
RAY = Path(sys.executable).with_name("ray")
#: the shipped networks; fewer candidates per scan than the default, so that the test is short
SMALL_PIPELINE = "[morphology]\nmax_candidates = 24\n"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now (bound at once, then released): never Ray's defaults,
    which the local Ray of test_ray_engine.py (another xdist worker) may hold."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RayNodes:
    """Ray nodes started with ``ray start --block``, each in its own process group under one temp
    root, and stopped by killing exactly those (``ray stop`` would stop every Ray of the machine)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.procs = root, env, []

    def start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")
        cmd = [str(RAY), "start", "--block", "--temp-dir", str(self.root / name), "--disable-usage-stats",
               "--include-log-monitor", "false", "--min-worker-port", "0", "--max-worker-port", "0", *args]
        self.procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                  start_new_session=True)))
        log.close()

    def wait_started(self, name: str, timeout: float = 120) -> None:
        proc = dict(self.procs)[name]
        log = self.root / f"{name}.log"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "Ray runtime started" in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"ray node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        for _, proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        # a process of these nodes that left their process groups: its command line names the root
        mine = str(self.root)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if mine in cmdline and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two small DICOM phantoms (32 x 128 x 128)."""
    root = tmp_path_factory.mktemp("scans")
    for i in range(2):
        ph = generate_phantom(seed=100 + i, shape=(32, 128, 128))
        ph.volume.patient_id, ph.volume.series_uid = f"P{i}", f"1.2.826.0.1.3680043.99.{100 + i}"
        write_dicom_series(ph.volume, root / f"P{i}" / "ct", seed=100 + i)
    return root


def lungcad_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "lungcad", *map(str, args)]


def approx_equal(a, b, path="") -> list[str]:
    """Where two JSON values differ, floats within 1e-5 relative / 1e-6 absolute."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in approx_equal(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in approx_equal(x, y, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b)))
        return [] if ok else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_detect_on_a_two_node_ray_cluster_equals_a_serial_run(tmp_path, tmp_path_factory, scans):
    # the nodes' sockets live under the temp root, and a Unix socket path has at most 107 bytes
    root = tmp_path_factory.mktemp("ray")
    if len(str(root)) > 40:
        root = Path(tempfile.mkdtemp(prefix="lungcad-ray-"))
    token = secrets.token_hex(32)
    # Ray's token authentication (its default for a cluster that has a token), with this test's
    # own token: the nodes, the driver and the workers share it and nothing of ~/.ray is used
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    pipeline = tmp_path / "small.toml"
    pipeline.write_text(SMALL_PIPELINE)
    serial, clustered = tmp_path / "serial", tmp_path / "ray"
    gcs, client, dashboard, agent_head, agent_worker = free_ports(5)
    nodes, ref = RayNodes(root, env), None
    t0 = time.time()
    phase = lambda what: print(f"[{time.time() - t0:6.1f} s] {what}", flush=True)  # noqa: E731
    try:
        nodes.start("head", "--head", "--port", str(gcs), "--num-cpus", "1", "--include-dashboard", "false",
                    "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
                    "--dashboard-agent-listen-port", str(agent_head))
        # the serial run, meanwhile: what the cluster's outputs must equal
        ref = subprocess.Popen(lungcad_cmd("detect", scans, "-o", serial, "--pipeline", pipeline, "--no-progress"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        nodes.wait_started("head")
        phase("head started")
        address = re.search(r"ray start --address='([^']+)'", (root / "head.log").read_text()).group(1)
        nodes.start("worker", "--address", address, "--num-cpus", "1",
                    "--dashboard-agent-listen-port", str(agent_worker))
        nodes.wait_started("worker")
        phase("worker started")
        # one actor holds one node's only CPU for the whole run, so the reading and lung-mask
        # tasks (one CPU each) can run only on the other node
        r = subprocess.run(lungcad_cmd("detect", scans, "-o", clustered, "--pipeline", pipeline, "--engine", "ray",
                                       "--ray-address", address, "--ray-actors", "1", "--no-progress"),
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        phase("ray run done")
        out, err = ref.communicate(timeout=600)
        assert ref.returncode == 0, out + err
        phase("serial run done")
    finally:
        nodes.stop()
        if ref is not None and ref.poll() is None:
            ref.kill()
            ref.wait()
    run = json.loads((clustered / "run.json").read_text())
    assert run["engine"]["address"] == address and run["this_run"]["done"] == 2
    work = run["engine"]["nodes"]
    assert len(work) == 2, work                         # both nodes did work ...
    assert {n["node_id"] for n in work} == {n["node_id"] for n in work if n["scans_read"] or n["scans_networks"]}
    assert sorted((n["scans_read"], n["scans_networks"]) for n in work) == [(0, 2), (2, 0)], work   # ... split so
    assert all(n["ip"] and n["hostname"] for n in work)

    for name in ("candidates.csv", "patients.csv"):
        a, b = pd.read_csv(serial / name), pd.read_csv(clustered / name)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    names = sorted(p.name for p in (serial / "scans").glob("*.json"))
    assert names == sorted(p.name for p in (clustered / "scans").glob("*.json")) and len(names) == 2
    for name in names:
        a, b = (json.loads((d / "scans" / name).read_text()) for d in (serial, clustered))
        a.pop("timings"), b.pop("timings")
        assert approx_equal(a, b) == [], name
    rel = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert rel(serial) == rel(clustered)                # the same files, crops, SR and SEG included
    assert pd.read_csv(clustered / "errors.csv").empty


# ------------------------------------------------------------------ examples/

def detect_args(argv: list[str]):
    """``argv`` (``detect ...``) parsed by lungcad's own parser: a flag it lacks fails here."""
    assert argv[0] == "detect", argv
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"lungcad's parser refuses {shlex.join(argv)}")


@pytest.fixture
def stubs(tmp_path):
    """A folder for PATH with ``lungcad`` and ``ray`` stand-ins that append their argv (one JSON
    list per line) to calls.jsonl."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls.jsonl"
    for name in ("lungcad", "ray"):
        stub = bin_ / name
        stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(calls)!r}, 'a').write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n")
        stub.chmod(0o755)

    def run(script, *args, env=None):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LUNGCAD_"))}
        e.update(env or {}, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
        calls.unlink(missing_ok=True)
        r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=e, timeout=60)
        return r, [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return run


@pytest.mark.parametrize("script", ["slurm/lungcad.sbatch", "ray/cluster.sh"])
def test_example_scripts_are_valid_bash(script):
    r = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_slurm_example_runs_one_shard_per_array_task_then_merges(stubs, tmp_path):
    script = EXAMPLES / "slurm" / "lungcad.sbatch"
    base = {"LUNGCAD_INPUT": str(REPO / "sample_data"), "LUNGCAD_OUTPUT": str(tmp_path / "out"),
            "LUNGCAD_ARGS": "--pipeline pipelines/cube.toml --outputs csv,json"}
    shards = []
    # an array given as --array=1-3: SLURM_ARRAY_TASK_MIN is 1, the shards 0..2
    for task in (1, 2, 3):
        r, calls = stubs(script, env={**base, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3",
                                      "SLURM_ARRAY_TASK_MIN": "1"})
        assert r.returncode == 0, r.stderr
        (call,) = calls
        assert call[0] == "lungcad"
        args = detect_args(call[1:])
        assert (args.input, args.num_shards, args.shard_index) == (str(REPO / "sample_data"), 3, task - 1)
        assert (args.pipeline, args.outputs) == ("pipelines/cube.toml", "csv,json")
        shards.append(Path(args.output))
        shards[-1].mkdir(parents=True)
    assert shards == [tmp_path / "out" / f"shard_{i}" for i in range(3)]
    r, calls = stubs(script, "merge", env=base)
    assert r.returncode == 0, r.stderr
    (call,) = calls
    merge = build_parser().parse_args(call[1:])
    assert call[:2] == ["lungcad", "merge"] and [Path(p) for p in merge.dirs] == shards
    assert Path(merge.output) == tmp_path / "out" / "all"
    r, calls = stubs(script, env=base)                  # not in an array: one clear line, nothing run
    assert r.returncode != 0 and "sbatch --array" in r.stderr and calls == []


def _job(name):
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "kubernetes" / name).read_text()) if d]
    assert len(docs) == 1 and docs[0]["apiVersion"] == "batch/v1" and docs[0]["kind"] == "Job"
    return docs[0]


def test_kubernetes_example_is_an_indexed_job_of_the_image_over_a_shared_volume():
    job = _job("lungcad-detect-job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    # lungcad takes the count from LUNGCAD_NUM_SHARDS, which must be the Job's completions
    assert int(env["LUNGCAD_NUM_SHARDS"]["value"]) == spec["completions"]
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # the Dockerfile's user
    uid = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text()).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["fsGroup"] == int(uid)    # the shared volume is writable by that user
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert set(mounts) <= claims
    # each pod: the shard from the variables as the pod has them, the args as lungcad parses them
    n = spec["completions"]
    for i in range(n):
        pod_env = {"LUNGCAD_NUM_SHARDS": env["LUNGCAD_NUM_SHARDS"]["value"], "JOB_COMPLETION_INDEX": str(i)}
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", str(i)) for a in c["args"]]    # as the kubelet expands it
        args = detect_args(argv)
        with pytest.MonkeyPatch.context() as mp:
            for k in [k for k in os.environ if k.startswith(("SLURM_", "LUNGCAD_", "JOB_COMPLETION"))]:
                mp.delenv(k)
            for k, v in pod_env.items():
                mp.setenv(k, v)
            assert shard_from_env(args.num_shards, args.shard_index) == (n, i)
        assert any(args.input.startswith(m + "/") for m in mounts.values())
        assert args.output == f"/data/out/shard_{i}" and args.output.startswith(mounts["data"] + "/")
    merge = _job("lungcad-merge-job.yaml")
    mpod = merge["spec"]["template"]["spec"]
    (mc,) = mpod["containers"]
    assert mc["image"] == c["image"] and mpod["securityContext"] == pod["securityContext"]
    assert mc["command"][:2] == ["sh", "-c"]
    argv = shlex.split(mc["command"][2])
    assert argv[:3] == ["exec", "lungcad", "merge"]
    merged = build_parser().parse_args(argv[2:])
    assert merged.dirs == ["/data/out/shard_*"] and merged.output == "/data/out/all"


def test_ray_example_starts_a_cluster_and_runs_detect_on_it(stubs):
    script = EXAMPLES / "ray" / "cluster.sh"
    r, calls = stubs(script, "head")
    assert r.returncode == 0, r.stderr
    (head,) = calls
    r, calls = stubs(script, "worker", "10.0.0.1:6379")
    (worker,) = calls
    r, calls = stubs(script, "detect", "--pipeline", "pipelines/cube.toml",
                     env={"ACTORS": "2", "GPUS_PER_ACTOR": "0.5"})
    (detect,) = calls
    assert head[:3] == ["ray", "start", "--head"] and worker[:4] == ["ray", "start", "--address", "10.0.0.1:6379"]
    # every flag given to ray start is one that this Ray's `ray start` has
    help_text = subprocess.run([str(RAY), "start", "--help"], capture_output=True, text=True, timeout=120).stdout
    for flag in {a for a in head + worker if a.startswith("--")}:
        assert re.search(rf"^\s+{re.escape(flag)}\b", help_text, re.MULTILINE), flag
    args = detect_args(detect[1:])
    assert (args.engine, args.ray_address, args.ray_actors, args.ray_gpus_per_actor) == ("ray", "auto", 2, 0.5)
    assert args.pipeline == "pipelines/cube.toml"
    r, calls = stubs(script)
    assert r.returncode == 2 and "usage" in r.stderr and calls == []
