"""Names of the demo models and of its cheating modes (importable without
the heavy node extras)."""

LLM_MODEL_NAME = "smollm2-135m-instruct"
ECHO_MODEL_NAME = "echo"
# Teacher-forced scoring of LLM_MODEL_NAME's outputs, for spot checks run on
# trusted nodes (scoring_model.py); served, never offered for sale.
SCORE_MODEL_NAME = LLM_MODEL_NAME + "-score"
MODEL_NAMES = (LLM_MODEL_NAME, ECHO_MODEL_NAME, SCORE_MODEL_NAME)

# The demo node's cheating modes (cheats.py).
WRONG_MODEL, INFLATE_TOKENS, TRUNCATE = "wrong-model", "inflate-tokens", "truncate"
CHEAT_MODES = (WRONG_MODEL, INFLATE_TOKENS, TRUNCATE)
