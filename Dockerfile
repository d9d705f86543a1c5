# Two images of the one `pagoda` distribution:
#   engine    `pagoda serve` on a CUDA-capable PyTorch base (and `pagoda fetch-model`)
#   operator  `pagoda operator` and `pagoda gateway` on slim Python, without torch
#
#   podman build --format docker --target engine -t pagoda-engine .
#   podman build --format docker --target operator -t pagoda-operator .
#
# The bases are arguments (a mirror, a pinned digest, another CUDA release):
# PYTHON_IMAGE must provide python3 (3.11+) with venv, ENGINE_BASE python3
# (3.10+) with venv and torch. Each image installs into its own venv, so
# bases whose system Python is externally managed (Debian's) work too.
ARG PYTHON_IMAGE=docker.io/library/python:3.12-slim-bookworm
ARG ENGINE_BASE=docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
# Numeric, so bases without useradd work; the operator's default run_as_user.
ARG UID=1000

# The wheel, and each image's requirements read from pyproject.toml: the
# dependency layers below change only when pyproject.toml does.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; extras = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; \
[open(f'/{name}.txt', 'w').write('\n'.join(r for e in groups for r in extras[e]) + '\n') \
 for name, groups in (('engine', ('engine', 'server')), ('operator', ('operator',)))]"
RUN python3 -m venv /opt/build
COPY README.md ./
COPY pagoda pagoda
COPY engine engine
COPY kernels kernels
COPY operator operator
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE} AS operator
ARG UID
ENV VIRTUAL_ENV=/opt/pagoda PATH=/opt/pagoda/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
RUN python3 -m venv /opt/pagoda
COPY --from=wheel /operator.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist /tmp/requirements.txt
USER ${UID}:${UID}
ENTRYPOINT ["pagoda"]
CMD ["operator"]

FROM ${ENGINE_BASE} AS engine
ARG UID
# A venv over the base's packages: torch stays the base's own build.
ENV VIRTUAL_ENV=/opt/pagoda PATH=/opt/pagoda/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
RUN python3 -m venv --system-site-packages /opt/pagoda
COPY --from=wheel /engine.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist /tmp/requirements.txt
USER ${UID}:${UID}
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=30s --start-period=10m \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PAGODA_PORT', 8000)}/health\", timeout=25)"]
# The model directory is the argument (or PAGODA_MODEL); every flag also reads
# PAGODA_<FLAG>; set the port as PAGODA_PORT, which the healthcheck reads too.
ENTRYPOINT ["pagoda", "serve"]
