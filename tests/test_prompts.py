"""Prompt loading from text, JSONL and HH-RLHF files, and the built-in prompt sets."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from spinal import prompts
from spinal.errors import PromptSetError
from spinal.prompts import (
    PromptSet,
    builtin_prompt_sets,
    hash_texts,
    load_builtin,
    load_prompts,
    pydoc_topic_sentences,
    register_builtin,
)

SHARED_DATA = Path(
    os.environ.get("SPINAL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
HH_FILE = SHARED_DATA / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if compress:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def hh_row(*turns: str) -> dict:
    """Build an HH row from alternating human/assistant turns; the last turn is the reply."""
    parts = []
    for index, turn in enumerate(turns):
        speaker = "Human" if index % 2 == 0 else "Assistant"
        parts.append(f"\n\n{speaker}: {turn}")
    chosen = "".join(parts)
    rejected = "".join(parts[:-1]) + "\n\nAssistant: A different reply."
    return {"chosen": chosen, "rejected": rejected}


# Text files -------------------------------------------------------------------------------------


def test_text_skips_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt  \n\n   \nsecond prompt\r\nthird\n", encoding="utf-8")

    prompt_set = load_prompts(path)

    assert prompt_set.texts == ("first prompt", "second prompt", "third")
    assert prompt_set.n_skipped == 2
    assert prompt_set.format == "text"
    assert prompt_set.source == str(path)


def test_text_strips_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffhello there\n".encode("utf-8"))

    assert load_prompts(path).texts == ("hello there",)


def test_text_line_starting_brace(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('{"prompt": "kept as text"}\nplain\n', encoding="utf-8")

    prompt_set = load_prompts(path)

    assert prompt_set.format == "text"
    assert prompt_set.texts[0] == '{"prompt": "kept as text"}'


def test_unknown_suffix_sniffs_json(tmp_path):
    path = write_jsonl(tmp_path / "prompts.data", [{"prompt": "a"}, {"prompt": "b"}])

    prompt_set = load_prompts(path)

    assert prompt_set.format == "jsonl"
    assert prompt_set.texts == ("a", "b")


def test_unknown_suffix_sniffs_text(tmp_path):
    path = tmp_path / "prompts"
    path.write_text("one\ntwo\n", encoding="utf-8")

    assert load_prompts(path).format == "text"


# JSONL files ------------------------------------------------------------------------------------


def test_jsonl_prompt_and_text_keys(tmp_path):
    rows = [{"prompt": "from prompt", "text": "ignored"}, {"text": "from text"}, {"prompt": "  "}]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)

    prompt_set = load_prompts(path)

    assert prompt_set.texts == ("from prompt", "from text")
    assert prompt_set.n_skipped == 1
    assert prompt_set.format == "jsonl"


def test_jsonl_blank_lines_skipped(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")

    prompt_set = load_prompts(path)

    assert prompt_set.texts == ("a", "b")
    assert prompt_set.n_skipped == 1


def test_jsonl_gzip_by_suffix(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl.gz", [{"prompt": "zipped"}], compress=True)

    prompt_set = load_prompts(path)

    assert prompt_set.texts == ("zipped",)
    assert prompt_set.format == "jsonl"


def test_gzip_detected_by_magic_bytes(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "zipped, no .gz"}], compress=True)

    assert load_prompts(path).texts == ("zipped, no .gz",)


def test_gzip_text_file_by_magic(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(gzip.compress(b"line one\nline two\n"))

    assert load_prompts(path).texts == ("line one", "line two")


def test_json_array_of_strings(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["alpha", {"prompt": "beta"}], indent=2), encoding="utf-8")

    assert load_prompts(path).texts == ("alpha", "beta")


def test_jsonl_malformed_line_number(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",,}\n', encoding="utf-8")

    with pytest.raises(PromptSetError) as caught:
        load_prompts(path)

    message = str(caught.value)
    assert f"{path} line 3: invalid JSON" in message
    assert "\n" not in message


def test_jsonl_row_without_prompt(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}, {"question": "b", "id": 2}])

    with pytest.raises(PromptSetError) as caught:
        load_prompts(path)

    message = str(caught.value)
    assert "line 2" in message
    assert "found: id, question" in message


def test_jsonl_non_string_prompt(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])

    with pytest.raises(PromptSetError, match="line 1: 'prompt' has type list, expected a string"):
        load_prompts(path)


def test_jsonl_row_not_object(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}, 17])

    with pytest.raises(PromptSetError, match="line 2: expected a JSON object, found int"):
        load_prompts(path)


# HH-RLHF files ----------------------------------------------------------------------------------


def test_hh_cuts_after_last_assistant(tmp_path):
    row = hh_row("What is a list?", "An ordered sequence.", "And a tuple?", "An immutable sequence.")
    path = write_jsonl(tmp_path / "pairs.jsonl", [row])

    prompt_set = load_prompts(path)

    expected = (
        "Human: What is a list?\n\nAssistant: An ordered sequence.\n\nHuman: And a tuple?\n\nAssistant:"
    )
    assert prompt_set.format == "hh"
    assert prompt_set.texts == (expected,)


def test_hh_ignores_quoted_marker(tmp_path):
    row = hh_row("Quote the format.", 'It reads "Assistant: hello" in the log.')
    path = write_jsonl(tmp_path / "pairs.jsonl", [row])

    assert load_prompts(path).texts == ("Human: Quote the format.\n\nAssistant:",)


def test_hh_gzip_file(tmp_path):
    rows = [hh_row("Name a colour.", "Blue."), hh_row("Name a number.", "Seven.")]
    path = write_jsonl(tmp_path / "pairs.jsonl.gz", rows, compress=True)

    prompt_set = load_prompts(path)

    assert prompt_set.texts == ("Human: Name a colour.\n\nAssistant:", "Human: Name a number.\n\nAssistant:")
    assert prompt_set.format == "hh"


def test_hh_row_without_marker(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [hh_row("a", "b"), {"chosen": "no turns here", "rejected": "x"}]
    )

    with pytest.raises(PromptSetError, match="line 2: 'chosen' has no"):
        load_prompts(path)


def test_hh_format_on_plain_rows(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a"}])

    with pytest.raises(PromptSetError, match="line 1: 'chosen' is missing"):
        load_prompts(path, fmt="hh")


def test_prompt_key_beats_chosen(tmp_path):
    row = {"prompt": "explicit prompt", "chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "z"}
    path = write_jsonl(tmp_path / "pairs.jsonl", [row])

    prompt_set = load_prompts(path)

    assert prompt_set.texts == ("explicit prompt",)
    assert prompt_set.format == "jsonl"


@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"HH-RLHF test file not found at {HH_FILE}")
def test_hh_real_preference_file():
    prompt_set = load_prompts(HH_FILE)

    # Only structure is checked: the texts are red-team dialogues and are never printed.
    assert prompt_set.format == "hh"
    assert len(prompt_set) == 2312
    assert all(text.startswith("Human:") for text in prompt_set.texts)
    assert all(text.endswith("\n\nAssistant:") for text in prompt_set.texts)


# Errors -----------------------------------------------------------------------------------------


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.txt"

    with pytest.raises(PromptSetError) as caught:
        load_prompts(path)

    assert f"prompt file not found: {path}" in str(caught.value)


def test_directory_path_rejected(tmp_path):
    with pytest.raises(PromptSetError, match="is a directory"):
        load_prompts(tmp_path)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n", encoding="utf-8")

    with pytest.raises(PromptSetError) as caught:
        load_prompts(path)

    message = str(caught.value)
    assert str(path) in message
    assert "contains no prompts" in message


def test_invalid_utf8_rejected(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))

    with pytest.raises(PromptSetError) as caught:
        load_prompts(path)

    message = str(caught.value)
    assert "not valid UTF-8" in message
    assert "re-save it as UTF-8" in message


def test_corrupt_gzip_rejected(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "a"}\n' * 50)[:40])

    with pytest.raises(PromptSetError, match="could not be read"):
        load_prompts(path)


def test_unknown_format_rejected(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a\n", encoding="utf-8")

    with pytest.raises(PromptSetError, match="prompt format 'csv' is invalid"):
        load_prompts(path, fmt="csv")


@pytest.mark.parametrize("value", [0, -3, True, 2.5])
def test_max_prompts_invalid_values(tmp_path, value):
    path = tmp_path / "prompts.txt"
    path.write_text("a\n", encoding="utf-8")

    with pytest.raises(PromptSetError, match="max_prompts="):
        load_prompts(path, max_prompts=value)


# Hash and truncation ----------------------------------------------------------------------------


def test_max_prompts_takes_first(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a\nb\nc\nd\n", encoding="utf-8")

    prompt_set = load_prompts(path, max_prompts=2)

    assert prompt_set.texts == ("a", "b")
    assert prompt_set.sha256 == hash_texts(["a", "b"])


def test_max_prompts_stops_reading(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\nnot json\n', encoding="utf-8")

    assert load_prompts(path, max_prompts=2).texts == ("a", "b")


def test_hash_ignores_path_and_format(tmp_path):
    text_path = tmp_path / "one.txt"
    text_path.write_text("alpha\nbeta\n", encoding="utf-8")
    (tmp_path / "other").mkdir()
    jsonl_path = write_jsonl(
        tmp_path / "other" / "two.jsonl.gz", [{"prompt": "alpha"}, {"text": "beta"}], compress=True
    )

    assert load_prompts(text_path).sha256 == load_prompts(jsonl_path).sha256


def test_hash_depends_on_order():
    assert hash_texts(["a", "b"]) != hash_texts(["b", "a"])


def test_hash_is_sha256_hex():
    digest = hash_texts(["a"])

    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_from_texts_rejects_empty():
    with pytest.raises(PromptSetError, match="is empty"):
        PromptSet.from_texts([])


def test_from_texts_rejects_non_string():
    with pytest.raises(PromptSetError, match="prompt 1 of in-memory has type int"):
        PromptSet.from_texts(["ok", 3])


def test_from_texts_rejects_blank():
    with pytest.raises(PromptSetError, match="prompt 0 of in-memory is blank"):
        PromptSet.from_texts(["   "])


# Built-in sets ----------------------------------------------------------------------------------


def test_builtin_registry_lists_pydoc():
    assert "pydoc-topics" in builtin_prompt_sets()


def test_pydoc_topics_sixty_four():
    prompt_set = load_builtin("pydoc-topics")

    assert len(prompt_set) == 64
    assert len(set(prompt_set.texts)) == 64
    assert prompt_set.source == "builtin:pydoc-topics"
    assert prompt_set.format == "builtin"


def test_pydoc_topics_short_sentences():
    prompt_set = load_builtin("pydoc-topics")

    assert all(6 <= len(text.split()) <= 30 for text in prompt_set.texts)
    assert all(text.endswith(".") for text in prompt_set.texts)
    assert all("::=" not in text for text in prompt_set.texts)


def test_pydoc_topics_deterministic():
    assert load_builtin("pydoc-topics").sha256 == load_builtin("pydoc-topics").sha256


def test_pydoc_sentences_leave_held_out():
    used = set(load_builtin("pydoc-topics").texts)
    remaining = [sentence for _, sentence in pydoc_topic_sentences() if sentence not in used]

    assert len(remaining) >= 64


def test_builtin_through_load_prompts():
    prompt_set = load_prompts("builtin:pydoc-topics", max_prompts=5)

    assert prompt_set.texts == load_builtin("pydoc-topics").texts[:5]
    assert prompt_set.sha256 == hash_texts(prompt_set.texts)


def test_builtin_unknown_name_lists_available():
    with pytest.raises(PromptSetError) as caught:
        load_builtin("no-such-set")

    message = str(caught.value)
    assert "'no-such-set' not found" in message
    assert "pydoc-topics" in message


def test_register_builtin_duplicate_rejected(monkeypatch):
    monkeypatch.setattr(prompts, "_BUILTINS", dict(prompts._BUILTINS))

    def factory():
        return PromptSet.from_texts(["x"], source="builtin:extra", format="builtin")

    register_builtin("extra", factory)

    with pytest.raises(PromptSetError, match="already registered"):
        register_builtin("extra", factory)

    register_builtin("extra", factory, replace=True)
    assert load_prompts("builtin:extra").texts == ("x",)


def test_register_builtin_invalid_name():
    with pytest.raises(PromptSetError, match="name 'a b' is invalid"):
        register_builtin("a b", lambda: PromptSet.from_texts(["x"]))
