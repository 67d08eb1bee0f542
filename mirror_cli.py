"""The `mirror` command: one subcommand per stage, plus `mirror quickstart`, the whole chain offline on a CPU.

Every subcommand is made the same way: its module exposes `ARGUMENTS` (dataclasses whose fields, with their
`help` metadata and defaults, are the options) and `main(*arguments) -> int`. `HfArgumentParser` builds the parser
(`TrlParser` for `train`, so `--config RECIPE` works); both `--snake_case` and `--kebab-case` are accepted. User
mistakes (ValueError, OSError) end as one line `mirror <command>: error: ...` and exit code 2; set MIRROR_DEBUG=1
for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

# name -> (module, prefix of its `ARGUMENTS` / `main` when it backs two commands, one-line help). Listed here rather
# than imported so `mirror --help` stays fast; a module missing from this checkout is left out of the list.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("dataset_builder.cli", "build", "Validate raw records and export a Hub-ready Mirror dataset folder."),
    "render-faces": ("dataset_builder.cli", "render", "Render a face image for every client turn that has none."),
    "import": ("dataset_builder.importer", "", "Import the official Mirror release (CSV/JSON, local or Hub)."),
    "generate": ("dataset_builder.generate", "", "Generate therapy sessions with LLMs (paper steps 1-4)."),
    "train": ("training.train", "", "Fine-tune a therapist model with TRL (LoRA, QLoRA or full)."),
    "merge": ("training.merge", "", "Merge a LoRA adapter into its base model."),
    "chat": ("inference.chat", "", "Talk to a therapist model in the terminal."),
    "serve": ("inference.server", "", "Serve a model over an OpenAI-compatible HTTP API."),
    "demo": ("inference.web_demo", "", "Chat with a therapist model in the browser."),
    "evaluate": ("evaluation.cli", "", "Evaluate a therapist model with LLM judges."),
    "push": ("push_to_hub", "", "Publish a dataset or model folder to the Hugging Face Hub."),
    "quickstart": ("mirror_quickstart", "", "Run the whole chain offline on a CPU: sample data to a tiny model."),
}
# Subcommands whose `--config` is TRL's recipe file (the others read a `config` field themselves).
TRL_COMMANDS = ("train",)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help with its default; required options show none, and neither does a help text that already
    states its default in words (`default: the model's own`), so no option shows two."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def _available(module_name: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module_name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser: the command name, then everything after it for the command's own parser."""
    parser = argparse.ArgumentParser(prog="mirror", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, _prefix, help_text) in COMMANDS.items():
        if _available(module_name):
            # No option prefix: `--config`, `-h` and the rest reach the command's own parser untouched.
            command = subparsers.add_parser(name, help=help_text, add_help=False, prefix_chars="\x00")
            command.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def command_parts(name: str) -> tuple[tuple[type, ...], Any, str]:
    """(ARGUMENTS, main, description) of a registered command."""
    module_name, prefix, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    prefix = f"{prefix}_" if prefix else ""
    arguments = getattr(module, f"{prefix}ARGUMENTS".upper())
    main = getattr(module, f"{prefix}main")
    doc = (main.__doc__ if prefix else module.__doc__) or help_text
    return tuple(arguments), main, doc.strip().split("\n\n")[0]


def make_command_parser(name: str, prog: str | None = None):
    """The parser of `mirror <name>`, built from the command's `ARGUMENTS` (help and defaults from the fields)."""
    arguments, _main, description = command_parts(name)
    prog = prog or f"mirror {name}"
    if name in TRL_COMMANDS:
        from trl import TrlParser

        parser = TrlParser(arguments, prog=prog, description=description, formatter_class=HelpFormatter)
        parser.usage = f"{prog} [--config RECIPE] [options]"
        parser.epilog = (
            "--config RECIPE reads option values from a YAML recipe: a path, or a bundled name such as "
            "llava-1.5-7b/base; options given on the command line override it."
        )
        return parser
    from transformers import HfArgumentParser

    return HfArgumentParser(arguments, prog=prog, description=description, formatter_class=HelpFormatter)


def parse_command(name: str, argv: list[str], prog: str | None = None) -> tuple[Any, ...]:
    """The dataclass instances of `mirror <name> argv...`, in the order of the command's `ARGUMENTS`."""
    parser = make_command_parser(name, prog)
    if name in TRL_COMMANDS:
        from training.train import parse_args

        return parse_args(argv, parser)
    *arguments, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)} (see `{parser.prog} --help`)")
    return tuple(arguments)


def run(name: str, argv: list[str], prog: str | None = None) -> int:
    """Parse and run one command; user errors become one line on stderr and exit code 2 (130 on Ctrl+C)."""
    prog = prog or f"mirror {name}"
    try:
        arguments = parse_command(name, argv, prog)
        _arguments, main, _ = command_parts(name)
        return int(main(*arguments) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        if os.environ.get("MIRROR_DEBUG") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if prog is not None and argv:  # a stage's own `python -m` entry point: `prog` names it in messages
        return run(argv[0], argv[1:], prog)
    args = make_parser().parse_args(argv)
    return run(args.command, args.argv)


if __name__ == "__main__":
    sys.exit(main())
