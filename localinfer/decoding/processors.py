"""Logits processors and warpers in numpy, ported from `transformers/generation/logits_process.py` (4.57).

Each processor is a callable `(input_ids [rows, length] int64, scores [rows, vocab] float32) -> scores`, as in
transformers; `build_processors` builds the list in the order `GenerationMixin._get_logits_processor`
(generation/utils.py) builds it. Processors that need the encoder's input ids (`encoder_repetition_penalty`,
`encoder_no_repeat_ngram_size`), guidance, watermarking and `prefix_allowed_tokens_fn` are not ported:
`resolve_settings` refuses configurations that set them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..scores import softmax
from . import kernels

if TYPE_CHECKING:
    from localinfer.decoding.search import GenerationSettings

Processor = Callable[[np.ndarray, np.ndarray], np.ndarray]

NEG_INF = np.float32(-np.inf)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """The log-softmax over the last axis, as a new array: on ONNX Runtime for a large float32 array (beam search's
    scores at every step: 4x faster there, see kernels.py), else in numpy."""
    if scores.dtype == np.float32 and scores.ndim == 2 and scores.size >= _LARGE:
        return kernels.log_softmax(scores)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    total = np.exp(shifted).sum(axis=-1, keepdims=True)
    shifted -= np.log(total)
    return shifted


_LARGE = 16384  # a vocabulary from which a partial selection pays


def top_candidates(values: np.ndarray, k: int) -> np.ndarray:
    """Indices, in increasing order, of a subset of the 1-D `values` that holds their `k` largest (every index whose
    value equals the k-th largest included). On a large array only the blocks whose maximum reaches the k-th
    largest of 256 block maxima can hold them (at least k values reach it), so one pass over the maxima and a scan
    of those k blocks replace a pass over everything: 4 x 50257 scores in ~30 us instead of ~110."""
    size = len(values)
    if size < _LARGE or k > 64:
        return np.arange(size)
    width = size // 256
    whole = 256 * width
    maxima = values[:whole].reshape(256, width).max(axis=-1)
    if whole < size:  # the last block is longer
        maxima[-1] = max(maxima[-1], values[whole:].max())
    blocks = 256
    bound = np.partition(maxima, blocks - k)[blocks - k]
    chosen = np.flatnonzero(maxima >= bound)
    candidates = (chosen[:, None] * width + np.arange(width)).reshape(-1)
    if chosen[-1] == blocks - 1 and whole < size:
        candidates = np.concatenate([candidates, np.arange(whole, size)])
    return candidates[values[candidates] >= bound]


def kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest score of each row, [rows, 1]."""
    rows, vocab = scores.shape
    if vocab < _LARGE or k > 64:
        return np.partition(scores, vocab - k, axis=-1)[:, vocab - k, None]
    out = np.empty((rows, 1), dtype=scores.dtype)
    for i in range(rows):
        candidates = scores[i][top_candidates(scores[i], k)]
        out[i, 0] = np.partition(candidates, len(candidates) - k)[len(candidates) - k]
    return out


def _token_mask(vocab_size: int, tokens: Sequence[int]) -> np.ndarray:
    mask = np.zeros(vocab_size, dtype=bool)
    mask[[t for t in tokens if 0 <= t < vocab_size]] = True
    return mask


class RepetitionPenalty:
    """`RepetitionPenaltyLogitsProcessor`: every token already in the row is divided (positive score) or
    multiplied (negative score) by `penalty`."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        self.penalty = np.float32(penalty)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        rows = np.arange(scores.shape[0])[:, None]
        score = scores[rows, input_ids]
        score = np.where(score < 0, score * self.penalty, score / self.penalty)
        scores = scores.copy()
        scores[rows, input_ids] = score
        return scores


class NoRepeatNGram:
    """`NoRepeatNGramLogitsProcessor`: bans the tokens that would repeat an n-gram already in the row."""

    def __init__(self, ngram_size: int) -> None:
        self.n = ngram_size

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n, length = self.n, input_ids.shape[1]
        if length < n:  # no n-gram yet
            return scores
        windows = sliding_window_view(input_ids, n, axis=1)  # [rows, length - n + 1, n]
        prefix = input_ids[:, length - n + 1 :]  # the last n - 1 tokens
        match = (windows[:, :, :-1] == prefix[:, None, :]).all(axis=-1)
        rows, where = np.nonzero(match)
        if not len(rows):
            return scores
        scores = scores.copy()
        scores[rows, windows[rows, where, -1]] = NEG_INF
        return scores


class SequenceBias:
    """`SequenceBiasLogitsProcessor`: adds a bias to the last token of each sequence whose prefix ends the row
    (`NoBadWordsLogitsProcessor` is this with bias -inf)."""

    def __init__(self, sequence_bias: Sequence[tuple[Sequence[int], float]], vocab_size: int) -> None:
        self.single = np.zeros(vocab_size, dtype=np.float32)
        self.longer: list[tuple[np.ndarray, int, np.float32]] = []
        for sequence, bias in sequence_bias:
            if any(t >= vocab_size for t in sequence):
                raise ValueError(f"The model vocabulary size is {vocab_size}, but {list(sequence)} is biased")
            if len(sequence) == 1:
                self.single[sequence[0]] = bias
            else:
                self.longer.append((np.asarray(sequence[:-1], dtype=np.int64), sequence[-1], np.float32(bias)))

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        bias = np.broadcast_to(self.single, scores.shape).copy()
        for prefix, last, value in self.longer:
            if len(prefix) + 1 > input_ids.shape[1]:  # longer than the context: ignored
                continue
            matching = (input_ids[:, -len(prefix) :] == prefix).all(axis=1)
            bias[:, last] += np.where(matching, value, np.float32(0.0))
        return scores + bias


def no_bad_words(bad_words_ids: Sequence[Sequence[int]], eos_token_id: Sequence[int], vocab_size: int) -> SequenceBias:
    """`NoBadWordsLogitsProcessor`: the bad words, less those that are a lone eos token, biased to -inf."""
    eos = [[t] for t in eos_token_id]
    words = [list(w) for w in bad_words_ids if list(w) not in eos]
    return SequenceBias([(w, float("-inf")) for w in words], vocab_size)


class MinLength:
    """`MinLengthLogitsProcessor` (and `MinNewTokensLengthLogitsProcessor`, `min_length` being then
    `prompt_length + min_new_tokens`): eos is banned while the row is shorter than `min_length`."""

    def __init__(self, min_length: int, eos_token_id: Sequence[int], vocab_size: int) -> None:
        self.min_length = min_length
        self.eos = _token_mask(vocab_size, eos_token_id)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] < self.min_length:
            return np.where(self.eos, NEG_INF, scores)
        return scores


class ForcedToken:
    """`ForcedBOSTokenLogitsProcessor` (at length 1) and `ForcedEOSTokenLogitsProcessor` (at `max_length - 1`):
    every token but the forced ones gets -inf, the forced ones 0."""

    def __init__(self, at_length: int, tokens: Sequence[int]) -> None:
        self.at_length = at_length
        self.tokens = list(tokens)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if input_ids.shape[1] != self.at_length:
            return scores
        forced = np.full_like(scores, NEG_INF)
        forced[:, self.tokens] = 0
        return forced


def inf_nan_remove(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`InfNanRemoveLogitsProcessor`."""
    info = np.finfo(scores.dtype)
    return np.nan_to_num(scores, nan=0.0, posinf=info.max, neginf=info.min)


class ExponentialDecayLengthPenalty:
    """`ExponentialDecayLengthPenalty`: raises the eos scores exponentially after `start_index` new tokens."""

    def __init__(self, start_index: int, decay_factor: float, eos_token_id: Sequence[int], prompt_length: int):
        self.regulation_start = start_index + prompt_length
        self.factor = decay_factor
        self.eos = list(eos_token_id)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        length = input_ids.shape[1]
        if length <= self.regulation_start:
            return scores
        penalty = np.abs(scores[:, self.eos]) * np.float32(pow(self.factor, length - self.regulation_start) - 1)
        scores = scores.copy()
        scores[:, self.eos] += penalty
        return scores


class SuppressTokens:
    """`SuppressTokensLogitsProcessor` (always) and `SuppressTokensAtBeginLogitsProcessor` (only when the row is
    `at_length` long)."""

    def __init__(self, tokens: Sequence[int], vocab_size: int, at_length: int | None = None) -> None:
        self.mask = _token_mask(vocab_size, tokens)
        self.at_length = at_length

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.at_length is not None and input_ids.shape[1] != self.at_length:
            return scores
        return np.where(self.mask, NEG_INF, scores)


class Temperature:
    """`TemperatureLogitsWarper`."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"`temperature` has to be a strictly positive float, but is {temperature}")
        self.temperature = np.float32(temperature)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores / self.temperature


class TopK:
    """`TopKLogitsWarper`: scores below the k-th largest get -inf."""

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        k = min(self.top_k, scores.shape[-1])
        return np.where(scores < kth_largest(scores, k), NEG_INF, scores)


class TopP:
    """`TopPLogitsWarper`: keeps the smallest set of most probable tokens whose probabilities sum above `top_p`."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
        if not 0 <= top_p <= 1:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        self.top_p = top_p
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if scores.shape[-1] < _LARGE:
            return np.where(self._remove(scores), NEG_INF, scores)
        out = scores.copy()
        for row in out:
            # Tokens at -inf have no mass and are never kept: sort only the others (a vocabulary sort is slow).
            finite = np.flatnonzero(row > NEG_INF)
            if len(finite) >= self.min_tokens_to_keep:
                row[finite[self._remove(row[finite][None])[0]]] = NEG_INF
            else:
                row[self._remove(row[None])[0]] = NEG_INF
        return out

    def _remove(self, scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as `torch.sort(descending=False)`
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        cumulative = np.cumsum(softmax(sorted_scores), axis=-1, dtype=np.float32)
        remove_sorted = cumulative <= np.float32(1 - self.top_p)
        remove_sorted[:, -self.min_tokens_to_keep :] = False
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        return remove


class MinP:
    """`MinPLogitsWarper`: tokens less probable than `min_p` times the top token's probability get -inf."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1) -> None:
        self.min_p = np.float32(min_p)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        probs = softmax(scores)
        remove = probs < probs.max(axis=-1, keepdims=True) * self.min_p
        order = np.argsort(-scores, axis=-1, kind="stable")
        keep_top = np.zeros_like(remove)
        np.put_along_axis(keep_top, order[:, : self.min_tokens_to_keep], True, axis=-1)
        return np.where(remove & ~keep_top, NEG_INF, scores)


class Typical:
    """`TypicalLogitsWarper` (locally typical sampling)."""

    def __init__(self, mass: float, min_tokens_to_keep: int = 1) -> None:
        self.mass = np.float32(mass)
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        normalized = log_softmax(scores)
        p = np.exp(normalized)
        ent = -np.nansum(normalized * p, axis=-1, keepdims=True)
        shifted = np.abs(-normalized - ent)
        order = np.argsort(shifted, axis=-1, kind="stable")
        sorted_shifted = np.take_along_axis(shifted, order, axis=-1)
        sorted_logits = np.take_along_axis(scores, order, axis=-1)
        cumulative = np.cumsum(softmax(sorted_logits), axis=-1, dtype=np.float32)
        last_ind = np.minimum((cumulative < self.mass).sum(axis=1), scores.shape[-1] - 1)
        threshold = np.take_along_axis(sorted_shifted, last_ind[:, None], axis=-1)
        remove_sorted = sorted_shifted > threshold
        remove_sorted[:, : self.min_tokens_to_keep] = False
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        return np.where(remove, NEG_INF, scores)


class EpsilonCutoff:
    """`EpsilonLogitsWarper` (and `EtaLogitsWarper`, whose cutoff depends on the row's entropy)."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1, *, eta: bool = False) -> None:
        self.epsilon = np.float32(epsilon)
        self.min_tokens_to_keep = min_tokens_to_keep
        self.eta = eta

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        probs = softmax(scores)
        if self.eta:
            entropy = -(probs * log_softmax(scores)).sum(axis=-1, keepdims=True)
            cutoff = np.minimum(self.epsilon, np.sqrt(self.epsilon) * np.exp(-entropy))
        else:
            cutoff = self.epsilon
        remove = probs < cutoff
        k = min(self.min_tokens_to_keep, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k, None]
        remove &= scores < kth
        return np.where(remove, NEG_INF, scores)


def renormalize(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`LogitNormalization`."""
    return log_softmax(scores)


def build_processors(
    settings: GenerationSettings, *, prompt_length: int, max_length: int, min_length: int, vocab_size: int
) -> list[Processor]:
    """The processors and warpers `_get_logits_processor` builds, in its order, for lengths resolved as
    `_prepare_generated_length` resolves them (`prompt_length` is `input_ids_seq_length`)."""
    s = settings
    eos = list(s.eos_token_id or ())
    processors: list[Processor] = []
    if s.sequence_bias is not None:
        processors.append(SequenceBias(s.sequence_bias, vocab_size))
    if s.repetition_penalty is not None and s.repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(s.repetition_penalty))
    if s.no_repeat_ngram_size is not None and s.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(s.no_repeat_ngram_size))
    if s.bad_words_ids is not None:
        processors.append(no_bad_words(s.bad_words_ids, eos, vocab_size))
    if min_length is not None and eos and min_length > 0:
        processors.append(MinLength(min_length, eos, vocab_size))
    if s.min_new_tokens is not None and eos and s.min_new_tokens > 0:
        processors.append(MinLength(prompt_length + s.min_new_tokens, eos, vocab_size))
    if s.forced_bos_token_id is not None:
        processors.append(ForcedToken(1, [s.forced_bos_token_id]))
    if s.forced_eos_token_id is not None:
        processors.append(ForcedToken(max_length - 1, s.forced_eos_token_id))
    if s.remove_invalid_values:
        processors.append(inf_nan_remove)
    if s.exponential_decay_length_penalty is not None:
        start_index, factor = s.exponential_decay_length_penalty
        processors.append(ExponentialDecayLengthPenalty(start_index, factor, eos, prompt_length))
    if s.suppress_tokens is not None:
        processors.append(SuppressTokens(s.suppress_tokens, vocab_size))
    if s.begin_suppress_tokens is not None:
        begin = prompt_length if (prompt_length > 1 or s.forced_bos_token_id is None) else prompt_length + 1
        processors.append(SuppressTokens(s.begin_suppress_tokens, vocab_size, at_length=begin))
    if s.do_sample:
        # With beams, keep at least one non-eos token to explore continuations (as `_get_logits_processor` does).
        keep = (len(eos) + 1 if eos else 2) if s.num_beams > 1 else 1
        if s.temperature is not None and s.temperature != 1.0:
            processors.append(Temperature(s.temperature))
        if s.top_k is not None and s.top_k != 0:
            processors.append(TopK(s.top_k, keep))
        if s.top_p is not None and s.top_p < 1.0:
            processors.append(TopP(s.top_p, keep))
        if s.min_p is not None:
            processors.append(MinP(s.min_p, keep))
        if s.typical_p is not None and s.typical_p < 1.0:
            processors.append(Typical(s.typical_p, keep))
        if s.epsilon_cutoff is not None and 0.0 < s.epsilon_cutoff < 1.0:
            processors.append(EpsilonCutoff(s.epsilon_cutoff, keep))
        if s.eta_cutoff is not None and 0.0 < s.eta_cutoff < 1.0:
            processors.append(EpsilonCutoff(s.eta_cutoff, keep, eta=True))
    if s.renormalize_logits:
        processors.append(renormalize)
    return processors
