"""`mirror chat`: a terminal session with a MIRROR therapist (you play the client).

Reads one client turn per line from stdin, so it can also be scripted (`printf 'hello\\n/quit\\n' | mirror chat`).
The AI disclosure is shown before anything else and the safety layer is always on: this is the command a person
types into, so unlike evaluation code it offers no switch to disable it.

Commands: `/image PATH` sets the client's face for the next turns, `/silent` sends a non-verbal turn (the
client says nothing, as at the start of every session in the dataset), `/plan` shows the session plan,
`/prompt` shows the last prompt sent to the model, `/help`, `/quit`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from .backends.base import GenerationConfig
from .safety import SafetyConfig
from .therapist import STRATEGIES, MirrorTherapist, TherapistConfig, load_image

# A neutral profile for trying a model without writing one: every field the prompt renders, nothing invented.
DEFAULT_CLIENT = {
    "name": "Alex",
    "age": None,
    "gender": None,
    "occupation": None,
    "education": None,
    "marital_status": None,
    "family": None,
    "personal_info": "",
    "reason_for_counseling": "Not stated yet.",
    "distorted_thought": "",
    "thinking_traps": [],
}
HELP = "Commands: /image PATH, /silent, /plan, /prompt, /help, /quit. Anything else is what you say as the client."


def load_client_profile(path: str | Path | None) -> dict[str, Any]:
    """A client profile from JSON: a bare client dict, or a dataset record / profile row with a `client` key."""
    if path is None:
        return dict(DEFAULT_CLIENT)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    client = data.get("client", data) if isinstance(data, dict) else None
    if not isinstance(client, dict) or "name" not in client:
        raise SystemExit(f"{path}: expected a client profile (a JSON object with at least 'name')")
    return {**DEFAULT_CLIENT, **client}


def add_therapist_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and configure a therapist, shared by `mirror chat` and `mirror demo`."""
    parser.add_argument("--model", required=True, help="Model folder or Hub id (merged model or LoRA adapter).")
    parser.add_argument("--strategy", choices=STRATEGIES, help="Default: the model folder's, else base / text.")
    parser.add_argument("--client-profile", help="JSON client profile (or a dataset record with a 'client' key).")
    parser.add_argument("--revision", help="Hub revision of --model.")
    parser.add_argument("--device", help="cuda, cpu, mps or auto (default: best available).")
    parser.add_argument("--dtype", help="bfloat16, float16, float32 or auto.")
    parser.add_argument(
        "--base-url", help="Talk to --model on an OpenAI-compatible server instead of loading it (e.g. mirror serve)."
    )
    parser.add_argument(
        "--api-key-env",
        help="Environment variable holding the key for --base-url (not the key itself: command lines are visible to "
        "other users). Default: the HF token, for Hugging Face hosts only.",
    )
    defaults = GenerationConfig()
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy decoding.")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="Nucleus sampling mass.")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="Reply token budget.")
    parser.add_argument("--seed", type=int, help="Seed for reproducible sampling.")
    parser.add_argument("--locale", default=SafetyConfig().locale, help="Locale whose crisis lines are shown.")
    parser.add_argument("--log-client-text", action="store_true",
                        help="Opt in to logging what the client writes (off: client text is sensitive).")  # fmt: skip


def make_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The `mirror chat` parser; added to `subparsers` when given (the `mirror` CLI), standalone otherwise."""
    description = (__doc__ or "").split("\n\n")[0]
    if subparsers is None:
        parser = argparse.ArgumentParser(prog="mirror chat", description=description)
    else:
        parser = subparsers.add_parser(
            "chat", help="Talk to a therapist model in the terminal.", description=description
        )
    add_therapist_arguments(parser)
    parser.add_argument("--image", help="The client's face (PNG/JPEG); needed by the vision strategies.")
    parser.add_argument("--verbose", action="store_true", help="Show the plan and emotion caption of each turn.")
    parser.set_defaults(func=main)
    return parser


def build_therapist(args: argparse.Namespace) -> MirrorTherapist:
    """The therapist that `add_therapist_arguments` describes: a local model, or one behind --base-url."""
    generation = GenerationConfig(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    safety = SafetyConfig(locale=args.locale, log_client_text=args.log_client_text)
    if args.base_url:
        from .backends.endpoint import EndpointBackend, api_key_from_env

        backend = EndpointBackend(args.base_url, args.model, api_key=api_key_from_env(args.api_key_env))
        return MirrorTherapist(backend, args.strategy, generation, safety, TherapistConfig())
    return MirrorTherapist.from_pretrained(
        args.model, args.strategy, generation, safety, revision=args.revision, device=args.device, dtype=args.dtype
    )


def run_session(
    therapist: MirrorTherapist, client: dict[str, Any], image: Any, lines: TextIO, out: TextIO, verbose=False
):
    """The read-respond loop, separate from argument parsing so it can be driven from Python too."""
    session = therapist.start_session(client)
    print(session.disclosure, file=out)
    print(f"[{therapist.strategy} therapist: {therapist.backend.name}. {HELP}]", file=out, flush=True)
    if verbose and session.plan is not None:
        print(f"[plan] {session.plan.technique}: {session.plan.plan}", file=out)
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
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            print(HELP, file=out, flush=True)
            continue
        if text == "/plan":
            plan = session.plan
            print(f"[plan] {plan.technique}: {plan.plan}" if plan else "[no plan: strategy does not plan]", file=out)
            continue
        if text == "/prompt":
            last = session.replies[-1].messages if session.replies else None
            print(json.dumps(last, indent=2, ensure_ascii=False) if last else "[no prompt yet]", file=out, flush=True)
            continue
        if text.startswith("/image"):
            path = text.removeprefix("/image").strip()
            try:
                image = load_image(path)
            except (OSError, ValueError) as error:
                print(f"[cannot open image {path!r}: {error}]", file=out, flush=True)
                continue
            print(f"[client face set to {path}]", file=out, flush=True)
            continue
        if text.startswith("/") and text != "/silent":
            print(f"[unknown command {text.split()[0]}] {HELP}", file=out, flush=True)
            continue
        statement = "" if text == "/silent" else text
        try:
            reply = session.respond(statement, image=image)
        except ValueError as error:
            print(f"[{error}]", file=out, flush=True)
            continue
        image = None  # the session keeps the face until /image changes it
        if verbose and reply.emotion is not None:
            print(f"[emotion] {reply.emotion}", file=out)
        print(f"Therapist: {reply.text}", file=out, flush=True)
    return session


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    client = load_client_profile(args.client_profile)
    image = load_image(args.image) if args.image else None
    therapist = build_therapist(args)
    if therapist.strategy in ("base", "planning", "ec_planning") and image is None:
        print(
            f"The {therapist.strategy!r} strategy reads the client's face: pass --image face.png "
            "(or /image PATH before your first turn), or use --strategy text.",
            file=sys.stderr,
        )
    run_session(therapist, client, image, sys.stdin, sys.stdout, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_args()))
