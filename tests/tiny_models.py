"""Tiny random causal LMs of every supported architecture, built offline for tests.

Each model has 2 decoder blocks, a 32-wide residual stream and 320 output rows, in float32 and
eval mode. They share one byte-level BPE tokenizer of 300 entries trained in code on a fixed
corpus, so the output embedding has 20 rows the tokenizer never emits, as in checkpoints that
pad their embedding matrix. The tokenizer adds ``<bos>`` in front of every text (as Llama
tokenizers do) unless ``add_special_tokens=False``, and has a minimal chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB_SIZE = 320
"""Rows of every tiny model's output embedding."""

TOKENIZER_SIZE = 300
"""Entries of the tiny tokenizer: 4 special tokens, 256 byte symbols and 40 merges."""

N_LAYERS = 2
HIDDEN_SIZE = 32

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

_CORPUS = (
    "Once upon a time there was a little model that traced its own layers.",
    "The quick brown fox jumps over the lazy dog.",
    "def trace(model, prompts): return layers",
    "Alignment changes the last layers more than the first ones.",
    "Hello world! How are you today?",
)

# The logits of these random tiny models stay below 1 in absolute value. Softcapping at the real
# Gemma-2 value c = 30 would change them by at most about x**3 / (3 * c**2) < 4e-4, too little for the
# tests to notice a missing transform. A cap of 0.5 changes the log-probabilities by about 0.1.
_TEST_SOFTCAP = 0.5


def _common_fields() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _gpt2() -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=HIDDEN_SIZE,
        n_layer=N_LAYERS,
        n_head=4,
        n_positions=128,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _gpt_neox() -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**_common_fields())


def _llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**_common_fields(), num_key_value_heads=2)


def _mistral() -> Any:
    from transformers import MistralConfig

    return MistralConfig(**_common_fields(), num_key_value_heads=2, sliding_window=16)


def _qwen2() -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**_common_fields(), num_key_value_heads=2)


def _qwen3() -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**_common_fields(), num_key_value_heads=2, head_dim=8)


def _gemma() -> Any:
    from transformers import GemmaConfig

    return GemmaConfig(**_common_fields(), num_key_value_heads=2, head_dim=8)


def _gemma2() -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        **_common_fields(),
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=16,
        final_logit_softcapping=_TEST_SOFTCAP,
    )


def _gemma3_text_fields() -> dict[str, Any]:
    return {
        **_common_fields(),
        "num_key_value_heads": 2,
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 16,
    }


def _gemma3_text() -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**_gemma3_text_fields(), final_logit_softcapping=_TEST_SOFTCAP)


def _gemma3() -> Any:
    from transformers import Gemma3Config

    # A 16x16 image in 8x8 patches gives 4 patches, pooled to mm_tokens_per_image=4 tokens. The
    # image token ids sit in the model rows the tokenizer never emits.
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 8,
    }
    return Gemma3Config(
        text_config=_gemma3_text_fields(),
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=VOCAB_SIZE - 3,
        eoi_token_index=VOCAB_SIZE - 2,
        image_token_index=VOCAB_SIZE - 1,
    )


def _phi() -> Any:
    from transformers import PhiConfig

    return PhiConfig(**_common_fields())


def _phi3() -> Any:
    from transformers import Phi3Config

    return Phi3Config(**_common_fields())


def _opt() -> Any:
    from transformers import OPTConfig

    # word_embed_proj_dim below hidden_size creates project_in and project_out, as in OPT-350m.
    return OPTConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=128,
        word_embed_proj_dim=24,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _falcon() -> Any:
    from transformers import FalconConfig

    return FalconConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _bloom() -> Any:
    from transformers import BloomConfig

    return BloomConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        n_layer=N_LAYERS,
        n_head=4,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _cohere() -> Any:
    from transformers import CohereConfig

    return CohereConfig(**_common_fields(), num_key_value_heads=2, logit_scale=4.0)


def _granite() -> Any:
    from transformers import GraniteConfig

    return GraniteConfig(**_common_fields(), num_key_value_heads=2, logits_scaling=0.25)


TINY_CONFIGS: dict[str, Callable[[], Any]] = {
    "bloom": _bloom,
    "cohere": _cohere,
    "falcon": _falcon,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "gemma3_text": _gemma3_text,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "granite": _granite,
    "llama": _llama,
    "mistral": _mistral,
    "opt": _opt,
    "phi": _phi,
    "phi3": _phi3,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
}
"""Config factory of a tiny model for each model type in `spinal.adapters.ARCHITECTURES`."""


def build_tokenizer() -> Any:
    """Build the shared tiny tokenizer: byte-level BPE with pad, bos, eos and unk tokens.

    Training on the fixed corpus is deterministic, so every call returns the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()

    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS) * 3, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", BOS_ID)],
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny(model_type: str, seed: int = 0) -> tuple[Any, Any]:
    """Build a tiny random model of one architecture and the shared tokenizer.

    Args:
        model_type: A key of `TINY_CONFIGS`.
        seed: Seed of the weight initialization. The same seed gives the same weights.

    Returns:
        ``(model, tokenizer)``: the ``AutoModelForCausalLM`` model in float32 and eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = TINY_CONFIGS[model_type]()

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()

    return model, build_tokenizer()


def save_tiny(model_type: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer to ``path`` with save_pretrained (safetensors).

    Args:
        model_type: A key of `TINY_CONFIGS`.
        path: Target directory, created when missing.
        seed: Seed of the weight initialization.

    Returns:
        ``path`` as a Path.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)

    model, tokenizer = build_tiny(model_type, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)

    return directory
