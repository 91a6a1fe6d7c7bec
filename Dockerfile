# syntax=docker/dockerfile:1
# The soundstream service: one command, `soundstream`, serving by default.
#
#   make image          builds localhost/soundstream:dev with podman (scripts/image)
#   make image-smoke    runs it against the local PostgreSQL and RabbitMQ
#
# BASE is any Python 3.11 image with a working `python3 -m venv`: the official
# slim image by default, or a Debian 12 base made from Debian's packages
# (scripts/image-base) where no registry can be reached. Every stage starts from
# it, so the virtual environment's interpreter link resolves in the runtime one.
#
# The image is made for a read-only root filesystem: it writes nothing at run
# time but numba's cache of compiled kernels, in NUMBA_CACHE_DIR under /tmp
# (mount a tmpfs or emptyDir there; without one the kernels compile in every
# worker instead). Kubernetes probes /healthz and /readyz, so there is no
# HEALTHCHECK.
ARG BASE=docker.io/library/python:3.11-slim
# checkov:skip=CKV_DOCKER_7:Every stage starts FROM ${BASE} (or from one that does), whose default above is a versioned tag; checkov does not expand ARGs

# -- requirements: the dependencies named in pyproject.toml, as a requirements
# file, so that editing anything else there (the test extras, tool settings)
# leaves the next stage, and the image's largest layer, as they were.
FROM ${BASE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
      > requirements.txt

# -- deps: the service's virtual environment at /opt/soundstream with the
# dependencies alone; a change to the code leaves it as it was. pip lives in a
# virtual environment of its own (/opt/pip) and installs into the service's
# (PIP_PYTHON), which never holds pip. pip's settings (index, certificate
# authority) come from a pip.conf that the build may pass as the secret
# `pip.conf`; without one pip uses its defaults. The dependencies are manylinux
# wheels: no compiler is needed. What the service never runs goes: the test
# suites and C headers of numpy, numba, llvmlite and pyarrow.
FROM ${BASE} AS deps
# A named user for the numeric id the deployments run as (runAsUser 10001), so
# that libraries asking for a user name or home directory get an answer.
RUN groupadd --system --gid 10001 soundstream \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin soundstream \
 && python3 -m venv /opt/pip \
 && python3 -m venv --without-pip /opt/soundstream
ENV PATH=/opt/pip/bin:$PATH \
    PIP_PYTHON=/opt/soundstream/bin/python
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=cache,id=soundstream-pip,target=/root/.cache/pip,sharing=locked \
    pip install --requirement /tmp/requirements.txt \
 && site=$(/opt/soundstream/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && find "$site/numpy" "$site/numba" "$site/llvmlite" "$site/pyarrow" -depth -type d -name tests \
      -exec rm -rf {} + \
 && rm -rf "$site/pyarrow/include" "$site/pyarrow/src"

# -- builder: the package, built into a wheel from the source (not editable, no
# extras) and installed under /app, the few files the runtime adds to the
# environment; then checked in place.
FROM deps AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY soundstream ./soundstream
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=cache,id=soundstream-pip,target=/root/.cache/pip,sharing=locked \
    pip install --no-deps --no-warn-script-location --root /app . \
 && cp -a /app/. / \
 && pip check \
 && /opt/soundstream/bin/soundstream --help > /dev/null

# -- runtime
FROM ${BASE}
ARG BASE
ARG VERSION=""
LABEL org.opencontainers.image.title="soundstream" \
      org.opencontainers.image.description="Sensor audio in over AMQP, spectral features out over HTTP." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
# checkov:skip=CKV_DOCKER_2:Kubernetes probes /healthz and /readyz; the image has no HEALTHCHECK on purpose
# The runtime stage runs nothing: it takes the user, the environment and the
# package from the stages above. Owned by root, so the service cannot change
# its own code.
COPY --from=deps /etc/passwd /etc/group /etc/
COPY --from=deps /opt/soundstream /opt/soundstream
COPY --from=builder /app/ /
ENV PATH=/opt/soundstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba
WORKDIR /opt/soundstream
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["soundstream"]
CMD ["serve"]
