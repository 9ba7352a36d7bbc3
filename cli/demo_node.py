"""The demo provider node: the demo Triton (idlegrid.demo) in front of the
node agent (idlegrid.node), with the prices the agent offers its models at.

Putting the two together is a command's job (``idlegrid up``, ``idlegrid
node start --demo``, the benchmarks and the tests): the agent serves any
provider's Triton and knows nothing of the demo, and the demo knows nothing
of the agent.
"""

from __future__ import annotations

from idlegrid.node.config_file import ModelPricing, NodeConfig


def node_config() -> NodeConfig:
    """Prices for the demo Triton's models (reads the weights to digest them)."""
    # Here, not at the top: the demo's modules need the node extras (llama.cpp).
    from idlegrid.demo.names import ECHO_MODEL_NAME, LLM_MODEL_NAME
    from idlegrid.demo.smollm2 import N_CTX_DEFAULT
    from idlegrid.models.weights import weights_sha256

    return NodeConfig(region="local", labels={"demo": "true"}, models={
        LLM_MODEL_NAME: ModelPricing(name=LLM_MODEL_NAME, kind="llm", price_per_million_input_tokens=50_000,
                                     price_per_million_output_tokens=200_000, context_length=N_CTX_DEFAULT,
                                     weights_digest=f"sha256:{weights_sha256()}"),
        ECHO_MODEL_NAME: ModelPricing(name=ECHO_MODEL_NAME, kind="tensor", price_per_request=10),
    })
