"""The demo corpus: English text that ships with every CPython installation.

Sources, in this order:

1. ``pydoc_data.topics``: the Python language reference topics that ``help()`` shows
   (about 465,000 characters in CPython 3.11), one document per topic, sorted by topic name.
2. The CPython licence text (``LICENSE.txt`` or ``LICENSE`` beside or above the standard library),
   which ``site`` shows for ``license()``, when the installation has one. Some distribution builds
   leave it out, so the corpus, and every model trained on it, depends on the Python build; the demo
   records the corpus SHA-256.

Splitting rule:

- A paragraph is a block between blank lines, with reStructuredText heading underlines
  ("*****") removed and its whitespace collapsed to single spaces.
  Paragraphs under 3 words and repeats of an earlier paragraph are dropped (the topics repeat whole
  sections, e.g. "compound" contains "if").
- A passage is a run of consecutive paragraphs of one document, merged until it has at least
  ``min_words`` words.
- Held-out split: a passage is held out when the first 8 hex digits of the SHA-256 of its text,
  read as an integer, are divisible by ``heldout_modulus`` (10 by default, so about 10 %). Held-out
  passages are used only for the prompts that the traces run on; the tokenizer, the pretraining and
  the preference pairs see only the training passages.

This module imports no torch.
"""

from __future__ import annotations

import hashlib
import os
import pydoc_data.topics
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spinal.prompts import PromptSet

HELDOUT_SET_NAME = "pydoc-heldout"
"""Registry name of the held-out prompt set (``builtin:pydoc-heldout``)."""

PROMPT_WORDS = 48
"""Words of each held-out prompt."""

PROMPT_MIN_WORDS = 16
"""Held-out passages shorter than this give no prompt."""

_BLANK_LINE = re.compile(r"\n\s*\n")
_UNDERLINE = re.compile(r"^\s*([*=~^-])\1{2,}\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One source text of the corpus.

    Attributes:
        name: ``pydoc:<topic>`` or ``license``.
        text: Raw text as shipped.
    """

    name: str
    text: str


@dataclass(frozen=True)
class Passage:
    """A run of paragraphs from one document, whitespace-normalised to a single line.

    Attributes:
        document: Name of the source document.
        index: Position among all passages of the corpus, in source order.
        text: Paragraphs joined with single spaces.
        heldout: Whether the passage belongs to the held-out split.
    """

    document: str
    index: int
    text: str
    heldout: bool

    @property
    def words(self) -> list[str]:
        """Whitespace-separated words of the passage."""
        return self.text.split(" ")


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example in TRL's plain-text format.

    Attributes:
        prompt: The start of a training passage.
        chosen: The true continuation, starting with a space.
        rejected: The true continuation's words in shuffled order, starting with a space.
    """

    prompt: str
    chosen: str
    rejected: str


def find_license_file() -> Path | None:
    """Locate the CPython licence text the way ``site`` does for ``license()``.

    Only the standard library folder and its parent are searched; the current directory, which
    ``site`` also tries, is skipped so that a project's own LICENSE never enters the corpus.

    Returns:
        The path, or None when the installation has no licence file.
    """
    stdlib = Path(os.__file__).resolve().parent

    for folder in (stdlib, stdlib.parent):
        for name in ("LICENSE.txt", "LICENSE"):
            candidate = folder / name
            if candidate.is_file():
                return candidate

    return None


def load_documents() -> list[Document]:
    """Return the corpus documents: pydoc topics sorted by name, then the licence when present."""
    documents = [
        Document(name=f"pydoc:{topic}", text=pydoc_data.topics.topics[topic])
        for topic in sorted(pydoc_data.topics.topics)
    ]

    license_path = find_license_file()
    if license_path is not None:
        documents.append(Document(name="license", text=license_path.read_text(encoding="utf-8", errors="replace")))

    return documents


def is_heldout(text: str, modulus: int = 10) -> bool:
    """Return whether a passage text falls in the held-out split (SHA-256 rule in the module docs)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % modulus == 0


def split_passages(
    documents: Sequence[Document],
    *,
    min_words: int = 64,
    heldout_modulus: int = 10,
) -> list[Passage]:
    """Split documents into deduplicated, whitespace-normalised passages.

    Args:
        documents: Source texts in a fixed order.
        min_words: Paragraphs of one document are merged until a passage has this many words;
            the last passage of a document may be shorter.
        heldout_modulus: A passage is held out when its hash is divisible by this number.

    Returns:
        Passages in source order, each marked held out or not.
    """
    seen_paragraphs: set[str] = set()
    passages: list[Passage] = []

    for document in documents:
        pending: list[str] = []
        pending_words = 0

        for block in _BLANK_LINE.split(document.text):
            paragraph = " ".join(_UNDERLINE.sub("", block).split())
            n_words = len(paragraph.split(" ")) if paragraph else 0
            if n_words < 3 or paragraph in seen_paragraphs:
                continue

            seen_paragraphs.add(paragraph)
            pending.append(paragraph)
            pending_words += n_words

            if pending_words >= min_words:
                passages.append(_make_passage(document.name, len(passages), pending, heldout_modulus))
                pending, pending_words = [], 0

        if pending:
            passages.append(_make_passage(document.name, len(passages), pending, heldout_modulus))

    return passages


def _make_passage(document: str, index: int, paragraphs: list[str], modulus: int) -> Passage:
    text = " ".join(paragraphs)
    return Passage(document=document, index=index, text=text, heldout=is_heldout(text, modulus))


def corpus_sha256(passages: Sequence[Passage]) -> str:
    """Return the SHA-256 of the passage texts and their split, which identifies the corpus."""
    digest = hashlib.sha256()
    for passage in passages:
        digest.update(b"H" if passage.heldout else b"T")
        digest.update(passage.text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def training_passages(passages: Sequence[Passage]) -> list[Passage]:
    """Return the passages outside the held-out split."""
    return [passage for passage in passages if not passage.heldout]


def heldout_prompts(
    passages: Sequence[Passage], *, max_words: int = PROMPT_WORDS, min_words: int = PROMPT_MIN_WORDS
) -> list[str]:
    """Build the trace prompts from the held-out passages.

    Args:
        passages: All passages; only held-out ones are used.
        max_words: Each prompt is the first ``max_words`` words of a passage.
        min_words: Held-out passages shorter than this are skipped.

    Returns:
        One single-line prompt per usable held-out passage, in source order.
    """
    prompts = []
    for passage in passages:
        if not passage.heldout or len(passage.words) < min_words:
            continue
        prompts.append(" ".join(passage.words[:max_words]))
    return prompts


def heldout_prompt_set() -> PromptSet:
    """Build ``builtin:pydoc-heldout``: the demo's trace prompts from the held-out corpus split.

    The texts are the first 48 words of each held-out passage with at least 16 words (66 prompts
    with CPython 3.11.7). No demo model is trained on them.
    """
    from spinal.prompts import BUILTIN_PREFIX, PromptSet

    texts = heldout_prompts(split_passages(load_documents()))
    return PromptSet.from_texts(texts, source=f"{BUILTIN_PREFIX}{HELDOUT_SET_NAME}", format="builtin")


def preference_pairs(
    passages: Sequence[Passage],
    *,
    prompt_words: int = 24,
    completion_words: int = 16,
) -> list[PreferencePair]:
    """Build DPO preference pairs from the training passages.

    Rule: take the training passages with at least ``prompt_words + completion_words`` words, in
    source order, and number them 0..n-1. Pair i has prompt = the first ``prompt_words`` words of
    passage i, chosen = its next ``completion_words`` words, and rejected = the same words in the
    order of ``random.Random(i).shuffle``. DPO thus rewards fluent text over word salad with the
    same vocabulary.

    No rejected text is a chosen text elsewhere. Taking the rejected continuation from another
    passage instead makes every chosen text also some pair's rejected text, and on the demo
    model the reward accuracy then stays below chance for most of the first epoch.

    Args:
        passages: All passages; held-out ones are never used.
        prompt_words: Words in each prompt.
        completion_words: Words in each completion.

    Returns:
        The pairs, leaving out any whose shuffle gives the original order back.
    """
    needed = prompt_words + completion_words
    eligible = [passage.words for passage in passages if not passage.heldout and len(passage.words) >= needed]

    pairs = []
    for index, words in enumerate(eligible):
        continuation = words[prompt_words:needed]
        shuffled = list(continuation)
        random.Random(index).shuffle(shuffled)
        if shuffled == continuation:
            continue

        pairs.append(
            PreferencePair(
                prompt=" ".join(words[:prompt_words]),
                chosen=" " + " ".join(continuation),
                rejected=" " + " ".join(shuffled),
            )
        )
    return pairs
