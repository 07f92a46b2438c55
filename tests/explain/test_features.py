"""Words and tokens of an input, and how removing them changes the token ids."""

from __future__ import annotations

import pytest
from helpers.tiny_models import tiny_loaded, tiny_tokenizer
from helpers.toy_target import word_tokenizer

from core.errors import UserError
from core.explain.features import replacement_token, text_features
from core.task.data import dataset_from_rows
from core.task.prompts import PromptBuilder, PromptConfig

TEXT = "The film's plot,  well-acted and   moving 😀 ending"


def test_words_group_the_very_tokens_the_scorer_uses() -> None:
    tok = tiny_tokenizer()
    f = text_features(tok, TEXT)
    assert list(f.names) == TEXT.split()
    assert list(f.ids) == tok(" " + TEXT, add_special_tokens=False)["input_ids"]
    # each word's tokens are contiguous and lie inside the word (byte pieces of 😀 all point at it)
    assert list(f.groups) == sorted(f.groups) and set(f.groups) == set(range(f.n))
    assert all(t.strip() in f.names[g] for t, g in zip(f.tokens, f.groups, strict=True))
    assert f.groups.count(f.names.index("😀")) > 1


def test_ids_match_the_prompt_builders_encoding_including_truncation() -> None:
    lm = tiny_loaded("llama")
    ds = dataset_from_rows([{"text": "a b", "label": x} for x in ("neg", "pos")] * 3, "t")
    builder = PromptBuilder(lm.tokenizer, ds, PromptConfig(style="zero-shot", max_input_tokens=5),
                            lm.has_chat_template, lm.max_positions)
    enc = builder.encode(TEXT)
    f = text_features(lm.tokenizer, TEXT, max_tokens=builder.max_text_tokens)
    assert list(f.ids) == enc.ids[: enc.text_len] and len(f.ids) == 5
    assert f.n < len(TEXT.split()) and list(f.names) == TEXT.split()[: f.n]


def test_token_granularity_has_one_feature_per_token() -> None:
    tok = tiny_tokenizer()
    f = text_features(tok, TEXT, "token")
    assert f.n == len(f.ids) and list(f.groups) == list(range(f.n))


def test_removal_deletes_or_replaces_every_token_of_a_word() -> None:
    tok = word_tokenizer(["good", "film", "very"])
    f = text_features(tok, "very good film")
    ids = list(f.ids)
    assert f.ids_keeping([True, False, True]) == [ids[0], ids[2]]
    assert f.ids_keeping([True, False, True], replacement=0) == [ids[0], 0, ids[2]]
    assert replacement_token(tok, "delete") is None
    assert replacement_token(tok, "pad") == 0 and replacement_token(tok, "unk") == 1


def test_bad_input_is_named() -> None:
    tok = tiny_tokenizer()
    with pytest.raises(UserError, match="no words to explain"):
        text_features(tok, "   ")
    with pytest.raises(UserError, match="unknown granularity 'char'"):
        text_features(tok, "x", "char")
    with pytest.raises(UserError, match="unknown removal 'mask'"):
        replacement_token(tok, "mask")
    with pytest.raises(UserError, match="no unk token"):
        replacement_token(tok, "unk")
