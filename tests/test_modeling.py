"""Prompts fitted to a model's context: the middle of an over-long last turn cut, the rest untouched."""

import logging

import pytest

from alignpro.modeling import CUT_MARK, context_length, encode_chat, fit_to_context, load_tokenizer

pytestmark = pytest.mark.model

LONG = "Start of the document. " + "The bakery opened early and the bread was warm. " * 60 + "Question: who baked it?"


@pytest.fixture(scope="module")
def tokenizer(tiny_frozen):
    return load_tokenizer(str(tiny_frozen), revision="main", trust_remote_code=False)


def test_context_length_is_read_from_the_config(short_context_frozen):
    from transformers import AutoConfig

    assert context_length(AutoConfig.from_pretrained(short_context_frozen)) == 96


def test_an_over_long_prompt_keeps_its_head_and_tail_and_fits(tokenizer, caplog):
    conversations = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": LONG}]]
    assert len(encode_chat(tokenizer, conversations[1])) > 300
    with caplog.at_level(logging.WARNING):
        fitted, encoded = fit_to_context(tokenizer, conversations, context=128, max_new_tokens=32, model="tiny")
    assert fitted[0] == conversations[0] and encoded[0] == encode_chat(tokenizer, conversations[0])
    cut = fitted[1][0]["content"]
    assert cut.startswith("Start of the document.") and cut.endswith("Question: who baked it?") and CUT_MARK in cut
    assert len(encoded[1]) <= 128 - 32 and encoded[1] == encode_chat(tokenizer, fitted[1])
    assert len(encoded[1]) >= 128 - 32 - 8  # cut no more than needed
    assert "tiny: 1 of 2 prompts are longer than its context of 128 tokens less max_new_tokens=32" in caplog.text
    assert "Rows, in input order: 2" in caplog.text


def test_prompts_that_fit_are_left_alone_and_nothing_is_logged(tokenizer, caplog):
    conversations = [[{"role": "user", "content": LONG}]]
    with caplog.at_level(logging.WARNING):
        fitted, _ = fit_to_context(tokenizer, conversations, context=4096, max_new_tokens=32, model="tiny")
        unlimited, _ = fit_to_context(tokenizer, conversations, context=None, max_new_tokens=32, model="tiny")
    assert fitted == conversations == unlimited and caplog.text == ""


def test_no_room_for_a_prompt_is_an_error_naming_max_new_tokens(tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens=128 leaves no room for a prompt in the 128-token context of tiny"):
        fit_to_context(tokenizer, [[{"role": "user", "content": "hi"}]], context=128, max_new_tokens=128, model="tiny")
    with pytest.raises(ValueError, match="tiny, row 1: the chat template"):
        fit_to_context(tokenizer, [[{"role": "user", "content": LONG}]], context=8, max_new_tokens=4, model="tiny")
