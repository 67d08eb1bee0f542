"""Tiny random stand-ins, built from configs, for the models the generation pipeline loads by id.

Tests and benches load them through the very code paths that load the real models (`AutoModel`/`AutoProcessor`,
`transformers.pipeline`, `StableDiffusionXLPipeline.from_pretrained`, `load_ip_adapter`), so the loading, the
pre-processing and the decision logic are exercised offline, without downloads. Their outputs mean nothing,
except where a builder pins an output on purpose (`favour` below) so a test can check a decision.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
# The transformer size every tiny stand-in here shares (CLIP text and vision towers, ViT, BERT).
_TINY_LAYERS = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}


def build_tiny_clip_tokenizer(output_dir: str | Path):
    """A character-level CLIP BPE tokenizer (letters, digits, punctuation; no merges), saved to `output_dir`."""
    from transformers import CLIPTokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {token: i for i, token in enumerate([*symbols, *(s + "</w>" for s in symbols), *_CLIP_SPECIALS])}
    (output_dir / "vocab.json").write_text(json.dumps(vocab))
    (output_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(output_dir / "vocab.json"), merges=str(output_dir / "merges.txt"))
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def build_tiny_clip(output_dir: str | Path, seed: int = 0, image_size: int = 32, projection_dim: int = 16) -> Path:
    """A tiny random CLIP (model + processor) folder that `AutoModel`/`AutoProcessor.from_pretrained` load."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    output_dir = Path(output_dir)
    tokenizer = build_tiny_clip_tokenizer(output_dir)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            **_TINY_LAYERS, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
            "projection_dim": projection_dim, **_special_ids(tokenizer),
        },
        vision_config={**_TINY_LAYERS, "image_size": image_size, "patch_size": 8, "projection_dim": projection_dim},
        projection_dim=projection_dim,
    )
    CLIPModel(config).save_pretrained(output_dir)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def _special_ids(tokenizer) -> dict[str, int]:
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}


def _label_maps(labels: list[str]) -> dict:
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _pin_label(model, labels: list[str], favour: str | None):
    """With `favour`, make that label win for every input: a zero classifier weight and a pinned bias."""
    import torch

    if favour is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.fill_(-10.0)
            model.classifier.bias[labels.index(favour)] = 10.0
    return model


def build_tiny_image_classifier(
    output_dir: str | Path, labels: list[str], favour: str | None = None, seed: int = 0
) -> Path:
    """A tiny ViT image classifier with `labels`, standing in for the age, gender and NSFW models that
    `pipeline("image-classification")` loads by id; with `favour`, that label wins for every image (pinned bias)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(**{**_TINY_LAYERS, "num_hidden_layers": 1}, image_size=32, patch_size=8, **_label_maps(labels))
    model = _pin_label(ViTForImageClassification(config), labels, favour)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(output_dir)
    return output_dir


def build_tiny_text_classifier(
    output_dir: str | Path, labels: list[str], favour: str | None = None, seed: int = 0
) -> Path:
    """A tiny BERT text classifier (character tokenizer) with `labels`, standing in for a dialogue-safety model that
    `pipeline("text-classification")` loads by id; `favour` pins the winning label."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    output_dir = Path(output_dir)
    tokenizer = build_tiny_clip_tokenizer(output_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        **{**_TINY_LAYERS, "num_hidden_layers": 1},
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        **_label_maps(labels),
    )
    _pin_label(BertForSequenceClassification(config), labels, favour).save_pretrained(output_dir)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible chat server (tests and benches): real HTTP on 127.0.0.1, answers from a callback


def make_chat_app(respond, latency: float = 0.0):
    """A FastAPI app serving `POST /v1/chat/completions`; `respond(request_json) -> str` writes each reply.

    `latency` seconds are awaited per request without blocking others, like a server batching concurrent requests.
    """
    import asyncio
    import time

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    app.state.num_requests = 0

    async def chat_completions(request):  # a plain Starlette route: no signature for FastAPI to interpret
        body = await request.json()
        app.state.num_requests += 1
        if latency:
            await asyncio.sleep(latency)
        text = respond(body)
        return JSONResponse({
            "id": f"chatcmpl-{app.state.num_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })

    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    return app


@contextmanager
def serve_app(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free 127.0.0.1 port in a thread: `with serve_app(app) as base_url: ...`."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the scripted chat server did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# ---------------------------------------------------------------------------------------------------------------
# A tiny SDXL pipeline with an IP-Adapter (the layout `StableDiffusionXLPipeline.from_pretrained` and
# `load_ip_adapter` read), after the dummy components of diffusers' own SDXL and IP-Adapter tests


def build_tiny_sdxl(output_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random SDXL pipeline folder (two CLIP text encoders, UNet, VAE, CLIP image encoder) plus an
    IP-Adapter weight file `ip_adapter/ip-adapter.safetensors` for it. Returns the pipeline folder."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    output_dir = Path(output_dir)
    tokenizer = build_tiny_clip_tokenizer(output_dir / "_tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=64, norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    text_config = CLIPTextConfig(
        **_special_ids(tokenizer), **_TINY_LAYERS, vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=32
    )
    vision_config = CLIPVisionConfig(**_TINY_LAYERS, image_size=32, projection_dim=32, patch_size=8)
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config), text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
        image_encoder=CLIPVisionModelWithProjection(vision_config), feature_extractor=feature_extractor,
    )
    pipeline.save_pretrained(output_dir / "pipeline", safe_serialization=True)

    # IP-Adapter weights in the file layout of h94/IP-Adapter: `image_proj.*` and `ip_adapter.<n>.to_{k,v}_ip.*`.
    state = {}
    cross_attention = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    for key_id, name in zip(range(1, 2 * len(cross_attention), 2), cross_attention, strict=True):
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        processor = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=64, scale=1.0).state_dict()
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor["to_k_ip.0.weight"]
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor["to_v_ip.0.weight"]
    projection = ImageProjection(cross_attention_dim=64, image_embed_dim=32, num_image_text_embeds=4).state_dict()
    state |= {f"image_proj.proj.{k}": projection[f"image_embeds.{k}"] for k in ("weight", "bias")}
    state |= {f"image_proj.norm.{k}": projection[f"norm.{k}"] for k in ("weight", "bias")}
    (output_dir / "ip_adapter").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(output_dir / "ip_adapter" / "ip-adapter.safetensors"))
    return output_dir / "pipeline"
