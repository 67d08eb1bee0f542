"""Tiny random models built from configs, offline, in seconds.

They exercise exactly the code paths of real checkpoints (same classes, processor, chat template) so the
quickstart and the tests run on a laptop CPU without downloading weights. Their replies are gibberish by design.
"""

from __future__ import annotations

from pathlib import Path

from training.modeling import pad_to_square_image_processor, read_chat_template

TOKENIZER_KINDS = ("byte_level", "metaspace")
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]

# A few sentences in the register of the data; byte-level BPE covers any other text.
_CORPUS = [
    "The image above shows the client. Client information: personal details and reason for counseling.",
    "Therapist: How have you been feeling this week? Client: I guess I am fine, nothing to talk about.",
    "You are a counselor practising cognitive behavioural therapy. Reply with the therapist's next statement.",
    "It sounds like part of you is unsure this will help, and that is completely okay to say.",
    "Looks away, arms crossed, jaw clenched, small relieved smile, eyes welling up, raised eyebrow.",
    "CBT technique for this session: Decatastrophizing. CBT plan: 1. explore the thought 2. weigh the evidence.",
    "USER: ASSISTANT: Technique: Plan: homework experiment between sessions, notice the evidence.",
]


def load_chat_template(name: str = "llava_eos") -> str:
    """Read a bundled chat template (`training/chat_templates/<name>.jinja`)."""
    return read_chat_template(name)


def build_tiny_tokenizer(vocab_size: int | None = None, kind: str = "byte_level"):
    """A BPE tokenizer trained on a few sentences, wrapped as a `PreTrainedTokenizerFast`.

    `byte_level` (GPT-2 style) covers any text. `metaspace` tokenizes as Llama/Vicuna's SentencePiece does: a space
    becomes `▁` and belongs to the *next* word (`"ASSISTANT: Thank"` -> `":", "▁Thank"`), so token-boundary bugs
    the byte-level tokenizer hides (a trailing space in a generation prompt) show up with it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}")
    vocab_size = vocab_size or (400 if kind == "byte_level" else 600)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "byte_level":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        alphabet = sorted(set("▁\n" + "".join(chr(c) for c in range(32, 127))))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
    corpus = list(_CORPUS)
    if kind == "metaspace":
        # Like a real SentencePiece vocabulary, every word-initial letter gets its "▁X" token, so a reply's first
        # token carries its leading space (training) and a space left at the end of a prompt stands alone.
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        corpus += [" ".join(letters)] * 4
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=8192,
    )


def _tiny_llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        **_special_token_ids(tokenizer),
    )


def _special_token_ids(tokenizer) -> dict[str, int]:
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}


def _generation_config(tokenizer, **sampling):
    from transformers import GenerationConfig

    return GenerationConfig(**_special_token_ids(tokenizer), max_new_tokens=128, **sampling)


def build_tiny_llava(
    output_dir: str | Path, seed: int = 0, *, tokenizer_kind: str = "byte_level", pad_to_square: bool = False
) -> Path:
    """Save a tiny random LLaVA (CLIP vision tower + Llama) with its processor and chat template; `pad_to_square`:
    the processor pads images to a square (LLaVA-1.5's own preprocessing) instead of centre-cropping them."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(kind=tokenizer_kind)
    image_size, patch_size = 28, 14
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=_tiny_llama_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer, do_sample=True, temperature=0.7, top_p=0.9)
    # The Pillow image processor: the torchvision-backed default is not installed on CPU-only setups.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    if pad_to_square:
        image_processor = pad_to_square_image_processor(image_processor)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=load_chat_template(),
    )
    tokenizer.chat_template = processor.chat_template
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    return output_dir


def build_tiny_causal_lm(output_dir: str | Path, seed: int = 0, *, tokenizer_kind: str = "byte_level") -> Path:
    """Save a tiny random Llama causal LM with tokenizer and chat template (text-only baselines, judges)."""
    import torch
    from transformers import LlamaForCausalLM

    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(kind=tokenizer_kind)
    tokenizer.chat_template = load_chat_template()
    model = LlamaForCausalLM(_tiny_llama_config(tokenizer))
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir
