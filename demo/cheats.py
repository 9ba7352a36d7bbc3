"""Cheating modes of the demo node, for tests, benchmarks and operators'
drills: what a dishonest provider would do to be paid for work it did not
do. Off unless asked for (``--cheat MODE``, ``--cheat-rate F``).

| mode | what the node does on a cheated job | what catches it |
|---|---|---|
| wrong-model | answers with another model's output: random tokens, or the same weights sampled at temperature 2 (a much worse model), for max_tokens | spot checks (likelihood and rank under the reference model; greedy jobs differ) |
| inflate-tokens | serves honestly but reports INFLATE_FACTOR times its token counts | billing counts with the platform's tokenizer; the counts are cross-checked |
| truncate | stops after a quarter of max_tokens but claims finish_reason "length" and max_tokens tokens | billing counts what was delivered; spot checks (length claimed, not delivered) |

With ``rate`` below 1, each job is cheated with probability ``rate``, drawn
from a generator seeded with ``seed``: the same node cheats on the same jobs
in every run. ``after`` > 0 serves that many jobs honestly first, as a
cheater would to pass the registry's verification (its canaries).
"""

from __future__ import annotations

import codecs
import dataclasses
import random
from collections.abc import Iterator

import llama_cpp

from idlegrid.demo.generation import FINISH_LENGTH, Chunk, generate
from idlegrid.demo.names import CHEAT_MODES, INFLATE_TOKENS, TRUNCATE, WRONG_MODEL
from idlegrid.demo.sampling import SamplingParams

MODES = CHEAT_MODES

INFLATE_FACTOR = 3
TRUNCATE_DIVISOR = 4  # a truncating node generates max_tokens // 4 tokens (at least one)
OTHER_MODEL_TEMPERATURE = 2.0
_RANDOM_TOKEN_TRIES = 64


@dataclasses.dataclass(frozen=True, slots=True)
class CheatOptions:
    mode: str | None = None
    rate: float = 1.0  # share of jobs cheated on
    seed: int = 0
    after: int = 0  # jobs served honestly before any cheating

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"cheat mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"cheat rate must be in [0, 1], got {self.rate}")
        if self.after < 0:
            raise ValueError(f"cheat after must be >= 0, got {self.after}")


@dataclasses.dataclass(frozen=True, slots=True)
class Cheat:
    """One cheated job: the mode, and a seed for what it makes up."""

    mode: str
    seed: int


class Cheater:
    """Decides, job by job, whether to cheat (seeded; call from one thread)."""

    def __init__(self, options: CheatOptions) -> None:
        self.options = options
        self._rng = random.Random(options.seed)
        self._jobs = 0

    def pick(self) -> Cheat | None:
        if self.options.mode is None:
            return None
        self._jobs += 1
        draw, seed = self._rng.random(), self._rng.randrange(2**32)
        if self._jobs <= self.options.after:
            return None
        return Cheat(self.options.mode, seed) if draw < self.options.rate else None


def run_params(cheat: Cheat | None, params: SamplingParams) -> SamplingParams:
    """The parameters the node really generates with."""
    if cheat is not None and cheat.mode == TRUNCATE:
        return dataclasses.replace(params, max_tokens=max(1, params.max_tokens // TRUNCATE_DIVISOR))
    return params


def chunks(
    cheat: Cheat | None, llm: llama_cpp.Llama, prompt_tokens: list[int], params: SamplingParams
) -> Iterator[Chunk]:
    """What the node sends for this job (blocking; on the generation thread)."""
    if cheat is None or cheat.mode != WRONG_MODEL:
        return generate(llm, prompt_tokens, params)
    rng = random.Random(cheat.seed)
    if rng.random() < 0.5:
        return _random_text(llm, params.max_tokens, rng)
    other = SamplingParams(
        max_tokens=params.max_tokens, temperature=OTHER_MODEL_TEMPERATURE, seed=rng.randrange(2**32)
    )
    return generate(llm, prompt_tokens, other)


def _random_token(llm: llama_cpp.Llama, rng: random.Random) -> int:
    vocab = llm._model.vocab
    for _ in range(_RANDOM_TOKEN_TRIES):
        token = rng.randrange(llm.n_vocab())
        if not (llama_cpp.llama_vocab_is_control(vocab, token) or llama_cpp.llama_vocab_is_eog(vocab, token)):
            return token
    raise RuntimeError("no ordinary token found in the vocabulary")


def _random_text(llm: llama_cpp.Llama, max_tokens: int, rng: random.Random) -> Iterator[Chunk]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in range(max_tokens):
        text = decoder.decode(llm.detokenize([_random_token(llm, rng)]))
        if i + 1 == max_tokens:
            yield Chunk(text + decoder.decode(b"", final=True), 1, FINISH_LENGTH)
            return
        yield Chunk(text, 1)


def reported_input_tokens(cheat: Cheat | None, n_in: int) -> int:
    return n_in * INFLATE_FACTOR if cheat is not None and cheat.mode == INFLATE_TOKENS else n_in


def reported_chunk(cheat: Cheat | None, chunk: Chunk, *, sent_tokens: int, max_tokens: int) -> Chunk:
    """The chunk as the node reports it. ``sent_tokens``: the output tokens
    reported before this chunk; ``max_tokens``: what the job asked for."""
    if cheat is None:
        return chunk
    if cheat.mode == INFLATE_TOKENS:
        return dataclasses.replace(chunk, num_output_tokens=chunk.num_output_tokens * INFLATE_FACTOR)
    if cheat.mode == TRUNCATE and chunk.finish_reason is not None:
        # Claims the whole budget was generated and used up.
        claimed = max(chunk.num_output_tokens, max_tokens - sent_tokens)
        return dataclasses.replace(chunk, num_output_tokens=claimed, finish_reason=FINISH_LENGTH)
    return chunk
