"""Prompt sets: load them from text, JSONL or HH-RLHF files, or take a built-in set.

Supported files (gzip compression is detected by its magic bytes, whatever the suffix):

- ``text``: one prompt per line. Trailing whitespace is stripped and blank lines are skipped.
- ``jsonl``: one JSON object per line with a ``prompt`` or ``text`` string (``prompt`` wins
  when both are present). A ``.json`` file that contains one JSON array of such objects or of
  plain strings is read the same way.
- ``hh``: HH-RLHF preference rows with ``chosen`` and ``rejected`` dialogues written as
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The prompt is the chosen dialogue up to and including
  its last ``Assistant:`` turn marker, so the model is traced on the context it answers.

A prompt set is identified by the SHA-256 of its texts (``PromptSet.sha256``), not by its file
path, so a renamed or recompressed copy of the same prompts gives the same hash.

Built-in sets live in a registry: ``builtin_prompt_sets()`` lists them, ``load_builtin(name)``
builds one, ``register_builtin(name, factory)`` adds one, and ``load_prompts("builtin:NAME")``
loads one through the same entry point as files.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinal.errors import PromptSetError
from spinal.settings import canonical_hash

logger = logging.getLogger(__name__)

FORMATS = ("text", "jsonl", "hh")
"""File formats that ``load_prompts`` reads. ``auto`` picks one of them."""

BUILTIN_PREFIX = "builtin:"
"""Prefix of a ``load_prompts`` source that names a built-in set instead of a file."""

HH_ASSISTANT_MARKER = "\n\nAssistant:"
"""Turn marker of HH-RLHF dialogues. The leading blank line keeps a reply that quotes
"Assistant:" from being taken as a turn."""

_GZIP_MAGIC = b"\x1f\x8b"
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class PromptSet:
    """An ordered, immutable list of prompts with its origin and content hash.

    Attributes:
        texts: The prompts, in file order.
        source: Where the prompts came from: a file path as given, or ``builtin:NAME``.
        format: ``text``, ``jsonl`` or ``hh`` for files, ``builtin`` or ``memory`` otherwise.
        sha256: SHA-256 hex digest of the canonical JSON list of ``texts`` (see ``hash_texts``).
        n_skipped: Lines or rows read but not used (blank lines, rows with an empty prompt).
    """

    texts: tuple[str, ...]
    source: str
    format: str
    sha256: str
    n_skipped: int = 0

    @classmethod
    def from_texts(
        cls, texts: Any, *, source: str = "in-memory", format: str = "memory", n_skipped: int = 0
    ) -> PromptSet:
        """Build a prompt set from strings and compute its hash.

        Args:
            texts: Iterable of non-empty strings.
            source: Origin recorded in run manifests.
            format: Format label recorded in run manifests.
            n_skipped: Number of inputs dropped before this call.

        Raises:
            PromptSetError: When ``texts`` is empty or contains a non-string or blank entry.
        """
        items = tuple(texts)
        if not items:
            raise PromptSetError(f"prompt set {source} is empty: pass at least one prompt.")

        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise PromptSetError(
                    f"prompt {index} of {source} has type {type(text).__name__}, expected a string."
                )

            if not text.strip():
                raise PromptSetError(f"prompt {index} of {source} is blank: remove it or fill it in.")

        return cls(texts=items, source=source, format=format, sha256=hash_texts(items), n_skipped=n_skipped)

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, max_prompts: int | None) -> PromptSet:
        """Return the first ``max_prompts`` prompts as a new set with its own hash.

        Raises:
            PromptSetError: When ``max_prompts`` is not a positive integer.
        """
        if max_prompts is None:
            return self

        _check_max_prompts(max_prompts)
        if max_prompts >= len(self.texts):
            return self

        return PromptSet.from_texts(
            self.texts[:max_prompts], source=self.source, format=self.format, n_skipped=self.n_skipped
        )


def hash_texts(texts: Any) -> str:
    """Return the SHA-256 hex digest of the texts as a compact, ASCII-escaped JSON list."""
    return canonical_hash(list(texts))


# ---------------------------------------------------------------------------------------------
# Files


def load_prompts(path: str | Path, *, fmt: str = "auto", max_prompts: int | None = None) -> PromptSet:
    """Load a prompt set from a file, or a built-in set from ``builtin:NAME``.

    Args:
        path: File to read, or ``builtin:NAME`` for a registered built-in set.
        fmt: ``auto`` (decide from the suffix and the first row), ``text``, ``jsonl`` or ``hh``.
        max_prompts: Keep only the first N prompts. Reading stops there, so rows after them are
            not checked.

    Returns:
        The prompt set, with ``path`` as given for its ``source``.

    Raises:
        PromptSetError: For a missing or unreadable file, a file that is not UTF-8, malformed
            JSON (naming the line), a row without a usable prompt, an empty set, an unknown
            format or a ``max_prompts`` below 1.
    """
    if max_prompts is not None:
        _check_max_prompts(max_prompts)

    if fmt != "auto" and fmt not in FORMATS:
        raise PromptSetError(f"prompt format {fmt!r} is invalid: use 'auto', 'text', 'jsonl' or 'hh'.")

    source = str(path)
    if source.startswith(BUILTIN_PREFIX):
        return load_builtin(source[len(BUILTIN_PREFIX) :]).head(max_prompts)

    file_path = Path(path).expanduser()
    _check_readable(file_path)
    lines = _read_lines(file_path)

    if fmt == "auto":
        fmt = _detect_format(file_path, lines)

    if fmt == "text":
        texts, n_skipped = _parse_text(lines, max_prompts)
    else:
        rows = _json_rows(file_path, lines)
        texts, n_skipped, fmt = _parse_rows(file_path, rows, fmt, max_prompts)

    if not texts:
        raise PromptSetError(
            f"prompt file {source} contains no prompts ({n_skipped} blank lines or rows): "
            "add at least one non-empty prompt."
        )

    logger.debug("loaded %d prompts from %s (format %s, %d skipped)", len(texts), source, fmt, n_skipped)
    return PromptSet.from_texts(texts, source=source, format=fmt, n_skipped=n_skipped)


def _check_max_prompts(max_prompts: Any) -> None:
    if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
        raise PromptSetError(f"max_prompts={max_prompts!r} is invalid: use a whole number of at least 1.")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise PromptSetError(f"prompt file not found: {path}. Check the path or use builtin:pydoc-topics.")

    if path.is_dir():
        raise PromptSetError(f"prompt path {path} is a directory: pass a .txt, .jsonl or .jsonl.gz file.")


def _read_lines(path: Path) -> list[str]:
    """Read a UTF-8 file, gunzipping it when it starts with the gzip magic bytes."""
    compressed = False
    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC

        if compressed:
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        kind = "gzip file" if compressed else "file"
        raise PromptSetError(
            f"prompt {kind} {path} could not be read ({error}): check that it is intact."
        ) from error

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PromptSetError(
            f"prompt file {path} is not valid UTF-8 (byte {error.start}): re-save it as UTF-8."
        ) from error

    return text.splitlines()


def _content_suffix(path: Path) -> str:
    """Return the suffix that describes the content, ignoring a trailing ``.gz``."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]

    return suffixes[-1] if suffixes else ""


def _detect_format(path: Path, lines: list[str]) -> str:
    """Choose ``text`` or ``jsonl`` from the suffix or the first non-blank line.

    ``jsonl`` becomes ``hh`` later if the first row has a ``chosen`` dialogue.
    """
    suffix = _content_suffix(path)
    if suffix == ".txt":
        return "text"

    if suffix in _JSON_SUFFIXES:
        return "jsonl"

    first = next((line.strip() for line in lines if line.strip()), "")
    if first.startswith(("{", "[")):
        try:
            json.loads(first)
        except json.JSONDecodeError:
            # A single-line check fails on a pretty-printed JSON array, so "[" alone decides.
            return "jsonl" if first.startswith("[") else "text"

        return "jsonl"

    return "text"


def _parse_text(lines: list[str], max_prompts: int | None) -> tuple[list[str], int]:
    texts: list[str] = []
    n_skipped = 0
    for line in lines:
        text = line.rstrip()
        if not text:
            n_skipped += 1
            continue

        texts.append(text)
        if max_prompts is not None and len(texts) >= max_prompts:
            break

    return texts, n_skipped


def _json_rows(path: Path, lines: list[str]) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed value) for each non-blank JSON line.

    A file whose content is one JSON array yields its elements, each numbered by the line of
    the opening bracket.
    """
    first_index = next((index for index, line in enumerate(lines) if line.strip()), None)
    if first_index is not None and lines[first_index].lstrip().startswith("["):
        try:
            document = json.loads("\n".join(lines))
        except json.JSONDecodeError as error:
            raise PromptSetError(
                f"{path} line {error.lineno}: invalid JSON ({error.msg}): fix the array or write one object per line."
            ) from error

        if not isinstance(document, list):
            raise PromptSetError(f"{path} is not a JSON array or JSON lines: write one object per line.")

        for element in document:
            yield first_index + 1, element
        return

    for index, line in enumerate(lines):
        if not line.strip():
            yield index + 1, None
            continue

        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptSetError(
                f"{path} line {index + 1}: invalid JSON ({error.msg.removesuffix(' at')}, column {error.colno}): "
                "write one JSON object per line."
            ) from error

        yield index + 1, value


def _parse_rows(
    path: Path, rows: Iterator[tuple[int, Any]], fmt: str, max_prompts: int | None
) -> tuple[list[str], int, str]:
    """Extract prompts from JSON rows, counting ``None`` rows (blank lines) as skipped.

    With ``fmt="jsonl"`` from auto-detection or the caller, the first row decides between
    plain rows and HH rows: a row with ``chosen`` and neither ``prompt`` nor ``text`` makes the
    whole file ``hh``.
    """
    texts: list[str] = []
    n_skipped = 0
    decided = fmt == "hh"

    for line_number, row in rows:
        if row is None:
            n_skipped += 1
            continue

        if isinstance(row, str):
            row = {"text": row}

        if not isinstance(row, dict):
            raise PromptSetError(
                f"{path} line {line_number}: expected a JSON object, found {type(row).__name__}."
            )

        if not decided:
            if "chosen" in row and "prompt" not in row and "text" not in row:
                fmt = "hh"
            decided = True

        if fmt == "hh":
            text = _hh_prompt(path, line_number, row)
        else:
            text = _plain_prompt(path, line_number, row)

        if not text.strip():
            n_skipped += 1
            continue

        texts.append(text)
        if max_prompts is not None and len(texts) >= max_prompts:
            break

    return texts, n_skipped, fmt


def _plain_prompt(path: Path, line_number: int, row: dict[str, Any]) -> str:
    if "prompt" in row:
        key = "prompt"
    elif "text" in row:
        key = "text"
    else:
        found = ", ".join(sorted(map(str, row))) or "none"
        raise PromptSetError(
            f"{path} line {line_number}: no 'prompt' or 'text' field (found: {found}). "
            "Add one, or pass HH rows with 'chosen'."
        )

    value = row[key]
    if not isinstance(value, str):
        raise PromptSetError(
            f"{path} line {line_number}: '{key}' has type {type(value).__name__}, expected a string."
        )

    return value


def _hh_prompt(path: Path, line_number: int, row: dict[str, Any]) -> str:
    """Cut an HH-RLHF ``chosen`` dialogue after its last ``Assistant:`` marker.

    Leading blank lines are dropped too, so the prompt starts at ``Human:``.
    """
    dialogue = row.get("chosen")
    if not isinstance(dialogue, str):
        found = "missing" if dialogue is None else f"a {type(dialogue).__name__}"
        raise PromptSetError(
            f"{path} line {line_number}: 'chosen' is {found}, expected an HH dialogue string. "
            "Use fmt='jsonl' for rows with 'prompt' or 'text'."
        )

    cut = dialogue.rfind(HH_ASSISTANT_MARKER)
    if cut < 0:
        raise PromptSetError(
            f"{path} line {line_number}: 'chosen' has no '\\n\\nAssistant:' turn, so no prompt can be cut from it."
        )

    return dialogue[: cut + len(HH_ASSISTANT_MARKER)].strip()


# ---------------------------------------------------------------------------------------------
# Built-in sets

_BUILTINS: dict[str, Callable[[], PromptSet]] = {}


def register_builtin(name: str, factory: Callable[[], PromptSet], *, replace: bool = False) -> None:
    """Add a built-in prompt set under ``name``.

    Args:
        name: Registry name, used as ``builtin:NAME``.
        factory: Callable without arguments that returns the PromptSet.
        replace: Allow overwriting an existing entry.

    Raises:
        PromptSetError: When ``name`` is taken and ``replace`` is False, or is not a simple name.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise PromptSetError(
            f"built-in prompt set name {name!r} is invalid: use letters, digits, '-', '_' or '.'."
        )

    if name in _BUILTINS and not replace:
        raise PromptSetError(
            f"built-in prompt set {name!r} is already registered: pass replace=True to overwrite it."
        )

    _BUILTINS[name] = factory


def builtin_prompt_sets() -> dict[str, Callable[[], PromptSet]]:
    """Return a copy of the registry: name to factory."""
    _register_package_builtins()
    return dict(_BUILTINS)


def _register_package_builtins() -> None:
    """Import the modules that register SPINAL's own built-in sets (the demo's held-out prompts)."""
    import spinal.demo  # noqa: F401  (registers builtin:pydoc-heldout; imports no torch)


def load_builtin(name: str) -> PromptSet:
    """Build the registered built-in prompt set ``name``.

    Raises:
        PromptSetError: When no set of that name is registered.
    """
    _register_package_builtins()
    factory = _BUILTINS.get(name)
    if factory is None:
        available = ", ".join(sorted(_BUILTINS)) or "none"
        raise PromptSetError(f"built-in prompt set {name!r} not found: use one of {available}.")

    return factory()


_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_EMPHASIS = re.compile(r"\*([^*\s][^*]*?)\*")
_LIST_ITEM = re.compile(r"^(?:[*+\-]|\d+\.|\(\d+\))\s")


def pydoc_topic_sentences(min_words: int = 6, max_words: int = 30) -> list[tuple[str, str]]:
    """Return the opening sentences of the prose paragraphs in CPython's ``pydoc_data.topics``.

    Topics are visited in sorted order and paragraphs in document order. A paragraph counts
    as prose when it is not a heading, not indented (grammar and code blocks are) and not a
    list item. Only its first sentence is taken, with ``*emphasis*`` markers removed, and only
    when it has ``min_words`` to ``max_words`` words, ends with a full stop and contains no
    grammar rule (``::=``).

    NOTE: the topic text ships with the Python interpreter, so the sentences (and the hash of
    sets built from them) can differ between Python versions.

    Returns:
        (topic name, sentence) pairs.
    """
    from pydoc_data.topics import topics

    pairs: list[tuple[str, str]] = []
    for topic in sorted(topics):
        for paragraph in _paragraphs(topics[topic]):
            sentence = _opening_sentence(paragraph)
            words = len(sentence.split())
            if min_words <= words <= max_words and sentence.endswith(".") and "::=" not in sentence:
                pairs.append((topic, sentence))

    return pairs


def _paragraphs(document: str) -> Iterator[list[str]]:
    """Yield the prose paragraphs of a pydoc topic as lists of lines."""
    block: list[str] = []
    for line in [*document.split("\n"), ""]:
        if line.strip():
            block.append(line)
            continue

        if block and _is_prose(block):
            yield block
        block = []


def _is_prose(block: list[str]) -> bool:
    if block[0].startswith((" ", "\t")):
        return False

    if any(_HEADING_RULE.match(line.strip()) for line in block):
        return False

    return not _LIST_ITEM.match(block[0])


def _opening_sentence(block: list[str]) -> str:
    text = " ".join(line.strip() for line in block)
    text = _EMPHASIS.sub(r"\1", text)
    return _SENTENCE_END.split(text, maxsplit=1)[0]


PYDOC_TOPICS_SIZE = 64
"""Number of prompts in the ``pydoc-topics`` built-in set."""


def pydoc_topics_prompts() -> PromptSet:
    """Build ``pydoc-topics``: 64 short, neutral English sentences about the Python language.

    The set takes the first qualifying sentence of each pydoc topic in sorted topic order
    (see ``pydoc_topic_sentences``), then, if fewer than 64 topics qualify, further sentences
    in the same order until it has 64. Sentences after those stay free for held-out sets.
    """
    pairs = pydoc_topic_sentences()
    seen_topics: set[str] = set()
    first: list[str] = []
    rest: list[str] = []
    for topic, sentence in pairs:
        if sentence in first or sentence in rest:
            continue

        if topic in seen_topics:
            rest.append(sentence)
        else:
            seen_topics.add(topic)
            first.append(sentence)

    texts = (first + rest)[:PYDOC_TOPICS_SIZE]
    return PromptSet.from_texts(texts, source=f"{BUILTIN_PREFIX}pydoc-topics", format="builtin")


register_builtin("pydoc-topics", pydoc_topics_prompts)
