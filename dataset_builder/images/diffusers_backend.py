"""Identity-preserving client faces with diffusers: SDXL + an IP-Adapter face variant (paper step 3).

The paper used PhotoMaker v1 on SDXL, which diffusers does not ship; IP-Adapter (with its face variants) loads
natively through `pipeline.load_ip_adapter`, so it is the default identity adapter here, and PhotoMaker plugs in
at `DiffusersFaceBackend._load_identity_adapter`. Per request: the expression in the prompt, the contrasting
expression in the negative prompt, the reference face as the IP-Adapter image, a generator seeded with
`request.seed`, and a LANCZOS resize to `request.size`; `last_settings` keeps the settings of the latest image.

Reference faces, in order: one registered with `register_reference` (e.g. an identity pool's CelebA faces, used
but never redistributed), `<reference_dir>/<identity_key>.png|jpg`, else the embedded renderer's neutral portrait
of that identity, logged once per identity so nobody mistakes it for a photo reference. Under `accelerate launch`
with `device=None` each process takes its own accelerator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from .base import DEFAULT_IMAGE_SIZE, FaceRequest

logger = logging.getLogger(__name__)

IDENTITY_ADAPTERS = ("ip-adapter", "photomaker", "none")


class DiffusersFaceBackend:
    """An `ImageBackend` on a diffusers SDXL pipeline with an identity adapter.

    Args:
        model: SDXL pipeline folder or Hub id (e.g. `stabilityai/stable-diffusion-xl-base-1.0`).
        ip_adapter: IP-Adapter folder or Hub id (default `h94/IP-Adapter`, its SDXL plus-face weights), so
            `mirror render-faces --backend diffusers --model <SDXL id>` works with no other option.
        ip_adapter_subfolder / ip_adapter_weight: where the adapter file lives in it.
        image_encoder / image_encoder_subfolder: the adapter's CLIP vision encoder (loaded into the pipeline).
        ip_adapter_scale: strength of the identity conditioning.
        identity_adapter: "ip-adapter" (default), "photomaker" (see module doc) or "none" (text only; recorded).
        reference_dir: folder with `<identity_key>.png|jpg` reference faces.
        prompt / negative_prompt: templates ({age}, {gender}, {expression} / {contrast}).
        num_inference_steps, guidance_scale, generation_size: sampling settings.
        device, dtype: where the pipeline runs (default: the accelerate process's device, fp16 on CUDA).
        revision, variant: of `model`. pipeline: a ready pipeline (tests, custom setups).
    """

    name = "diffusers"

    def __init__(
        self,
        model: str | None = None,
        *,
        ip_adapter: str | None = "h94/IP-Adapter",
        ip_adapter_subfolder: str | None = "sdxl_models",
        ip_adapter_weight: str = "ip-adapter-plus-face_sdxl_vit-h.safetensors",
        image_encoder: str | None = "h94/IP-Adapter",
        image_encoder_subfolder: str | None = "models/image_encoder",
        ip_adapter_scale: float = 0.7,
        identity_adapter: str = "ip-adapter",
        reference_dir: str | None = None,
        prompt: str = "portrait photo of a {age}-year-old {gender}, {expression}, face centred, plain background, "
        "natural light",
        negative_prompt: str = "{contrast}, cartoon, drawing, deformed face, blurry, several people, text",
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        generation_size: int = 1024,
        device: str | None = None,
        dtype: str | None = None,
        revision: str | None = None,
        variant: str | None = None,
        pipeline: Any = None,
    ) -> None:
        if identity_adapter not in IDENTITY_ADAPTERS:
            raise ValueError(f"identity_adapter must be one of {list(IDENTITY_ADAPTERS)}, got {identity_adapter!r}")
        if pipeline is None and not model:
            example = "stabilityai/stable-diffusion-xl-base-1.0"
            raise ValueError(f"the diffusers backend needs a model (e.g. --model {example})")
        if identity_adapter == "ip-adapter" and pipeline is None and not ip_adapter:
            raise ValueError(
                "identity_adapter 'ip-adapter' needs ip_adapter (e.g. h94/IP-Adapter); pass "
                "identity_adapter='none' to render without identity conditioning (faces will drift)"
            )
        self.model, self.revision, self.identity_adapter = model, revision, identity_adapter
        self.ip_adapter_scale, self.generation_size = ip_adapter_scale, generation_size
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.reference_dir = Path(reference_dir) if reference_dir else None
        self._references: dict[str, str] = {}
        self._fallback_logged: set[str] = set()
        self._renderer = None
        self.last_settings: dict[str, Any] | None = None
        self.device = device or _default_device()
        encoder = (image_encoder, image_encoder_subfolder)
        self.pipeline = pipeline or self._load_pipeline(model, *encoder, dtype, revision, variant)
        if identity_adapter != "none" and not getattr(self.pipeline, "_mirror_identity_loaded", False):
            self._load_identity_adapter(ip_adapter, ip_adapter_subfolder, ip_adapter_weight)
        self.pipeline.set_progress_bar_config(disable=True)
        if identity_adapter == "none":
            self.name = "diffusers-text-only"

    def _load_pipeline(self, model, image_encoder, image_encoder_subfolder, dtype, revision, variant):
        import torch
        from diffusers import StableDiffusionXLPipeline

        default_dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        torch_dtype = getattr(torch, dtype) if dtype else default_dtype
        components = {}
        has_own_encoder = (Path(model) / "image_encoder").is_dir()  # a local pipeline folder that ships one
        if image_encoder and self.identity_adapter == "ip-adapter" and not has_own_encoder:
            from transformers import CLIPVisionModelWithProjection

            components["image_encoder"] = CLIPVisionModelWithProjection.from_pretrained(
                image_encoder, subfolder=image_encoder_subfolder, torch_dtype=torch_dtype
            )
        pipeline = StableDiffusionXLPipeline.from_pretrained(
            model, torch_dtype=torch_dtype, revision=revision, variant=variant, use_safetensors=True, **components
        )
        return pipeline.to(self.device)

    def _load_identity_adapter(self, ip_adapter, subfolder, weight_name) -> None:
        """The place an identity adapter is attached. IP-Adapter loads natively; PhotoMaker goes here too."""
        if self.identity_adapter == "photomaker":
            # PhotoMaker (TencentARC) is not part of diffusers. With its package installed, build its
            # PhotoMakerStableDiffusionXLPipeline from the same components here, call its `load_photomaker_adapter`,
            # and pass `input_id_images=[reference]` instead of `ip_adapter_image` in `_generate`.
            raise NotImplementedError(
                "identity_adapter 'photomaker' needs the PhotoMaker package, which diffusers does not ship; use "
                "'ip-adapter' (e.g. h94/IP-Adapter, ip-adapter-plus-face_sdxl_vit-h.safetensors) or plug it in at "
                "DiffusersFaceBackend._load_identity_adapter"
            )
        if ip_adapter is None:
            return  # a ready pipeline whose adapter the caller loaded
        self.pipeline.load_ip_adapter(ip_adapter, subfolder=subfolder or "", weight_name=weight_name,
                                      image_encoder_folder=None)
        self.pipeline.set_ip_adapter_scale(self.ip_adapter_scale)
        self.pipeline._mirror_identity_loaded = True

    def register_reference(self, identity_key: str, path: str | Path) -> None:
        """Use the image at `path` as the reference face of `identity_key`."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"reference face of {identity_key!r} not found: {path}")
        self._references[identity_key] = str(path)

    def reference_for(self, request: FaceRequest) -> Image.Image:
        path = self._references.get(request.identity_key)
        if path is None and self.reference_dir is not None:
            candidates = (self.reference_dir / f"{request.identity_key}{ext}" for ext in (".png", ".jpg", ".jpeg"))
            path = next((str(candidate) for candidate in candidates if candidate.is_file()), None)
        if path is not None:
            return Image.open(path).convert("RGB")
        if request.identity_key not in self._fallback_logged:
            self._fallback_logged.add(request.identity_key)
            logger.warning(
                "diffusers backend: no reference photo for identity %r; using the embedded renderer's portrait of it "
                "as the identity reference", request.identity_key
            )
        if self._renderer is None:
            from .face_renderer import EmbeddedFaceRenderer

            self._renderer = EmbeddedFaceRenderer()
        neutral = FaceRequest(request.identity_key, "neutral", gender=request.gender, age=request.age)
        return self._renderer.render(neutral)

    def prompts(self, request: FaceRequest) -> tuple[str, str]:
        gender = {"female": "woman", "male": "man"}.get(request.gender or "", "person")
        age = request.age if request.age is not None else "adult"
        positive = self.prompt.format(age=age, gender=gender, expression=request.expression)
        negative = self.negative_prompt.format(contrast=request.contrast_expression or "").strip(" ,")
        return positive, negative

    def render(self, request: FaceRequest) -> Image.Image:
        import torch

        positive, negative = self.prompts(request)
        generator = torch.Generator(device="cpu").manual_seed(int(request.seed))
        kwargs: dict[str, Any] = {}
        if self.identity_adapter == "ip-adapter":
            kwargs["ip_adapter_image"] = self.reference_for(request)
        side, steps, guidance = self.generation_size, self.num_inference_steps, self.guidance_scale
        result = self.pipeline(prompt=positive, negative_prompt=negative, num_inference_steps=steps,
                               guidance_scale=guidance, height=side, width=side, generator=generator,
                               output_type="pil", **kwargs)
        self.last_settings = {"prompt": positive, "negative_prompt": negative, "seed": int(request.seed),
                              "steps": steps, "guidance_scale": guidance, "identity_adapter": self.identity_adapter,
                              "model": self.model}
        image = result.images[0].convert("RGB")
        size = request.size or DEFAULT_IMAGE_SIZE
        return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


def _default_device() -> str:
    try:
        from accelerate import PartialState

        return str(PartialState().device)
    except Exception:  # accelerate missing or not initialisable: plain CUDA/CPU choice
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
