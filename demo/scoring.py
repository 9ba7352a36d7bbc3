"""Teacher-forced scoring: how likely the model finds a given output after a
given prompt, token by token, in one prefill pass (no sampling, no decoding
loop), which is what a spot check needs and much cheaper than generating.

For output tokens ``y_1..y_n`` after prompt tokens ``x``, position ``i``
reads the logits the model gives after ``x, y_1..y_{i-1}`` and reports

    logprob_i = log softmax(logits / T)[y_i]
    rank_i    = 1 + #{tokens whose logit is higher than y_i's}   (1 = the greedy choice)
    entropy_i = -sum p log p  of softmax(logits / T)             (the expected -logprob_i
                                                                  of an honest sample)

``T`` is the job's temperature (1 when 0 or unset: a rank does not depend
on it). Only the positions that predict an output token ask llama.cpp for
logits, so the prompt costs its prefill and nothing more.
"""

from __future__ import annotations

import dataclasses

import llama_cpp
import numpy as np

from idlegrid.common.errors import InvalidArgument

OUTPUT_TOKENS_MAX = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Scores:
    logprobs: np.ndarray  # float32 [n]
    ranks: np.ndarray  # uint32 [n]
    entropies: np.ndarray  # float32 [n]
    num_input_tokens: int

    @property
    def num_output_tokens(self) -> int:
        return int(self.logprobs.size)


def _position(logits: np.ndarray, token: int, temperature: float) -> tuple[float, int, float]:
    logits = logits.astype(np.float64)
    rank = int(np.count_nonzero(logits > logits[token])) + 1
    z = logits / temperature
    z -= z.max()
    p = np.exp(z)
    total = p.sum()
    logp = z - np.log(total)
    p /= total
    return float(logp[token]), rank, float(-(p * logp).sum())


def score(
    llm: llama_cpp.Llama, prompt_tokens: list[int], output_tokens: list[int], *, temperature: float = 1.0
) -> Scores:
    """Scores ``output_tokens`` after ``prompt_tokens``. Blocking; one call at
    a time per ``Llama`` (it has one KV cache, cleared here)."""
    if not prompt_tokens:
        raise InvalidArgument("the prompt has no tokens")
    if len(output_tokens) > OUTPUT_TOKENS_MAX:
        raise InvalidArgument(f"at most {OUTPUT_TOKENS_MAX} output tokens are scored")
    tokens = prompt_tokens + output_tokens
    if len(tokens) > llm.n_ctx():
        raise InvalidArgument(f"prompt and output hold {len(tokens)} tokens; the context window is {llm.n_ctx()}")
    temperature = temperature if temperature > 0 else 1.0
    n_vocab = llm.n_vocab()
    first = len(prompt_tokens) - 1  # the position whose logits predict the first output token
    out: list[tuple[float, int, float]] = []
    llm.reset()
    llm._ctx.kv_cache_clear()
    batch = llm._batch.batch  # capacity: n_batch tokens
    for start in range(0, len(tokens), llm.n_batch):
        chunk = tokens[start:start + llm.n_batch]
        batch.n_tokens = len(chunk)
        wanted = []
        for j, token in enumerate(chunk):
            pos = start + j
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = first <= pos < len(tokens) - 1
            if batch.logits[j]:
                wanted.append(j)
        llm._ctx.decode(llm._batch)
        for j in wanted:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, j), shape=(n_vocab,))
            out.append(_position(logits, tokens[start + j + 1], temperature))
    llm.reset()
    llm._ctx.kv_cache_clear()
    columns = list(zip(*out, strict=True)) if out else [(), (), ()]
    return Scores(
        logprobs=np.asarray(columns[0], dtype=np.float32),
        ranks=np.asarray(columns[1], dtype=np.uint32),
        entropies=np.asarray(columns[2], dtype=np.float32),
        num_input_tokens=len(prompt_tokens),
    )
