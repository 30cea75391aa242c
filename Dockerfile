# syntax=docker/dockerfile:1.7
# The pi2i image: every KFP component (components/image.py pins it), the RayJob head/workers and the serving
# Deployment run this one image. Build:  docker build -t ghcr.io/pi2i/pi2i:0.1.0 .
# CPU torch by default; for GPU workers build with  --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib \
    OMP_WAIT_POLICY=PASSIVE

# git: version names; curl: probes while debugging. No compilers needed (all wheels).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pi2i \
 && useradd --system --uid 10001 --gid pi2i --home-dir /app --shell /usr/sbin/nologin pi2i

WORKDIR /app
# Dependencies first (cached layer): torch from its CPU index, then the project's pins.
COPY pyproject.toml README.md ./
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && python - <<'PY'
import subprocess, sys, tomllib
deps = [d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith("torch")]
subprocess.check_call([sys.executable, "-m", "pip", "install", *deps])
PY

# The project itself (core, components, pipelines, serving) and the Feast repository template.
COPY pi2i ./pi2i
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY feature_repo ./feature_repo
RUN pip install --no-deps . \
 && python -c "import pi2i, components, pipelines, kfp, ray, torch; print('pi2i', pi2i.__version__, 'torch', torch.__version__)" \
 && chown -R pi2i:pi2i /app

USER 10001:10001
EXPOSE 3000 8265 6379
# Components override the command (KFP executor); the Deployment runs `pi2i serve`.
ENTRYPOINT []
CMD ["pi2i", "--help"]
