"""Byte-level BPE tokenizer for the demo model, trained on the training passages only."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
"""Special tokens, which take ids 0 to 3 in this order."""


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer that prepends BOS when asked for special tokens.

    Byte-level pre-tokenization attaches a leading space to the word after it. A prompt that
    ends on a word, followed by a completion that starts with a space, therefore tokenizes to
    the prompt's ids followed by the completion's ids, which is where TRL's DPO splits them.

    Args:
        texts: Training text, one passage per item.
        vocab_size: Target vocabulary size including the 256 byte symbols and 4 special tokens.
        model_max_length: Maximum sequence length of the model, stored in the tokenizer config.

    Returns:
        A fast tokenizer with bos, eos, pad and unk set and right padding.
    """
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Write the tokenizer files (tokenizer.json, tokenizer_config.json, special tokens) to a folder."""
    tokenizer.save_pretrained(str(folder))
