# lungcad: batch lung-nodule CAD.  Build:  docker build -t lungcad .
# Run on a folder of scans:  docker run --rm -v /data:/data lungcad detect /data/in -o /data/out
# GPU node (NVIDIA):  docker build --build-arg EXTRAS=gpu -t lungcad:gpu .
#                     docker run --gpus all -e KERAS_BACKEND=jax -v /data:/data lungcad:gpu detect /data/in -o /data/out
# Ray cluster node:   docker build --build-arg EXTRAS=gpu,ray -t lungcad:ray .   (then detect ... --engine ray)
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg

WORKDIR /opt/lungcad
COPY pyproject.toml README.md ./
COPY lungcad ./lungcad
COPY pipelines ./pipelines
RUN pip install ".${EXTRAS:+[$EXTRAS]}" && lungcad --version

# Runs as an unprivileged user; mount input read-only and an output folder writable.
RUN useradd --create-home --uid 1000 lungcad
USER lungcad
WORKDIR /work
ENTRYPOINT ["lungcad"]
CMD ["--help"]
