# One image for every Model Custody component; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY services services
COPY workers workers
COPY audit audit
# CPU-only torch from the PyTorch index: the default PyPI wheel pulls several GB of CUDA libraries.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
RUN useradd --create-home --uid 10001 custody && mkdir -p /data && chown custody /data
USER custody
ENV MODELCUSTODY_DATA_DIR=/data
EXPOSE 8080 8000 9101 9102
