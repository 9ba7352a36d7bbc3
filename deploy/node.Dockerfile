# syntax=docker/dockerfile:1
# A provider node: NVIDIA's Triton Inference Server with the idlegrid node
# agent beside it. Triton serves the provider's model repository on loopback
# only; the agent registers the node with the registry, holds one outbound
# link to the marketplace's relay (jobs arrive over it), heartbeats, and
# drains on shutdown. No inbound port: it works from behind NAT.
#
#   docker build -f deploy/node.Dockerfile -t idlegrid-node:dev .
#   docker run --gpus all \
#     -v /srv/models:/models:ro -v /srv/idlegrid:/etc/idlegrid:ro \
#     -e IDLEGRID_REGISTRY_ADDR=registry.example.org:50052 \
#     -e IDLEGRID_RELAY_ADDR=relay.example.org:50055 \
#     -e IDLEGRID_TLS_CA=/etc/idlegrid/ca.crt idlegrid-node:dev
#
# /etc/idlegrid holds node.toml (prices, the provider token file); see
# deploy/README.md.

# Triton 25.x images are Ubuntu 24.04 with Python 3.12 (idlegrid needs >= 3.11).
ARG TRITON_TAG=25.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv curl \
 && rm -rf /var/lib/apt/lists/*
# The agent lives in its own virtual environment, apart from the Python that
# Triton's backends use. Only the base package and NVML: the `node` extra is
# the CPU demo (pytriton, llama.cpp), which a real Triton does not need.
COPY . /src
RUN python3 -m venv /opt/idlegrid \
 && /opt/idlegrid/bin/pip install /src nvidia-ml-py \
 && rm -rf /src
COPY --chmod=0755 deploy/node-entrypoint.sh /usr/local/bin/idlegrid-node

# IDLEGRID_HOME keeps the node id across restarts (a volume: a new container
# on the same machine stays the same node).
RUN mkdir -p /var/lib/idlegrid && chown triton-server /var/lib/idlegrid
VOLUME /var/lib/idlegrid

ENV PATH=/opt/idlegrid/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IDLEGRID_HOME=/var/lib/idlegrid \
    IDLEGRID_LOG_FORMAT=json \
    IDLEGRID_MODEL_REPOSITORY=/models \
    IDLEGRID_NODE_CONFIG=/etc/idlegrid/node.toml
# triton-server is the unprivileged user NVIDIA's image ships.
USER triton-server
WORKDIR /tmp
# No EXPOSE: Triton listens on loopback only and the agent dials out to the
# relay (IDLEGRID_RELAY_ADDR); the node needs no inbound port.
ENTRYPOINT ["/usr/local/bin/idlegrid-node"]
