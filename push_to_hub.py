"""`mirror push` (also `python push_to_hub.py ...`): publish a built dataset folder and model folders to the Hub.

Safe by default: repos are private; the token is checked with `whoami` before any other work and comes only from
`HF_TOKEN` or the stored login (`hf auth login`), never from an option, and never appears in output or files; every
card is validated offline first (`model_cards.validate`) and by the Hub when it is reachable; only files that belong
in a Hub repo are uploaded (parquet, safetensors, configs, tokenizer and processor files, the card): never
`checkpoint-*`, pickles, caches, the build stamp or hidden files, and JSON files have local absolute paths replaced
by their last component. Each repo gets one `create_commit` with only the files whose content differs from the
remote (compared with `list_repo_tree`'s git and LFS hashes), so pushing unchanged content makes no commit.
`--dry_run` prints exactly what would go where and touches nothing.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_cards.validate import check_card, validate_on_hub

# What may go into a repo, by file name (relative to the folder). Anything else is listed as skipped.
DATASET_FILES = ("README.md", "LICENSE*", "data/*/*.parquet")
MODEL_FILES = (
    "README.md",
    "LICENSE*",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
)
# Never uploaded, whatever the patterns above say: why, by pattern on any path component or file name.
NEVER = {
    "checkpoint-*": "a training checkpoint (for resuming, not for the Hub)",
    "runs": "TensorBoard logs",
    "__pycache__": "a Python cache",
    ".*": "a hidden file or folder (caches, build stamp, VCS)",
    "*.bin": "a pickle (PyTorch .bin); weights go up as safetensors only",
    **dict.fromkeys(("*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"), "a pickle"),
    "*.npy": "may hold pickles",
    "optimizer*": "optimizer state",
    "scheduler*": "scheduler state",
    "rng_state*": "RNG state",
}


@dataclass
class PushArguments:
    dataset_dir: str | None = field(
        default=None, metadata={"help": "Built dataset folder (`mirror build --output ...`) to publish."}
    )
    dataset_repo_id: str | None = field(
        default=None, metadata={"help": "Dataset repo id; default `<your user>/<folder name>`."}
    )
    model_dirs: list[str] = field(
        default_factory=list, metadata={"help": "Model folders (`mirror train` / `mirror merge` outputs) to publish."}
    )
    model_repo_ids: list[str] = field(
        default_factory=list,
        metadata={"help": "Model repo ids, one per model folder in order; default `<your user>/<folder name>`."},
    )
    public: bool = field(default=False, metadata={"help": "Create the repos public (default: private)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (default: main)."})
    commit_message: str = field(default="Upload with mirror push", metadata={"help": "Commit message."})
    dry_run: bool = field(
        default=False, metadata={"help": "Print what would be uploaded where (and what is skipped); change nothing."}
    )
    allow_unknown_license: bool = field(
        default=False,
        metadata={
            "help": "Publish a dataset whose records have unknown provenance (licence `other`): you vouch for it."
        },
    )


ARGUMENTS = (PushArguments,)


@dataclass
class PlannedFile:
    path_in_repo: str
    local: Path
    content: bytes | None = None  # set when the uploaded bytes differ from the file (local paths redacted)
    status: str = "upload"  # upload | unchanged

    def upload_source(self) -> bytes | str:
        return self.content if self.content is not None else str(self.local)

    def same_as(self, entry) -> bool:
        """Whether a remote `list_repo_tree` entry holds exactly the bytes to upload: same size, then the same LFS
        sha256 (streamed: weights can be many GB) or, for a plain git file, the same git blob sha1."""
        from huggingface_hub.utils.sha import git_hash, sha_fileobj

        size = len(self.content) if self.content is not None else self.local.stat().st_size
        if entry.size != size:
            return False
        if entry.lfs is None:
            return entry.blob_id == git_hash(self.content if self.content is not None else self.local.read_bytes())
        with io.BytesIO(self.content) if self.content is not None else open(self.local, "rb") as handle:
            return entry.lfs.sha256 == sha_fileobj(handle).hex()


@dataclass
class RepoPlan:
    repo_type: str  # dataset | model
    folder: Path
    repo_id: str
    files: list[PlannedFile]
    skipped: list[tuple[str, str]]  # (relative path, why)
    deletions: list[str] = field(default_factory=list)  # stale remote shards the new build no longer has
    warnings: list[str] = field(default_factory=list)


def _matches(relative: str, patterns: tuple[str, ...]) -> bool:
    """Whether a POSIX path matches one of `patterns` at the same folder depth (`*` never spans a `/`)."""
    return any(fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns)


def _never_reason(relative: str) -> str | None:
    matches = (why for part in relative.split("/") for pattern, why in NEVER.items() if fnmatch.fnmatch(part, pattern))
    return next(matches, None)


def select_files(folder: Path, repo_type: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(files to upload, [(skipped file, why)]) of a folder, as POSIX paths relative to it."""
    allowed = DATASET_FILES if repo_type == "dataset" else MODEL_FILES
    chosen, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() and not path.is_symlink():
            continue
        relative = path.relative_to(folder).as_posix()
        why = "a symbolic link" if path.is_symlink() else _never_reason(relative)
        if why is None and not _matches(relative, allowed):
            why = f"not part of a Hub-ready {repo_type} folder"
        if why:
            skipped.append((relative, why))
        else:
            chosen.append(relative)
    return chosen, skipped


def local_path_markers(folder: Path) -> list[str]:
    """Absolute paths of this machine that must not leave it inside a file."""
    markers = {str(folder.resolve().parent), str(Path.cwd().resolve()), str(Path.home())}
    return sorted(m for m in markers if m not in ("/", "") and len(m) > 1)


def redact_json_paths(value: Any) -> Any:
    """Replace every absolute local path in a JSON value by its last component (`/home/me/x/tiny` -> `tiny`)."""
    if isinstance(value, dict):
        return {key: redact_json_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_json_paths(item) for item in value]
    if isinstance(value, str) and value.startswith(("/", "~")) and "\n" not in value and len(value) < 4096:
        return Path(value).name or value
    return value


def plan_folder(folder: str | Path, repo_type: str, repo_id: str, *, allow_unknown_license: bool = False) -> RepoPlan:
    """What to upload from `folder` to `repo_id`, after checking the folder and its card (raises on problems)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{repo_type} folder not found: {folder}")
    card = folder / "README.md"
    if not card.is_file():
        raise FileNotFoundError(f"{folder} has no README.md card; build it with `mirror build` / `mirror train`")
    check_card(card, repo_type, folder=folder, allow_unknown_license=allow_unknown_license)
    chosen, skipped = select_files(folder, repo_type)
    if repo_type == "dataset" and not any(name.endswith(".parquet") for name in chosen):
        raise FileNotFoundError(f"{folder} holds no data/*/*.parquet: not a built Mirror dataset folder")
    if repo_type == "model" and not any(name.endswith(".safetensors") for name in chosen):
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights: not a model folder")
    markers = local_path_markers(folder)
    secrets = [token for token in [os.environ.get("HF_TOKEN")] if token and len(token) >= 8]
    files = []
    for relative in chosen:
        local = folder / relative
        content = None
        if relative.endswith(".json"):
            raw = local.read_bytes()
            try:
                value = json.loads(raw)
            except ValueError as err:
                raise ValueError(f"{local}: not valid JSON ({err})") from None
            redacted = redact_json_paths(value)
            if redacted != value:
                content = (json.dumps(redacted, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        if not relative.endswith((".parquet", ".safetensors")):
            text = (content if content is not None else local.read_bytes()).decode("utf-8", errors="replace")
            if any(secret in text for secret in secrets):
                raise PermissionError(f"{local} contains the Hugging Face token; refusing to upload it")
            leaked = [marker for marker in markers if marker in text]
            if leaked:
                raise ValueError(f"{local} contains a local path ({leaked[0]}...); remove it before publishing")
        files.append(PlannedFile(relative, local, content))
    plan = RepoPlan(repo_type, folder, repo_id, files, skipped)
    adapter_config = folder / "adapter_config.json"
    if repo_type == "model" and adapter_config.is_file():
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
        if base.startswith(("/", "~", ".")):
            plan.warnings.append(
                f"this LoRA adapter's base model is a local folder ({Path(base).name}); nobody else can load it. "
                "Train from a Hub model id, or merge it first (`mirror merge`) and push the merged folder"
            )
    return plan


def compare_with_remote(api, plan: RepoPlan, revision: str | None) -> None:
    """Mark files whose remote copy has the same content `unchanged`; list stale remote data/weight shards."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        remote = {
            entry.path: entry
            for entry in api.list_repo_tree(plan.repo_id, recursive=True, repo_type=plan.repo_type, revision=revision)
            if hasattr(entry, "blob_id")
        }
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        remote = {}
    for planned in plan.files:
        entry = remote.get(planned.path_in_repo)
        if entry is not None and planned.same_as(entry):
            planned.status = "unchanged"
    ours = {planned.path_in_repo for planned in plan.files}
    shard_patterns = ("data/*/*.parquet",) if plan.repo_type == "dataset" else ("*.safetensors",)
    plan.deletions = sorted(path for path in remote if path not in ours and _matches(path, shard_patterns))


def describe(plan: RepoPlan, private: bool) -> list[str]:
    visibility = "private" if private else "public"
    lines = [f"{plan.repo_type} {plan.repo_id} ({visibility}) <- {plan.folder}"]
    for planned in plan.files:
        note = " (local paths redacted)" if planned.content is not None else ""
        lines.append(f"  {planned.status:<9} {planned.path_in_repo}{note}")
    lines += [f"  {'delete':<9} {path} (stale shard, not in this build)" for path in plan.deletions]
    lines += [f"  {'skip':<9} {relative}: {why}" for relative, why in plan.skipped]
    return lines + [f"  WARNING: {warning}" for warning in plan.warnings]


def _user(api, dry_run: bool) -> str | None:
    """The account name from `whoami` (None in a dry run without a usable token or network)."""
    try:
        return api.whoami()["name"]
    except Exception as err:  # no token, bad token, offline
        if dry_run:
            print(f"(dry run: whoami failed, {type(err).__name__}; default repo ids show <user>)")
            return None
        raise PermissionError(
            f"cannot confirm a Hugging Face Hub login: whoami failed ({type(err).__name__}); set HF_TOKEN or run "
            "`hf auth login`, and make sure the Hub is reachable (HF_HUB_OFFLINE unset)"
        ) from None


def push(args: PushArguments, api=None) -> list[RepoPlan]:
    """Validate, plan and (unless `dry_run`) publish; returns the plans."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if not args.dataset_dir and not args.model_dirs:
        raise ValueError("nothing to push: give --dataset_dir and/or --model_dirs")
    if args.model_repo_ids and len(args.model_repo_ids) != len(args.model_dirs):
        raise ValueError(
            f"--model_repo_ids has {len(args.model_repo_ids)} id(s) for {len(args.model_dirs)} model folder(s)"
        )
    api = api or HfApi()  # token: HF_TOKEN or the stored login, resolved by huggingface_hub itself
    user = _user(api, args.dry_run)  # before any work: a bad token fails here, not after an upload
    namespace = user or "<user>"
    model_repo_ids = args.model_repo_ids or [None] * len(args.model_dirs)
    targets = [("dataset", args.dataset_dir, args.dataset_repo_id)] if args.dataset_dir else []
    targets += [("model", folder, repo_id) for folder, repo_id in zip(args.model_dirs, model_repo_ids, strict=True)]
    plans = [  # every folder checked before the first upload; a repo id defaults to `<user>/<folder name>`
        plan_folder(
            folder,
            repo_type,
            repo_id or f"{namespace}/{Path(folder).resolve().name}",
            allow_unknown_license=args.allow_unknown_license,
        )
        for repo_type, folder, repo_id in targets
    ]
    private = not args.public
    for plan in plans:
        visibility = private
        if not args.dry_run:
            validate_on_hub(plan.folder / "README.md", plan.repo_type)
            api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
            # An existing repo keeps its visibility: report what it is, not what was asked for.
            visibility = bool(getattr(api.repo_info(plan.repo_id, repo_type=plan.repo_type), "private", private))
            if visibility != private:
                state = "private" if visibility else "PUBLIC"
                plan.warnings.append(f"{plan.repo_id} already exists and is {state}; its visibility was left as is")
            if args.revision:
                api.create_branch(plan.repo_id, branch=args.revision, repo_type=plan.repo_type, exist_ok=True)
        if user is not None:
            compare_with_remote(api, plan, args.revision)
        print("\n".join(describe(plan, visibility)))
        changed = [p for p in plan.files if p.status == "upload"]
        if args.dry_run:
            continue
        if not changed and not plan.deletions:
            print(f"  {plan.repo_id} is up to date: no commit")
            continue
        operations = [
            CommitOperationAdd(path_in_repo=p.path_in_repo, path_or_fileobj=p.upload_source()) for p in changed
        ]
        operations += [CommitOperationDelete(path_in_repo=path) for path in plan.deletions]
        info = api.create_commit(
            plan.repo_id,
            operations,
            commit_message=args.commit_message,
            repo_type=plan.repo_type,
            revision=args.revision,
        )
        print(f"  committed {len(changed)} file(s), deleted {len(plan.deletions)}: {getattr(info, 'commit_url', '')}")
    if args.dry_run:
        print("Dry run: nothing was uploaded. Run again without --dry_run to publish.")
    else:
        print_usage(plans)
    return plans


def print_usage(plans: list[RepoPlan]) -> None:
    for plan in plans:
        if plan.repo_type == "dataset":
            print(
                f"Load it: load_dataset({plan.repo_id!r})  |  one SFT variant: "
                f"load_dataset({plan.repo_id!r}, 'sft_planning', split='train')\n"
                f"Fine-tune on it: mirror train --config recipes/llava-1.5-7b/planning.yaml --dataset_name "
                f"{plan.repo_id}\n"
                f"  or with TRL's CLI: trl sft --model_name_or_path llava-hf/llava-1.5-7b-hf --dataset_name "
                f"{plan.repo_id} --dataset_config sft_planning --output_dir mirror-planning"
            )
        else:
            print(f"Use it: MirrorTherapist.from_pretrained({plan.repo_id!r})")


def main(args: PushArguments) -> int:
    push(args)
    return 0


if __name__ == "__main__":
    import mirror_cli

    sys.exit(mirror_cli.main(["push", *sys.argv[1:]], prog="push_to_hub.py"))
