"""The chat-backend interface, through which every model call in MIRROR goes (therapist, virtual client, judges,
screenplay generation). Messages use TRL's structured format (`{"role", "content": [{"type": "text" | "image"}]}`)
with images passed separately, one per `{"type": "image"}` placeholder, in order, as in the dataset's `sft` rows. A
backend that cannot see images raises `ValueError` when given one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image


@dataclass
class GenerationConfig:
    """Sampling settings. Defaults are the paper's therapist settings."""

    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 means greedy decoding."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    max_new_tokens: int = field(default=128, metadata={"help": "Maximum number of tokens to generate."})
    seed: int | None = field(default=None, metadata={"help": "Random seed for reproducible sampling."})
    stop: list[str] | None = field(default=None, metadata={"help": "Strings that end generation early."})


Messages = list[dict[str, Any]]
ImageLists = list[list[Image.Image]]  # one list of images per conversation


def text_message(role: str, text: str) -> dict[str, Any]:
    """One message in TRL's structured format holding a single text block."""
    return {"role": role, "content": [{"type": "text", "text": text}]}


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model. `name` identifies the model (id and revision) in provenance and reports.

    Backends subclass it and implement `generate_batch(conversations, images, config)`; one whose primitive is a
    single request (an HTTP endpoint) overrides `chat` too. Any object with `name`, `supports_images`, `chat` and
    `chat_batch` passes `isinstance(obj, ChatBackend)`, so test fakes need not subclass it.
    """

    name: str
    supports_images: bool

    def chat(
        self, messages: Messages, images: list[Image.Image] | None = None, config: GenerationConfig | None = None
    ) -> str:
        """Return the assistant's reply to `messages`."""
        return self.chat_batch([messages], [images or []], config)[0]

    def chat_batch(
        self, conversations: list[Messages], images: ImageLists | None = None, config: GenerationConfig | None = None
    ) -> list[str]:
        """Return one reply per conversation; backends batch where they can (`generate_batch`, never called
        with an empty batch)."""
        images = pair_images(conversations, images, self.supports_images, self.name)  # fail before any model call
        return self.generate_batch(conversations, images, config or GenerationConfig()) if conversations else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, supports_images={self.supports_images})"


@dataclass
class ModelLoadArguments:
    """Which model to load and how: shared by `mirror chat`, `mirror demo`, `mirror serve` and `mirror merge`."""

    model: str = field(
        metadata={"help": "Model folder or Hub id: a merged model or a LoRA adapter (its base model loads first)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --model."})
    device: str | None = field(
        default=None,
        metadata={"help": "cuda, cuda:1, cpu, mps, or auto (spread over all GPUs); default: the best available."},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype; default: float32 on CPU, the checkpoint's own dtype elsewhere.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run Python code shipped with the model repository (off: only for repositories you trust)."},
    )

    def check_source(self) -> None:
        """Raise a one-line error saying what is wrong, and what to do, when `model` cannot be a loadable model:
        a missing or mistyped folder, a dataset folder, or a Hub id that cannot be fetched offline."""
        path = Path(self.model).expanduser()
        what = "pass a model folder written by `mirror train` / `mirror merge`, or a Hub model id such as owner/name"
        if path.is_dir():
            if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
                return
            if any(path.glob("data/**/*.parquet")) or any(path.glob("sessions*.jsonl")):
                raise ValueError(f"--model {self.model!r} is a Mirror dataset folder, not a model; {what}")
            raise ValueError(f"--model {self.model!r} holds no config.json or adapter_config.json; {what}")
        if path.exists():
            raise ValueError(f"--model {self.model!r} is a file, not a model folder; {what}")
        from huggingface_hub import constants, try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(self.model)
        except HFValidationError:
            raise FileNotFoundError(f"--model {self.model!r}: no such folder; check the path, or {what}") from None
        if constants.HF_HUB_OFFLINE:
            cached = (
                try_to_load_from_cache(self.model, name, revision=self.revision)
                for name in ("config.json", "adapter_config.json")
            )
            if not any(isinstance(found, str) for found in cached):
                raise FileNotFoundError(
                    f"--model {self.model!r} is not a local folder, and HF_HUB_OFFLINE=1 forbids downloading it "
                    f"(it is not in the local Hub cache): check the path, or run `hf download {self.model}` online"
                )

    def load_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `load_backend` / `TransformersBackend.from_pretrained` besides the model."""
        return {key: value for key, value in asdict(self).items() if key != "model"}


def check_images(messages: Messages, images: list[Image.Image] | None, supports_images: bool, name: str) -> None:
    """Raise a clear error when images and `{"type": "image"}` placeholders disagree or the backend is text-only."""
    contents = [message.get("content") for message in messages]
    n_placeholders = sum(block.get("type") == "image" for c in contents if isinstance(c, list) for block in c)
    n_images = len(images or [])
    if n_images and not supports_images:
        raise ValueError(f"Backend {name!r} is text-only but was given {n_images} image(s)")
    if n_placeholders != n_images:
        raise ValueError(f"Messages have {n_placeholders} image placeholder(s) but {n_images} image(s) were given")


def pair_images(
    conversations: list[Messages], images: list[list[Image.Image]] | None, supports_images: bool, name: str
) -> list[list[Image.Image]]:
    """One image list per conversation (empty lists when `images` is None), each checked with `check_images`."""
    images = images or [[] for _ in conversations]
    if len(images) != len(conversations):
        raise ValueError(f"Got {len(conversations)} conversations but {len(images)} image lists")
    for messages, conversation_images in zip(conversations, images, strict=True):
        check_images(messages, conversation_images, supports_images, name)
    return images
