"""The decoding loop: greedy, multinomial sampling and beam search over a `StepModel`, in numpy.

Ported from `transformers.generation.utils.GenerationMixin` (4.57): `_sample` (greedy and sampling),
`_beam_search` with its helpers `_get_top_k_continuations`, `_get_running_beams_for_next_iteration`,
`_update_finished_beams`, `_check_early_stop_heuristic` and `_beam_search_has_unfinished_sequences`, and the length
rules of `_prepare_generated_length` / `_validate_generated_length`. The token choices are the same as
`transformers.generate`'s for greedy and beam search; sampling draws from the same distribution with numpy's
`Generator` (seeded by `GenerationSettings.seed`), so it is reproducible but not bit-equal to torch's generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from localinfer.decoding.processors import build_processors, log_softmax, top_candidates
from localinfer.scores import softmax

StopCallback = Callable[[list[int]], bool]


class StepModel(Protocol):
    """One decoder that keeps each row's past key/values (and encoder output) between calls."""

    vocab_size: int

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed `tokens` [rows, n] int64, each row's NEW tokens (the whole prompt on a causal model's first call,
        then 1; for an encoder-decoder the decoder tokens, first the decoder start), and return the next-token
        logits at the last position, [rows, vocab] float32."""
        ...

    def reorder(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (int64 indices into the current rows, repeats allowed), in that order."""
        ...


@dataclass(frozen=True)
class GenerationSettings:
    """Every `transformers.GenerationConfig` value the loop uses, with its defaults, plus `seed`.

    `max_length_is_default` is `generate`'s `has_default_max_length`: True unless `max_length` was passed to
    `generate` as an argument (the pipelines pass it only when the request has it); with it, a `max_length` equal to
    the library default (20) counts new tokens, capped at `max_position_embeddings`. `stop_strings` and `prefix`
    (the text a pipeline puts before the input: the model config's `prefix` or its task's) are the caller's to
    apply: it decodes (the `stop` callback of `generate`) and tokenizes."""

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    max_length_is_default: bool = True
    max_position_embeddings: int | None = None
    max_time: float | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    early_stopping: bool | str = False
    length_penalty: float = 1.0
    temperature: float | None = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    min_p: float | None = None
    typical_p: float | None = 1.0
    epsilon_cutoff: float | None = 0.0
    eta_cutoff: float | None = 0.0
    repetition_penalty: float | None = 1.0
    no_repeat_ngram_size: int | None = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple[int, ...] | None = None
    remove_invalid_values: bool = False
    exponential_decay_length_penalty: tuple[int, float] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    forced_decoder_ids: tuple[tuple[int, int], ...] | None = None
    renormalize_logits: bool = False
    stop_strings: tuple[str, ...] | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    is_encoder_decoder: bool = False
    prefix: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        # Token id lists may come as an int or a list (as in generation_config.json): store tuples.
        for name in ("eos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens"):
            value = getattr(self, name)
            if isinstance(value, int):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        elif self.stop_strings is not None:
            object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if self.bad_words_ids is not None:
            object.__setattr__(self, "bad_words_ids", tuple(tuple(int(t) for t in w) for w in self.bad_words_ids))
        if self.forced_decoder_ids is not None:
            pairs = tuple((int(i), int(t)) for i, t in self.forced_decoder_ids)
            object.__setattr__(self, "forced_decoder_ids", pairs)
        if isinstance(self.sequence_bias, dict):
            object.__setattr__(
                self, "sequence_bias", tuple((tuple(k), float(v)) for k, v in self.sequence_bias.items())
            )
        elif self.sequence_bias is not None:
            object.__setattr__(self, "sequence_bias", tuple((tuple(k), float(v)) for k, v in self.sequence_bias))


@dataclass(frozen=True)
class _Lengths:
    max_length: int
    min_length: int
    prompt_length: int


def initial_ids(prompt: Sequence[int], settings: GenerationSettings) -> list[int]:
    """The ids `generate` starts from: the prompt of a causal model; for an encoder-decoder, `prompt` when given,
    else the decoder start token followed by the forced decoder ids (Whisper's `_retrieve_init_tokens` puts them
    in the decoder prompt in the same way)."""
    if not settings.is_encoder_decoder or len(prompt):
        return [int(t) for t in prompt]
    start = settings.decoder_start_token_id
    if start is None:
        start = settings.bos_token_id
    if start is None:
        raise ValueError("an encoder-decoder needs `decoder_start_token_id` (or `bos_token_id`)")
    forced = sorted(settings.forced_decoder_ids or ())
    if [i for i, _ in forced] != list(range(1, len(forced) + 1)):
        raise ValueError(f"forced_decoder_ids must force positions 1, 2, ... in order, not {forced}")
    return [int(start)] + [t for _, t in forced]


def resolve_lengths(settings: GenerationSettings, prompt_length: int) -> _Lengths:
    """`max_length` and `min_length` as `_prepare_generated_length` (generation/utils.py) sets them for a prompt."""
    max_length, min_length = settings.max_length, settings.min_length
    if settings.max_new_tokens is not None:
        max_length = settings.max_new_tokens + prompt_length
    elif settings.max_length_is_default and max_length == 20:  # GenerationConfig().max_length: 20 new tokens
        max_length = max_length + prompt_length
        if settings.max_position_embeddings is not None:
            max_length = min(max_length, settings.max_position_embeddings)
    if settings.min_new_tokens is not None:
        min_length = settings.min_new_tokens + prompt_length
    # `_validate_generated_length`
    if prompt_length >= max_length:
        raise ValueError(
            f"Input length of the prompt is {prompt_length}, but `max_length` is set to {max_length}. "
            "Increase `max_length` or, better yet, set `max_new_tokens`."
        )
    return _Lengths(max_length=max_length, min_length=min_length, prompt_length=prompt_length)


def _validate(settings: GenerationSettings) -> None:
    if settings.num_return_sequences > max(settings.num_beams, 1) and not settings.do_sample:
        raise ValueError("Greedy methods without beam search do not support `num_return_sequences` different than 1")
    if settings.num_beams > 1 and settings.num_return_sequences > settings.num_beams:
        raise ValueError("`num_return_sequences` has to be smaller or equal to `num_beams`.")


def generate(
    model: StepModel, prompt: Sequence[int], settings: GenerationSettings, *, stop: StopCallback | None = None
) -> list[list[int]]:
    """The sequences `transformers.generate` would return for this one prompt (causal: prompt + new tokens;
    encoder-decoder: decoder start (+ forced ids) + new tokens), `num_return_sequences` of them, best first.

    Each sequence ends at its own end (its eos token included): no padding to a common length. `stop` is called with
    a row's new tokens after each step; True ends that row as an eos would (the caller decodes stop strings)."""
    _validate(settings)
    ids = initial_ids(prompt, settings)
    if settings.num_beams > 1:
        return _beam_search(model, ids, settings, stop)
    rows = settings.num_return_sequences
    out = [list(ids) for _ in range(rows)]
    for active, tokens, _, _ in _sample(model, ids, settings, stop, rows):
        for row, token in zip(active.tolist(), tokens.tolist(), strict=True):
            out[row].append(token)
    return out


@dataclass(frozen=True)
class GeneratedToken:
    """One chosen token of a streamed generation. `logprob` (only when asked) is the token's log-probability under
    the distribution it was chosen from: the logits after every processor and warper (repetition penalty,
    temperature, top-k/top-p, ...), as TGI reports it (its `NextTokenChooser` returns the log-softmax of the warped
    scores), not the raw model's. `finish_reason` is set on the last token only: "length" (max_length, max_new_tokens
    or max_time reached), "eos_token" or "stop_sequence" (the `stop` callback), checked in that order, as TGI's
    `StoppingCriteria` checks them."""

    id: int
    logprob: float | None = None
    finish_reason: str | None = None


def stream(
    model: StepModel, prompt: Sequence[int], settings: GenerationSettings, *, stop: StopCallback | None = None
) -> Iterator[int]:
    """Greedy or sampling (num_beams 1, one sequence): yields each new token id as soon as it is chosen."""
    for token in stream_tokens(model, prompt, settings, stop=stop):
        yield token.id


def stream_tokens(
    model: StepModel,
    prompt: Sequence[int],
    settings: GenerationSettings,
    *,
    stop: StopCallback | None = None,
    logprobs: bool = False,
) -> Iterator[GeneratedToken]:
    """As `stream`, each token with why the generation ended (on the last) and, with `logprobs`, its
    log-probability (computed only then: one log-sum-exp of the chosen row per step)."""
    if settings.num_beams > 1 or settings.num_return_sequences != 1:
        raise ValueError("streaming needs num_beams 1 and num_return_sequences 1")
    for _, tokens, scores, reasons in _sample(model, initial_ids(prompt, settings), settings, stop, 1):
        token = int(tokens[0])
        logprob = None
        if logprobs:
            row = scores[0].astype(np.float64)
            top = row.max()
            logprob = float(row[token] - top - np.log(np.exp(row - top).sum()))
        yield GeneratedToken(token, logprob, reasons[0] if reasons is not None else None)


def _sample(
    model: StepModel, ids: list[int], settings: GenerationSettings, stop: StopCallback | None, rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None] | None]]:
    """`_sample` (generation/utils.py): yields, per step, the rows still running, the token each chose, the processed
    scores it was chosen from, and None, or, when a row finished at this step, each row's finish reason (None for a
    row still running). A row that finishes is dropped from the model's batch (`reorder`) instead of being fed
    padding."""
    start = time.monotonic()
    lengths = resolve_lengths(settings, len(ids))
    processors = build_processors(
        settings,
        prompt_length=lengths.prompt_length,
        max_length=lengths.max_length,
        min_length=lengths.min_length,
        vocab_size=model.vocab_size,
    )
    eos = np.asarray(settings.eos_token_id or (), dtype=np.int64)
    rng = np.random.default_rng(settings.seed) if settings.do_sample else None
    sequences = np.tile(np.asarray(ids, dtype=np.int64), (rows, 1))
    active = np.arange(rows)
    logits = model.step(sequences[:1])
    if rows > 1:  # the prompt runs once; its row is copied, as `_expand_inputs_for_generation` does
        model.reorder(np.zeros(rows, dtype=np.int64))
        logits = np.repeat(logits, rows, axis=0)
    while True:
        scores = logits.astype(np.float32, copy=False)
        for processor in processors:
            scores = processor(sequences, scores)
        tokens = _draw(scores, rng) if rng is not None else np.argmax(scores, axis=-1)
        sequences = np.concatenate([sequences, tokens[:, None]], axis=1)
        done = _stopped(sequences, tokens, lengths, eos, stop, settings, start)
        reasons = _finish_reasons(done, sequences, tokens, lengths, eos, stop) if done.any() else None
        yield active, tokens, scores, reasons
        if done.all():
            return
        if done.any():
            keep = np.flatnonzero(~done)
            model.reorder(keep)
            sequences, active, tokens = sequences[keep], active[keep], tokens[keep]
        logits = model.step(tokens[:, None])


def _finish_reasons(
    done: np.ndarray,
    sequences: np.ndarray,
    tokens: np.ndarray,
    lengths: _Lengths,
    eos: np.ndarray,
    stop: StopCallback | None,
) -> list[str | None]:
    """Why each finished row stopped (None for the others), in the order TGI's `StoppingCriteria` checks: the length,
    then the eos token, then a stop sequence; a row stopped by none of them ran out of `max_time` ("length")."""
    reasons: list[str | None] = []
    for row, finished in enumerate(done.tolist()):
        if not finished:
            reasons.append(None)
        elif sequences.shape[1] >= lengths.max_length:
            reasons.append("length")
        elif eos.size and tokens[row] in eos:
            reasons.append("eos_token")
        elif stop is not None and stop(sequences[row, lengths.prompt_length :].tolist()):
            reasons.append("stop_sequence")
        else:
            reasons.append("length")
    return reasons


def _draw(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from softmax(scores), as `torch.multinomial(probs, 1)` draws it (by inverting the CDF)."""
    rows, vocab = scores.shape
    u = rng.random((rows, 1))
    if vocab < 16384:
        cdf = np.cumsum(softmax(scores.astype(np.float64)), axis=-1)
        return np.minimum((cdf <= u * cdf[:, -1:]).sum(axis=-1), vocab - 1).astype(np.int64)
    tokens = np.empty(rows, dtype=np.int64)
    for i, row in enumerate(scores):
        # Tokens at -inf (cut by top-k / top-p) have no mass: the CDF runs over the others only.
        candidates = np.flatnonzero(row > -np.inf)
        cdf = np.cumsum(softmax(row[candidates].astype(np.float64)))
        tokens[i] = candidates[min(int(np.searchsorted(cdf, u[i, 0] * cdf[-1], side="right")), len(cdf) - 1)]
    return tokens


def _stopped(
    sequences: np.ndarray,
    tokens: np.ndarray,
    lengths: _Lengths,
    eos: np.ndarray,
    stop: StopCallback | None,
    settings: GenerationSettings,
    start: float,
) -> np.ndarray:
    """The stopping criteria of `_get_stopping_criteria` for each row of `sequences` (whose last token is new)."""
    if sequences.shape[1] >= lengths.max_length:
        return np.ones(len(tokens), dtype=bool)
    if settings.max_time is not None and time.monotonic() - start > settings.max_time:
        return np.ones(len(tokens), dtype=bool)
    done = np.isin(tokens, eos) if eos.size else np.zeros(len(tokens), dtype=bool)
    if stop is not None:
        new = sequences[:, lengths.prompt_length :].tolist()
        done |= np.array([stop(row) for row in new], dtype=bool)
    return done


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest values, largest first, the lower index first among equal values."""
    candidates = top_candidates(values, k) if k < len(values) else np.arange(len(values))
    return candidates[np.argsort(-values[candidates], kind="stable")[:k]]


def _beam_search(
    model: StepModel, ids: list[int], settings: GenerationSettings, stop: StopCallback | None
) -> list[list[int]]:
    """`_beam_search` (generation/utils.py, 4.57) for one prompt: all beams run as one batch of `num_beams` rows,
    reordered after each step. Scores are float32 as in torch; -1e9 marks the impossible, as there."""
    start = time.monotonic()
    lengths = resolve_lengths(settings, len(ids))
    max_length, prompt_length = lengths.max_length, lengths.prompt_length
    vocab = model.vocab_size
    processors = build_processors(
        settings,
        prompt_length=prompt_length,
        max_length=max_length,
        min_length=lengths.min_length,
        vocab_size=vocab,
    )
    eos = np.asarray(settings.eos_token_id or (), dtype=np.int64)
    rng = np.random.default_rng(settings.seed) if settings.do_sample else None
    beams, length_penalty, early_stopping = settings.num_beams, settings.length_penalty, settings.early_stopping
    # Keep (eos count + 1) * num_beams candidates, so that num_beams of them continue if the best end.
    keep = max(2, 1 + len(eos)) * beams
    top_num_beam_mask = np.arange(keep) < beams
    big = np.float32(-1.0e9)

    cur_len = prompt_length
    running = np.zeros((beams, max_length), dtype=np.int64)
    running[:, :cur_len] = ids
    running_scores = np.full(beams, big, dtype=np.float32)
    running_scores[0] = 0.0  # only the first beam's tokens count at the first step
    finished = running.copy()
    finished_scores = np.full(beams, big, dtype=np.float32)
    finished_lengths = np.full(beams, cur_len)
    is_sent_finished = np.zeros(beams, dtype=bool)
    improvable = True

    logits = model.step(running[:1, :cur_len])
    model.reorder(np.zeros(beams, dtype=np.int64))
    logits = np.repeat(logits, beams, axis=0)
    while True:
        log_probs = log_softmax(logits.astype(np.float32, copy=False))
        for processor in processors:
            log_probs = processor(running[:, :cur_len], log_probs)
        if log_probs.flags.writeable and not np.may_share_memory(log_probs, logits):  # ours: log_softmax made it
            log_probs += running_scores[:, None]
            accumulated = log_probs.reshape(-1)
        else:
            accumulated = (log_probs + running_scores[:, None]).reshape(-1)

        # `_get_top_k_continuations`
        if rng is not None:
            top = _draw_without_replacement(rng, accumulated, keep)
        else:
            top = _top(accumulated, keep)
        top_scores = accumulated[top]
        top_beams = top // vocab
        top_sequences = running[top_beams]
        top_sequences[:, cur_len] = top % vocab

        hits = _stopped(top_sequences[:, : cur_len + 1], top % vocab, lengths, eos, stop, settings, start)

        # `_get_running_beams_for_next_iteration`
        running_candidates = top_scores + hits.astype(np.float32) * big
        next_beams = _top(running_candidates, beams)
        running = top_sequences[next_beams]
        running_scores = running_candidates[next_beams]
        reorder = top_beams[next_beams]

        # `_update_finished_beams`
        just_finished = hits & top_num_beam_mask
        final_scores = top_scores / ((cur_len + 1 - prompt_length) ** length_penalty)
        if is_sent_finished.all() and early_stopping is True:
            final_scores = final_scores + big
        if not improvable:
            final_scores = final_scores + big
        final_scores = final_scores + (~just_finished).astype(np.float32) * big
        merged_scores = np.concatenate([finished_scores, final_scores.astype(np.float32)])
        best = _top(merged_scores, beams)
        finished = np.concatenate([finished, top_sequences])[best]
        finished_scores = merged_scores[best]
        finished_lengths = np.concatenate([finished_lengths, np.full(keep, cur_len + 1)])[best]
        is_sent_finished = np.concatenate([is_sent_finished, just_finished])[best]

        cur_len += 1
        # `_check_early_stop_heuristic`
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_length
        else:
            best_length = cur_len - prompt_length
        best_running = running_scores[0] / (best_length**length_penalty)
        worst_finished = np.where(is_sent_finished, finished_scores.min(), big)
        improvable = improvable and bool(np.any(best_running > worst_finished))
        # `_beam_search_has_unfinished_sequences`
        if not improvable or (is_sent_finished.all() and early_stopping is True) or hits.all():
            break
        model.reorder(reorder)
        logits = model.step(running[:, cur_len - 1 : cur_len])

    count = settings.num_return_sequences
    return [finished[i, : finished_lengths[i]].tolist() for i in range(count)]


def _draw_without_replacement(rng: np.random.Generator, scores: np.ndarray, count: int) -> np.ndarray:
    """`count` indices drawn without replacement with probabilities softmax(`scores`), as `torch.multinomial` does
    for beam sampling: when fewer than `count` have a non-zero probability (a forced token masks the rest), all of
    those come first (in the order drawn), then zero-probability indices fill the rest (lowest first: torch's
    choice among them is arbitrary, and they only ever end a beam's hypotheses with -inf scores)."""
    probs = softmax(scores.astype(np.float64))
    possible = np.flatnonzero(probs > 0)
    weights = probs[possible] / probs[possible].sum()
    drawn = rng.choice(possible, size=min(count, possible.size), replace=False, p=weights)
    if drawn.size == count:
        return drawn
    fill = np.setdiff1d(np.arange(scores.size), possible, assume_unique=True)[: count - drawn.size]
    return np.concatenate([drawn, fill])
