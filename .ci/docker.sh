#!/usr/bin/env bash
# CI: build the committed Dockerfile and run `lungcad detect` on sample_data/ inside the image.
#
# These machines have no Docker daemon and no image registry, so:
#   - buildah builds the Dockerfile and podman runs the image (Debian's packages; overlay storage,
#     or vfs where overlay cannot be mounted; chroot isolation for the build, runc for the run);
#   - the base image python:3.11-slim is replaced by a stand-in of the same name: a Debian bookworm
#     root file system (its Python is 3.11) made with mmdebstrap from the mirror apt uses here.  It
#     carries this machine's CA certificates and pip configuration (index, find-links, constraints),
#     so pip inside the build reaches the same index as pip outside; local wheel folders named there
#     are mounted read-only into the build.  The Dockerfile itself is used as committed.
# Checks: the image runs `detect` on sample_data/ (mounted read-only, no network) into a writable
# folder; the outputs are there and sane (3 patients done, 0 failed); the files belong to uid 1000,
# the image's unprivileged user; candidates.csv equals a run outside the container (when .venv has
# lungcad); and the gpu extra resolves (`pip install --dry-run ".[gpu]"`).
#
# Root (apt-get, chroot).  About 3 GB under W while it runs (6 GB where only vfs works: every layer
# and container is then a full copy); the built image is removed at the end
# (LUNGCAD_DOCKER_KEEP=1 keeps it), the base stand-in (~0.4 GB) is kept in W for the next run.
# Env: W (work folder, default /tmp/lungcad-docker), LUNGCAD_DOCKER_CONTEXT (build context folder;
# default: the committed tree, `git archive HEAD`).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
W=${W:-/tmp/lungcad-docker}
IMAGE=localhost/lungcad:ci
BASE=docker.io/library/python:3.11-slim
START=$SECONDS
exec 3>&2                                       # say() reaches the terminal when a step's output is logged
say() { echo "docker: $*" >&3; }
timed() { local s=$SECONDS rc=0; "$@" || rc=$?; say "$(( SECONDS - s ))s  ${*:1:3}"; return $rc; }
fail() { say "FAILED: $*"; exit 1; }
as_root=(); [ "$(id -u)" = 0 ] || as_root=(sudo)

# --- tools -------------------------------------------------------------------------------------
if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v runc >/dev/null \
   || ! command -v mmdebstrap >/dev/null; then
  timed "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  timed "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    buildah podman runc mmdebstrap >/dev/null
fi
mkdir -p "$W"
cat > "$W/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
# overlay where this kernel mounts it (layers and containers are then not copies), else vfs
DRIVER=vfs
probe=$W/probe; rm -rf "$probe"; mkdir -p "$probe"/{lower,upper,work,merged}
if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
     "$probe/merged" 2>/dev/null; then umount "$probe/merged"; DRIVER=overlay; fi
rm -rf "$probe"
STORE=$W/storage-$DRIVER
cat > "$W/storage.conf" <<EOF
[storage]
driver = "$DRIVER"
runroot = "$STORE/run"
graphroot = "$STORE/graph"
EOF
say "storage driver: $DRIVER"
export CONTAINERS_CONF=$W/containers.conf CONTAINERS_STORAGE_CONF=$W/storage.conf
podman rm -af >/dev/null 2>&1 || true          # leftovers of an interrupted run
buildah rm -a >/dev/null 2>&1 || true
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true

# --- the build context: the committed tree -----------------------------------------------------
CTX=${LUNGCAD_DOCKER_CONTEXT:-}
if [ -z "$CTX" ]; then
  CTX=$W/context; rm -rf "$CTX"; mkdir -p "$CTX"
  git archive HEAD | tar -x -C "$CTX"
fi
[ -f "$CTX/Dockerfile" ] || fail "no Dockerfile in $CTX"

# --- checks that need no image, in the background while the image is made ----------------------
# the gpu extra resolves (no second image); in .ci/run's venv, else in a throwaway one
PY=$REPO/.venv/bin/python
if [ ! -x "$PY" ]; then python3 -m venv "$W/venv"; PY=$W/venv/bin/python; fi
"$PY" -m pip install --dry-run "$REPO[gpu]" > "$W/gpu-dry-run.log" 2>&1 &
GPU_PID=$!
# the reference for candidates.csv: the same detect outside the container
REF_PID=
if [ -x "$REPO/.venv/bin/lungcad" ]; then
  rm -rf "$W/ref"
  "$REPO/.venv/bin/lungcad" detect "$REPO/sample_data" -o "$W/ref" --no-progress --quiet \
    > "$W/ref.log" 2>&1 &
  REF_PID=$!
fi

# --- the stand-in for python:3.11-slim, with this machine's CA certificates and pip configuration
ROOTFS=$W/rootfs
rm -rf "$ROOTFS.new" && mkdir -p "$ROOTFS.new/etc"
# pip's effective configuration here (files and PIP_* variables) as one /etc/pip.conf, plus the
# local files and folders it names: files are copied in, folders are mounted into the build
python3 -m pip config list 2>/dev/null | python3 -c '
import ast, os, sys
files, env = {}, {}
for line in sys.stdin:
    key, sep, value = line.rstrip("\n").partition("=")
    if not sep:
        continue
    section, _, name = key.rpartition(".")
    target = env if section == ":env:" else files.setdefault(section, {})
    target[name] = ast.literal_eval(value)
files.setdefault("global", {}).update(env)        # PIP_* variables win over the files
out, copy, mount = [], set(), set()
for section, items in files.items():
    out.append(f"[{section}]")
    for name, value in items.items():
        out.append(f"{name} = {value}")
        for word in value.split():
            path = word[len("file://"):] if word.startswith("file://") else word
            if not os.path.isabs(path) or not os.path.exists(path):
                continue
            if os.path.isfile(path):
                copy.add(path)
            else:   # a file:// index: mount the folder above simple/, which holds the files/ it links to
                mount.add(os.path.dirname(path.rstrip("/")) if path.rstrip("/").endswith("/simple") else path)
root = sys.argv[1]
with open(os.path.join(root, "etc/pip.conf"), "w") as f:
    f.write("\n".join(out) + "\n")
with open(os.path.join(root, "..", "pip-copy.txt"), "w") as f:
    f.write("".join(p + "\n" for p in sorted(copy)))
with open(os.path.join(root, "..", "pip-mount.txt"), "w") as f:
    f.write("".join(p + "\n" for p in sorted(mount)))
' "$ROOTFS.new"
KEY=$( { cat "$ROOTFS.new/etc/pip.conf"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null;
         while read -r f; do cat "$f"; done < "$W/pip-copy.txt"; } | sha256sum | cut -c1-16)
if podman image exists "$BASE" && [ "$(cat "$STORE/base.key" 2>/dev/null)" = "$KEY" ]; then
  say "base stand-in $BASE: cached in $W"
else
  MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
  MIRROR=${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  rm -rf "$ROOTFS"
  # mmdebstrap: debootstrap's job with apt's parallel downloads; no docs, man pages or locales, as slim
  timed mmdebstrap --mode=root --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$ROOTFS" "$MIRROR" > "$W/bootstrap.log" 2>&1 || { tail -20 "$W/bootstrap.log"; fail "mmdebstrap"; }
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
  cp "$ROOTFS.new/etc/pip.conf" "$ROOTFS/etc/pip.conf"
  while read -r f; do mkdir -p "$ROOTFS$(dirname "$f")"; cp "$f" "$ROOTFS$f"; done < "$W/pip-copy.txt"
  # as in python:3.11-slim: python and pip on /usr/local/bin, pip may install into the system
  rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
  podman rmi -f "$BASE" >/dev/null 2>&1 || true
  tar -C "$ROOTFS" -c . | timed podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    - "$BASE" >/dev/null
  rm -rf "$ROOTFS"
  echo "$KEY" > "$STORE/base.key"
fi
rm -rf "$ROOTFS.new"

# --- build the Dockerfile as committed -----------------------------------------------------------
volumes=()
while read -r d; do volumes+=(--volume "$d:$d:ro"); done < "$W/pip-mount.txt"
timed buildah build --isolation chroot --pull=never "${volumes[@]}" -f "$CTX/Dockerfile" -t "$IMAGE" "$CTX" \
  > "$W/build.log" 2>&1 || { tail -30 "$W/build.log"; fail "buildah build (log: $W/build.log)"; }
grep -E '^lungcad ' "$W/build.log" | tail -1 | sed 's/^/docker: built, /' >&3 || true
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || fail "the image's user is '${user:-root}'"

# --- run detect inside: input read-only, output writable by uid 1000 only, no network ------------
OUT=$W/out
rm -rf "$OUT" && install -d -m 0755 -o 1000 -g 1000 "$OUT"
timed podman run --rm --network none --pull never \
  -v "$REPO/sample_data:/data/in:ro" -v "$OUT:/data/out" \
  "$IMAGE" detect /data/in -o /data/out --no-progress > "$W/detect.log" 2>&1 \
  || { tail -30 "$W/detect.log"; fail "detect in the container (log: $W/detect.log)"; }
tail -1 "$W/detect.log" | sed 's/^/docker: /' >&3

# --- check the outputs ---------------------------------------------------------------------------
[ -z "$REF_PID" ] || wait "$REF_PID" || { tail -20 "$W/ref.log"; fail "detect outside the container"; }
python3 - "$OUT" "${REF_PID:+$W/ref}" <<'EOF'
import csv, json, math, os, sys
out, ref = sys.argv[1], sys.argv[2]
def fail(msg):
    sys.exit(f"docker: FAILED: {msg}")
for name in ("candidates.csv", "patients.csv", "report.html", "run.json"):
    if not os.path.isfile(os.path.join(out, name)):
        fail(f"{name} missing from the container's output")
run = json.load(open(os.path.join(out, "run.json")))
if (run["this_run"]["done"], run["this_run"]["failed"]) != (3, 0):
    fail(f"run.json says {run['this_run']}, want 3 done and 0 failed")
patients = list(csv.DictReader(open(os.path.join(out, "patients.csv"))))
ids = sorted(p["patient_id"] for p in patients)
if ids != ["SYN2017-000", "SYN2017-001", "SYN2017-002"]:
    fail(f"patients.csv has {ids}")
if not all(0 <= float(p["cancer_probability"]) <= 1 for p in patients):
    fail("a cancer_probability outside [0, 1]")
cands = list(csv.DictReader(open(os.path.join(out, "candidates.csv"))))
if not cands or {c["patient_id"] for c in cands} - set(ids):
    fail("candidates.csv is empty or names unknown patients")
html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
if "<html" not in html.lower() or not all(i in html for i in ids):
    fail("report.html is not a report of the three patients")
owners = {os.stat(os.path.join(d, f)).st_uid for d, _, fs in os.walk(out) for f in fs}
if owners != {1000}:
    fail(f"the container's files belong to uids {sorted(owners)}, want only 1000 (the image's user)")
msg = f"outputs ok: 3 done, 0 failed, {len(cands)} candidates, files owned by uid 1000"
if ref:
    a, b = open(os.path.join(out, "candidates.csv")).read(), open(os.path.join(ref, "candidates.csv")).read()
    if a == b:
        msg += "; candidates.csv identical to a run outside the container"
    else:
        ra, rb = list(csv.reader(a.splitlines())), list(csv.reader(b.splitlines()))
        if len(ra) != len(rb) or ra[0] != rb[0]:
            fail(f"candidates.csv: {len(ra) - 1} rows in the container, {len(rb) - 1} outside")
        def close(x, y):
            try:
                return math.isclose(float(x), float(y), rel_tol=1e-4, abs_tol=1e-4)
            except ValueError:
                return x == y
        bad = [(i, c) for i, (x, y) in enumerate(zip(ra, rb)) for c, (u, v) in enumerate(zip(x, y)) if not close(u, v)]
        if bad:
            i, c = bad[0]
            fail(f"candidates.csv differs from outside: {len(bad)} cells, first row {i} {ra[0][c]}: {ra[i][c]} vs {rb[i][c]}")
        msg += "; candidates.csv equal to a run outside the container within 1e-4"
print("docker:", msg, file=sys.stderr)
EOF

# --- the gpu extra -------------------------------------------------------------------------------
wait "$GPU_PID" || { tail -20 "$W/gpu-dry-run.log"; fail 'pip install --dry-run ".[gpu]"'; }
grep -q '^Would install .*jax-cuda12-plugin' "$W/gpu-dry-run.log" \
  || grep -q "jax-cuda12-plugin.* in " "$W/gpu-dry-run.log" \
  || { tail -5 "$W/gpu-dry-run.log"; fail '".[gpu]" does not bring jax-cuda12-plugin'; }
say 'gpu extra resolves (pip install --dry-run ".[gpu]")'

# --- clean up: the image and its containers are 3 GB under vfs -----------------------------------
if [ "${LUNGCAD_DOCKER_KEEP:-0}" != 1 ]; then
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$W/context" "$W/out" "$W/ref"
fi
say "ok in $(( SECONDS - START ))s"
