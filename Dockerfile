# syntax=docker/dockerfile:1
# One image for every edgeoffload unit; the command selects the unit:
#   docker run --rm -p 8080:8080 edgeoffload:0.1.0 serve inference
#   ... serve preprocessor | serve webserver
# Build (deploy/README.md has the k3s walkthrough):
#   docker build -t edgeoffload:0.1.0 .
#   docker build -t edgeoffload:0.1.0-yolo --build-arg FETCH_YOLO=1 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a self-contained venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies come from pyproject.toml alone, so editing the code reuses this (large) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --requirement requirements.txt
COPY README.md ./
COPY edgeoffload ./edgeoffload
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib

# ---------------------------------------------------------------- models: the default detector
# /models/inference.yaml names the inference unit's default detector (INFER_CONFIG points at
# it; ConfigMap INFER_* variables override it). DETECTOR: haar-face | hog-people (built into
# OpenCV, no files) | darknet. FETCH_YOLO=1 downloads the original demo's yolov3-tiny
# .cfg/.weights into /models (DETECTOR then defaults to darknet), checking the weights' size,
# and their SHA-256 when YOLO_WEIGHTS_SHA256 is given, so a truncated download fails the build.
FROM ${PYTHON_IMAGE} AS models
ARG FETCH_YOLO=0
ARG DETECTOR=""
ARG YOLO_WEIGHTS_SHA256=""
COPY deploy/fetch_models.py /usr/local/bin/fetch_models.py
RUN python /usr/local/bin/fetch_models.py /models --fetch-yolo "${FETCH_YOLO}" --detector "${DETECTOR}" \
        --weights-sha256 "${YOLO_WEIGHTS_SHA256}"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
LABEL org.opencontainers.image.title="edgeoffload" \
      org.opencontainers.image.description="Edge-cloud offloading testbed: inference, preprocessor and web server units"
RUN groupadd --system --gid "${UID}" edgeoffload \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /nonexistent --no-create-home \
               --shell /usr/sbin/nologin edgeoffload
COPY --from=build /opt/venv /opt/venv
COPY --from=models /models /models
# The committed experiment results, shown under the webserver's /experiments (WEB_RESULTS_DIR).
COPY experiments/results /srv/results
# The root filesystem is read-only in the cluster: nothing may write bytecode, HOME is /tmp
# (an emptyDir; gunicorn 27 also keeps its control socket under $HOME), and the Prometheus
# multiprocess files live there too. PROMETHEUS_MULTIPROC_DIR must be set before gunicorn
# starts: prometheus_client picks its value store when it is first imported.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    BIND=0.0.0.0:8080 \
    PROBE_BIND=0.0.0.0:8081 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics \
    MALLOC_MMAP_THRESHOLD_=67108864 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    INFER_CONFIG=/models/inference.yaml
WORKDIR /tmp
USER ${UID}:${UID}
EXPOSE 8080 8081
ENTRYPOINT ["edgeoffload"]
CMD ["serve", "inference"]
