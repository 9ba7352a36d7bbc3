"""Names of the demo models (importable without the heavy node extras)."""

LLM_MODEL_NAME = "smollm2-135m-instruct"
ECHO_MODEL_NAME = "echo"
MODEL_NAMES = (LLM_MODEL_NAME, ECHO_MODEL_NAME)
