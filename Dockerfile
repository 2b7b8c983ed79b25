# One image for every Model Custody component; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# bubblewrap: the worker's sandbox for pickle-based suspects (docs/operations.md); unused unless allowed.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*

# The dependency layer: rebuilt only when pyproject.toml or the lock changes, not on every code edit.
# Empty package directories stand in for the code so pip can resolve the project's requirements.
COPY pyproject.toml README.md LICENSE requirements.lock ./
RUN mkdir -p services workers audit \
 && touch services/__init__.py workers/__init__.py audit/__init__.py \
 # CPU-only torch from the PyTorch index: the default PyPI wheel pulls several GB of CUDA libraries.
 && pip install --extra-index-url https://download.pytorch.org/whl/cpu -c requirements.lock '.[all]' \
 && pip uninstall -y modelcustody \
 && rm -rf services workers audit build

COPY services services
COPY workers workers
COPY audit audit
RUN pip install --no-deps . && rm -rf build

RUN useradd --create-home --uid 10001 custody && mkdir -p /data && chown custody /data
USER custody
ENV MODELCUSTODY_DATA_DIR=/data
EXPOSE 8080 8000 9101 9102
