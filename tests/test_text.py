"""Texts into batches: sorted by tokens, padded to each batch's longest, answered in the texts' order."""

from __future__ import annotations

import numpy as np


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from localinfer.text import TextTokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return TextTokenizer(tokenizer, pad_id=0, max_length=6)


def test_run_tokenized_batches_by_tokens_and_answers_in_order():
    from localinfer.text import run_tokenized

    # characters and tokens disagree: "a a a a a" is 9 characters and 5 tokens, "unknownword" 11 and 1
    texts = ["a a a a a", "unknownword", "b b b b", "verylongunknownword", "a", "a a a a a a a a"]
    seen = []

    def run(feeds: dict[str, np.ndarray]) -> list[int]:
        seen.append(feeds["attention_mask"].sum(axis=1).tolist())
        assert feeds["input_ids"].shape[1] == max(seen[-1])  # padded to this batch's longest only
        return feeds["attention_mask"].sum(axis=1).tolist()

    counts = run_tokenized(_tokenizer(), texts, run, batch_size=2)
    assert counts == [5, 1, 4, 1, 1, 6]  # in the texts' order; the last truncated to max_length 6
    assert seen == [[6, 5], [4, 1], [1, 1]]  # the longest in tokens first, whatever their characters


def test_run_tokenized_runs_one_batch_as_given():
    from localinfer.text import run_tokenized

    texts = ["a", "b b b", ("a", "b")]
    answers = run_tokenized(
        _tokenizer(), texts, lambda feeds: feeds["attention_mask"].sum(axis=1).tolist(), batch_size=8
    )
    assert answers == [1, 3, 2]
