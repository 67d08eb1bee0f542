"""The diffusers image backend on a tiny SDXL pipeline built from configs, identity adapter (IP-Adapter) included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import sample_records, write_raw
from PIL import Image

from dataset_builder.images import FaceRequest, ImageBackend, get_image_backend


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from dataset_builder.tiny import build_tiny_sdxl

    root = tmp_path_factory.mktemp("tiny-sdxl")
    return build_tiny_sdxl(root), root / "ip_adapter"


@pytest.fixture(scope="module")
def backend(tiny_sdxl):
    pipeline_dir, adapter_dir = tiny_sdxl
    return get_image_backend(
        "diffusers",
        model=str(pipeline_dir),
        ip_adapter=str(adapter_dir),
        ip_adapter_subfolder=None,
        ip_adapter_weight="ip-adapter.safetensors",
        num_inference_steps=1,
        generation_size=32,
        device="cpu",
    )


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_renders_336_with_identity_adapter(backend, tmp_path):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    assert isinstance(backend, ImageBackend) and backend.name == "diffusers"
    unet = backend.pipeline.unet
    assert unet.encoder_hid_proj is not None  # the adapter's image projection is attached
    assert any(
        isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)) for p in unet.attn_processors.values()
    )

    request = FaceRequest(
        "client-7", "looks away, jaw clenched", gender="male", age=57, contrast_expression="relaxed smile", seed=11
    )
    image = backend.render(request)
    assert image.size == (336, 336) and image.mode == "RGB"
    assert backend.last_settings["seed"] == 11
    assert backend.last_settings["negative_prompt"].startswith("relaxed smile")
    assert "57-year-old man, looks away, jaw clenched" in backend.last_settings["prompt"]
    assert np.array_equal(pixels(backend.render(request)), pixels(image))  # the seed fixes the image

    # The reference face feeds the identity adapter: another reference gives another image, same seed and text.
    Image.new("RGB", (64, 64), (250, 250, 250)).save(tmp_path / "white.png")
    Image.effect_noise((64, 64), 90).convert("RGB").save(tmp_path / "noise.png")
    backend.register_reference("client-7", tmp_path / "white.png")
    white = backend.render(request)
    backend.register_reference("client-7", tmp_path / "noise.png")
    noise = backend.render(request)
    assert not np.array_equal(pixels(white), pixels(noise))
    with pytest.raises(FileNotFoundError):
        backend.register_reference("client-7", tmp_path / "missing.png")


def test_render_faces_with_diffusers_backend(backend, tmp_path):
    from dataset_builder.build import render_faces

    record = sample_records(1)[0]
    record["turns"] = record["turns"][:2]
    write_raw(tmp_path / "raw", [record])
    render_faces(tmp_path / "raw", tmp_path / "out", backend)
    out = json.loads((tmp_path / "out" / "sessions.jsonl").read_text().splitlines()[0])
    assert out["source"]["image_backend"] == "diffusers"
    for turn in out["turns"]:
        if turn["speaker"] == "client":
            assert Image.open(tmp_path / "out" / turn["image"]).size == (336, 336)


def test_registry_and_clear_errors(tiny_sdxl):
    with pytest.raises(ValueError, match="needs a model"):
        get_image_backend("diffusers")
    with pytest.raises(ValueError, match="needs ip_adapter"):
        get_image_backend("diffusers", model=str(tiny_sdxl[0]), ip_adapter="")
    with pytest.raises(ValueError, match="takes no model"):
        get_image_backend("embedded", model="x")
    with pytest.raises(ValueError, match=r"available: \['embedded', 'diffusers'\]"):
        get_image_backend("photoshop")
    with pytest.raises(NotImplementedError, match="PhotoMaker"):
        get_image_backend("diffusers", model=str(tiny_sdxl[0]), identity_adapter="photomaker", device="cpu")
    assert get_image_backend("embedded", model=None).name.startswith(
        "embedded"
    )  # a forwarded empty --model is dropped


class ScriptedChat:
    """An in-process ChatBackend answering in the real screenplay / expression formats (HTTP is covered by
    tests/test_generate.py; here the point is the image side of `mirror generate`)."""

    name = "scripted"
    supports_images = False

    def chat(self, messages, images=None, config=None):
        if "facial expressions" in messages[0]["content"][0]["text"]:
            return "Expression: brows drawn together, gaze lowered\nContrast: relaxed brows, open smile"
        return (
            "Client: [Sits down slowly, eyes on the floor]\nTherapist: Welcome. What brings you in?\n"
            "Client: [Shrugs] Work, mostly.\nTherapist: Would you tell me more about work this week?"
        )

    def chat_batch(self, conversations, images=None, config=None):
        return [self.chat(m) for m in conversations]


def test_generate_with_diffusers_and_an_identity_pool(backend, tmp_path):
    from dataset_builder import generate as G

    pool = [("pool-f", "female", 28, (200, 150, 120)), ("pool-m", "male", 55, (90, 70, 60))]
    for key, _, _, colour in pool:
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{key}.png")
    (tmp_path / "pool.jsonl").write_text(
        "".join(json.dumps({"key": k, "gender": g, "age": a, "image": f"{k}.png"}) + "\n" for k, g, a, _ in pool)
    )
    config = G.GenerateConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "profiles": "sample",
            "max_profiles": 1,
            "resistance_styles": ["none"],
            "identity_pool": str(tmp_path / "pool.jsonl"),
            "image_backend": "diffusers",
            "image_filters": False,
        }
    )
    G.generate(config, backend=ScriptedChat(), image_backend=backend)
    record = json.loads((tmp_path / "out" / "sessions-00000.jsonl").read_text())
    client = record["client"]
    expected = "pool-f" if client["gender"] == "female" else "pool-m"
    assert record["identity"] == {"key": expected, "image": str(tmp_path / f"{expected}.png")}
    assert "reference_face:identity-pool" in record["quality"]["flags"]
    assert backend._references[expected] == str(tmp_path / f"{expected}.png")  # the pool face drives the adapter
    assert record["source"]["image_backend"] == "diffusers"
    faces = [t["image"] for t in record["turns"] if t["speaker"] == "client"]
    assert faces and all(Image.open(tmp_path / "out" / f).size == (336, 336) for f in faces)
