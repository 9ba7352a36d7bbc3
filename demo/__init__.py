"""The demo provider node's inference server: a real Triton Inference Server
on the CPU (via pytriton) serving SmolLM2-135M-Instruct (llama-cpp-python) as
``smollm2-135m-instruct`` with vLLM-backend tensors, its scoring companion
``smollm2-135m-instruct-score`` (teacher-forced per-token log-likelihoods and
ranks, what a trusted node runs for spot checks), and a tensor model ``echo``.
For tests and drills it can cheat (cheats.py: ``--cheat MODE``).

    triton = start_demo_triton()          # a child process; ready on return
    ... tritonclient.grpc.InferenceServerClient(triton.grpc_url) ...
    triton.stop()                         # or triton.kill() (SIGKILL)

Tensor contracts: llm_model.py, scoring_model.py and echo_model.py. Command
line: __main__.py.
"""

from idlegrid.demo.launcher import DemoTriton, start_demo_triton
from idlegrid.demo.names import ECHO_MODEL_NAME, LLM_MODEL_NAME, MODEL_NAMES, SCORE_MODEL_NAME
from idlegrid.models.weights import weights_sha256

__all__ = [
    "ECHO_MODEL_NAME",
    "LLM_MODEL_NAME",
    "MODEL_NAMES",
    "SCORE_MODEL_NAME",
    "DemoTriton",
    "start_demo_triton",
    "weights_sha256",
]
