"""`mirror chat`: a terminal session with a MIRROR therapist (you play the client).

Reads one client turn per line from stdin, so it can also be scripted (`printf 'hello\\n/quit\\n' | mirror chat`).
The AI disclosure comes first and the safety layer is always on: a person types into this command, so it offers no
switch to disable it. Commands: `/image PATH` (the client's face from now on), `/silent` (a non-verbal turn, as at
the start of every dataset session), `/plan`, `/prompt` (the last prompt sent to the model), `/help`, `/quit`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from PIL import UnidentifiedImageError

from .backends.base import GenerationConfig, ModelLoadArguments
from .safety import SafetyConfig
from .therapist import STRATEGIES, VISION_STRATEGIES, MirrorTherapist, load_image

# A neutral profile for trying a model without writing one: every field the prompt renders, nothing invented.
DEFAULT_CLIENT = {
    "name": "Alex",
    **dict.fromkeys(("age", "gender", "occupation", "education", "marital_status", "family")),
    "personal_info": "",
    "reason_for_counseling": "Not stated yet.",
    "distorted_thought": "",
    "thinking_traps": [],
}
HELP = "Commands: /image PATH, /silent, /plan, /prompt, /help, /quit. Anything else is what you say as the client."
# C0 and C1 control characters and DEL, except newline and tab: model output must not drive the terminal.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class SafetyArguments:
    """The safety-layer options of the commands a person types into: `mirror chat`, `mirror demo`, `mirror serve`."""

    locale: str = field(
        default=SafetyConfig.locale, metadata={"help": SafetyConfig.__dataclass_fields__["locale"].metadata["help"]}
    )
    log_client_text: bool = field(
        default=False, metadata={"help": "Opt in to logging what clients write (off: client text is sensitive)."}
    )

    def safety_config(self, enabled: bool = True) -> SafetyConfig:
        return SafetyConfig(enabled=enabled, locale=self.locale, log_client_text=self.log_client_text)


@dataclass
class TherapistArguments(SafetyArguments):
    """Which therapist to talk to, besides the model: shared by `mirror chat` and `mirror demo`."""

    strategy: str | None = field(
        default=None,
        metadata={"help": "Therapist strategy; default: the model folder's, else base / text.", "choices": STRATEGIES},
    )
    client_profile: str | None = field(
        default=None, metadata={"help": "JSON client profile (or a dataset record with a 'client' key)."}
    )
    base_url: str | None = field(
        default=None,
        metadata={"help": "Talk to --model on an OpenAI-compatible server instead of loading it (e.g. mirror serve)."},
    )
    api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Environment variable holding the key for --base_url (not the key itself: command lines are "
            "visible to other users). Default: the HF token, for Hugging Face hosts only."
        },
    )
    verbose: bool = field(
        default=False, metadata={"help": "Show log messages on stderr (and, in chat, each turn's plan and emotion)."}
    )
    log_file: str | None = field(
        default=None, metadata={"help": "Append log messages to this file (never shown in the conversation)."}
    )
    image: str | None = field(
        default=None, metadata={"help": "The client's face (PNG/JPEG); needed by the vision strategies."}
    )


ARGUMENTS = (ModelLoadArguments, TherapistArguments, GenerationConfig)


def printable(text: str) -> str:
    """`text` without control characters (newline and tab kept), safe to print to a terminal."""
    return CONTROL_CHARACTERS.sub("", text)


def load_client_profile(path: str | Path | None) -> dict[str, Any]:
    """A client profile from JSON: a bare client dict, or a dataset record / profile row with a `client` key."""
    if path is None:
        return dict(DEFAULT_CLIENT)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"--client_profile {str(path)!r} is not valid JSON ({error})") from None
    client = data.get("client", data) if isinstance(data, dict) else None
    if not isinstance(client, dict) or "name" not in client:
        raise ValueError(f"--client_profile {str(path)!r}: expected a client profile (a JSON object with 'name')")
    return {**DEFAULT_CLIENT, **client}


def open_face_image(path: str) -> Any:
    """The client's face from `--image`, or a one-line error saying what is wrong with the file."""
    if Path(path).expanduser().is_dir():
        raise IsADirectoryError(f"--image {path!r} is a folder; pass the path of one PNG or JPEG photo of a face")
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"--image {path!r}: no such file; pass the path of a PNG or JPEG photo of a face")
    try:
        return load_image(Path(path).expanduser())
    except (UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"--image {path!r} is not an image Pillow can read; pass a PNG or JPEG photo") from error


def setup_logging(arguments: TherapistArguments) -> None:
    """Log messages never land in the conversation: stderr only with --verbose, a file with --log_file."""
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(logging.NullHandler())  # no handler at all would make Python print warnings to stderr
    root.setLevel(logging.INFO if arguments.verbose or arguments.log_file else logging.WARNING)
    handlers = [logging.FileHandler(arguments.log_file, encoding="utf-8")] if arguments.log_file else []
    handlers += [logging.StreamHandler(sys.stderr)] if arguments.verbose else []
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.captureWarnings(True)  # library warnings follow the same rule
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if arguments.verbose else "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()  # transformers' records propagate to the handlers above
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()


def build_therapist(
    model: ModelLoadArguments, arguments: TherapistArguments, generation: GenerationConfig
) -> MirrorTherapist:
    """The therapist the options describe: a local model (checked first, for a clear error), or one behind
    --base_url."""
    safety = arguments.safety_config()
    if arguments.base_url:
        from .backends.endpoint import EndpointBackend, api_key_from_env

        backend = EndpointBackend(arguments.base_url, model.model, api_key=api_key_from_env(arguments.api_key_env))
        return MirrorTherapist(backend, arguments.strategy, generation, safety)
    model.check_source()
    try:
        return MirrorTherapist.from_pretrained(
            model.model, arguments.strategy, generation, safety, **model.load_kwargs()
        )
    except OSError as error:
        if Path(model.model).expanduser().exists():
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"--model {model.model!r} is not a local folder and could not be fetched from the Hub ({reason}); "
            "check the path or the model id (and `hf auth login` for a private model)"
        ) from error


def run_session(
    therapist: MirrorTherapist, client: dict[str, Any], image: Any, lines: TextIO, out: TextIO, verbose=False
):
    """The read-respond loop, separate from argument parsing so it can be driven from Python too."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    session = therapist.start_session(client)
    say(session.disclosure)
    say(f"[{therapist.strategy} therapist: {therapist.backend.name}. {HELP}]")
    if verbose and session.plan is not None:
        say(printable(f"[plan] {session.plan.technique}: {session.plan.plan}"))
    if therapist.strategy in VISION_STRATEGIES and image is None:
        say(
            f"[The {therapist.strategy!r} strategy reads the client's face: /image PATH before your first turn "
            "(or start with --image face.png), or use --strategy text.]"
        )
    interactive = lines.isatty()
    while True:
        if interactive:
            print("You: ", end="", file=out, flush=True)
        line = lines.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if not interactive:  # a piped transcript reads as a dialogue
            say(f"You: {printable(text)}")
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            say(HELP)
        elif text == "/plan":
            plan = session.plan
            say(printable(f"[plan] {plan.technique}: {plan.plan}") if plan else "[no plan: strategy does not plan]")
        elif text == "/prompt":
            last = session.replies[-1].messages if session.replies else None
            say(json.dumps(last, indent=2, ensure_ascii=False) if last else "[no prompt yet]")
        elif text.startswith("/image"):
            path = text.removeprefix("/image").strip()
            try:
                image = open_face_image(path)
            except (OSError, ValueError) as error:
                say(f"[cannot open image: {error}]")
            else:
                say(f"[client face set to {path}]")
        elif text.startswith("/") and text != "/silent":
            say(f"[unknown command {text.split()[0]}] {HELP}")
        else:
            try:
                reply = session.respond("" if text == "/silent" else text, image=image)
            except ValueError as error:
                say(f"[{error}]")
                continue
            image = None  # the session keeps the face until /image changes it
            if verbose and reply.emotion is not None:
                say(f"[emotion] {printable(reply.emotion)}")
            say(f"Therapist: {printable(reply.text)}")
    return session


def main(model: ModelLoadArguments, arguments: TherapistArguments, generation: GenerationConfig) -> int:
    setup_logging(arguments)
    client = load_client_profile(arguments.client_profile)
    image = open_face_image(arguments.image) if arguments.image else None
    therapist = build_therapist(model, arguments, generation)
    run_session(therapist, client, image, sys.stdin, sys.stdout, verbose=arguments.verbose)
    return 0


if __name__ == "__main__":
    import mirror_cli

    sys.exit(mirror_cli.main(["chat", *sys.argv[1:]], prog="mirror chat"))
