"""`push_to_hub.py` against a MOCKED `HfApi`: this machine cannot reach the Hugging Face Hub, so the network edge
(whoami, create_repo, list_repo_tree, create_commit) is an autospec of the real `HfApi` backed by an in-memory repo
store that answers `list_repo_tree` with git / LFS hashes the way the Hub does. Everything else is real: the built
dataset folder, a real tiny model folder with its card, the file selection, the card validation and the hashing."""

import hashlib
import json
import logging
import shutil
from pathlib import Path
from unittest import mock

import pytest
from helpers import offline_env, run_python

ROOT = Path(__file__).resolve().parent.parent
SENTINEL = "hf_SENTINELtokenDoNotLeak0123456789abcdef"


class FakeHub:
    """In-memory Hub repos; `api` is `create_autospec(HfApi)` whose methods act on them."""

    def __init__(self, user="someone"):
        from huggingface_hub import HfApi

        self.user = user
        self.repos: dict[tuple[str, str], dict] = {}  # (repo_type, repo_id) -> {"private": bool, "files": {}}
        self.commits: list[tuple[str, str, list]] = []
        self.api = mock.create_autospec(HfApi, instance=True)
        self.api.whoami.side_effect = lambda *a, **k: {"name": self.user, "type": "user"}
        self.api.create_repo.side_effect = self.create_repo
        self.api.list_repo_tree.side_effect = self.list_repo_tree
        self.api.create_commit.side_effect = self.create_commit
        self.api.repo_info.side_effect = lambda repo_id, *, repo_type=None, **k: mock.MagicMock(
            private=self.repos[(repo_type or "model", repo_id)]["private"]
        )

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        key = (repo_type or "model", repo_id)
        if key in self.repos and not exist_ok:
            raise RuntimeError("409 conflict")
        self.repos.setdefault(key, {"private": private, "files": {}})
        return f"https://huggingface.co/{repo_id}"

    def list_repo_tree(self, repo_id, path_in_repo=None, *, recursive=False, repo_type=None, revision=None, **kwargs):
        from huggingface_hub.errors import RepositoryNotFoundError
        from huggingface_hub.hf_api import RepoFile

        key = (repo_type or "model", repo_id)
        if key not in self.repos:
            raise RepositoryNotFoundError(f"{repo_id} not found", response=mock.MagicMock(status_code=404))
        entries = []
        for path, data in sorted(self.repos[key]["files"].items()):
            lfs = None
            if path.endswith((".parquet", ".safetensors")):  # stored with LFS / Xet: the Hub reports a sha256
                lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 130}
            oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            entries.append(RepoFile(path=path, size=len(data), oid=oid, lfs=lfs))
        return iter(entries)

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **kwargs):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        files = self.repos[(repo_type or "model", repo_id)]["files"]
        operations = list(operations)
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                source = op.path_or_fileobj
                files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
            elif isinstance(op, CommitOperationDelete):
                del files[op.path_in_repo]
        self.commits.append((repo_type, repo_id, operations))
        return mock.MagicMock(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(self.commits)}")


@pytest.fixture
def model_folder(tmp_path, tiny_llava_dir):
    """A real tiny model folder as training leaves it: weights, card, record with local paths, and leftovers."""
    from model_cards import render_model_card

    folder = tmp_path / "mirror-tiny"
    shutil.copytree(tiny_llava_dir, folder)
    (folder / "README.md").write_text(
        render_model_card(
            {
                "model_name": "mirror-tiny",
                "base_model": str(tiny_llava_dir),
                "variant": "base",
                "license": "apache-2.0",
                "dataset": str(tmp_path / "dataset"),
                "adapter": False,
                "finetuning": "full",
            }
        ),
        encoding="utf-8",
    )
    record = {
        "mirror_args": {"dataset_name": str(tmp_path / "dataset"), "variant": "base"},
        "training_args": {"output_dir": str(folder), "learning_rate": 0.0002},
    }
    (folder / "mirror_training.json").write_text(json.dumps(record), encoding="utf-8")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "model.safetensors").write_bytes(b"old")
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (folder / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.lock").write_text("")
    return folder


def _args(**kwargs):
    from push_to_hub import PushArguments

    return PushArguments(**kwargs)


def test_push_uploads_the_right_files_privately_and_repushing_commits_nothing(
    sample_dataset_dir, model_folder, capsys
):
    from push_to_hub import push

    hub = FakeHub()
    push(
        _args(dataset_dir=str(sample_dataset_dir), dataset_repo_id="someone/mirror", model_dirs=[str(model_folder)]),
        api=hub.api,
    )
    assert hub.api.mock_calls[0] == mock.call.whoami()  # the token is checked before any other call
    assert hub.repos[("dataset", "someone/mirror")]["private"] is True
    assert hub.repos[("model", "someone/mirror-tiny")]["private"] is True
    for call in hub.api.create_repo.call_args_list:
        assert call.kwargs["exist_ok"] is True and call.kwargs["private"] is True
    dataset_files = set(hub.repos[("dataset", "someone/mirror")]["files"])
    expected = {p.relative_to(sample_dataset_dir).as_posix() for p in sample_dataset_dir.rglob("*.parquet")}
    assert dataset_files == expected | {"README.md"}  # no build stamp
    model_files = set(hub.repos[("model", "someone/mirror-tiny")]["files"])
    assert {"model.safetensors", "config.json", "README.md", "mirror_training.json"} <= model_files
    assert not any(f.startswith(("checkpoint-", ".")) or f.endswith((".bin", ".pt", ".lock")) for f in model_files)
    # Local absolute paths never leave the machine; JSON paths are reduced to their last component.
    uploaded = hub.repos[("model", "someone/mirror-tiny")]["files"]
    record = json.loads(uploaded["mirror_training.json"])
    assert (
        record["training_args"]["output_dir"] == "mirror-tiny" and record["mirror_args"]["dataset_name"] == "dataset"
    )
    assert not any(str(model_folder.parent).encode() in data for data in uploaded.values())
    assert len(hub.commits) == 2
    out = capsys.readouterr().out
    assert "skip      checkpoint-2/model.safetensors: a training checkpoint" in out
    assert "skip      training_args.bin:" in out and "load_dataset('someone/mirror')" in out

    push(
        _args(dataset_dir=str(sample_dataset_dir), dataset_repo_id="someone/mirror", model_dirs=[str(model_folder)]),
        api=hub.api,
    )
    assert len(hub.commits) == 2  # unchanged content: no new commit
    out = capsys.readouterr().out
    assert out.count("is up to date: no commit") == 2 and "upload   " not in out

    (model_folder / "generation_config.json").write_text('{"do_sample": true, "temperature": 0.5}\n')
    push(_args(model_dirs=[str(model_folder)]), api=hub.api)
    assert len(hub.commits) == 3
    assert [op.path_in_repo for op in hub.commits[-1][2]] == ["generation_config.json"]  # only what changed


def test_stale_shards_are_deleted_and_public_must_be_asked_for(sample_dataset_dir, capsys):
    from push_to_hub import push

    hub = FakeHub()
    hub.create_repo("someone/mirror", repo_type="dataset", private=False, exist_ok=True)
    hub.repos[("dataset", "someone/mirror")]["files"].update(
        {"data/sft/train-00000-of-00001.parquet": b"old layout", "notes.txt": b"someone else's file"}
    )
    push(_args(dataset_dir=str(sample_dataset_dir), dataset_repo_id="someone/mirror", public=True), api=hub.api)
    files = hub.repos[("dataset", "someone/mirror")]["files"]
    assert "data/sft/train-00000-of-00001.parquet" not in files  # would be read as part of the `sft` config
    assert files["notes.txt"] == b"someone else's file"  # not ours: left alone
    # The repo existed and was public: left public, and said so.
    push(_args(dataset_dir=str(sample_dataset_dir), dataset_repo_id="someone/mirror"), api=hub.api)
    assert hub.repos[("dataset", "someone/mirror")]["private"] is False
    assert "WARNING: someone/mirror already exists and is PUBLIC" in capsys.readouterr().out
    hub2 = FakeHub()
    push(_args(dataset_dir=str(sample_dataset_dir), public=True), api=hub2.api)
    assert hub2.api.create_repo.call_args.kwargs["private"] is False
    assert ("dataset", f"someone/{sample_dataset_dir.name}") in hub2.repos  # default id: <user>/<folder name>


def test_dry_run_prints_the_plan_and_changes_nothing(sample_dataset_dir, model_folder, capsys):
    from push_to_hub import push

    hub = FakeHub()
    push(
        _args(
            dataset_dir=str(sample_dataset_dir),
            model_dirs=[str(model_folder)],
            model_repo_ids=["someone/tiny"],
            dry_run=True,
        ),
        api=hub.api,
    )
    assert not hub.api.create_repo.called and not hub.api.create_commit.called and not hub.repos
    out = capsys.readouterr().out
    assert f"dataset someone/{sample_dataset_dir.name} (private) <- {sample_dataset_dir}" in out
    assert f"model someone/tiny (private) <- {model_folder}" in out
    assert "upload    data/sft/planning-00000-of-00001.parquet" in out
    assert "upload    mirror_training.json (local paths redacted)" in out
    assert "skip      optimizer.pt: a pickle" in out and "Dry run: nothing was uploaded" in out
    assert "WARNING" not in out
    # A LoRA adapter on a local base model cannot be loaded by anyone else: said loudly.
    (model_folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model_folder)}))
    push(_args(model_dirs=[str(model_folder)], dry_run=True), api=hub.api)
    assert "WARNING: this LoRA adapter's base model is a local folder (mirror-tiny)" in capsys.readouterr().out


def test_refuses_without_login_and_before_any_work(sample_dataset_dir):
    from huggingface_hub.errors import LocalTokenNotFoundError

    from push_to_hub import push

    hub = FakeHub()
    hub.api.whoami.side_effect = LocalTokenNotFoundError("no token")
    with pytest.raises(PermissionError, match="set HF_TOKEN or run `hf auth login`"):
        push(_args(dataset_dir=str(sample_dataset_dir)), api=hub.api)
    assert [c[0] for c in hub.api.mock_calls] == ["whoami"]


def test_bad_folders_are_refused_before_anything_is_uploaded(tmp_path, sample_dataset_dir, model_folder):
    from model_cards import CardValidationError
    from push_to_hub import push

    broken = tmp_path / "broken"
    shutil.copytree(sample_dataset_dir, broken)
    card = broken / "README.md"
    card.write_text(card.read_text().replace("license: cc-by-4.0", "license: cc-by-four"))
    hub = FakeHub()
    with pytest.raises(CardValidationError, match="not a Hub licence id"):
        push(_args(dataset_dir=str(broken), model_dirs=[str(model_folder)]), api=hub.api)
    with pytest.raises(FileNotFoundError, match=r"no README\.md"):
        push(_args(model_dirs=[str(tmp_path)]), api=hub.api)
    (model_folder / "notes.md").write_text(f"trained in {model_folder}\n")  # not uploaded: not a model file
    (model_folder / "chat_template.jinja").write_text(f"{{# built in {model_folder.parent} #}}")
    with pytest.raises(ValueError, match="contains a local path"):
        push(_args(model_dirs=[str(model_folder)]), api=hub.api)
    assert not hub.api.create_repo.called and not hub.api.create_commit.called


def test_token_never_appears_in_logs_or_files(tmp_path, sample_dataset_dir, model_folder, capsys, caplog, monkeypatch):
    from push_to_hub import main, push

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    hub = FakeHub()
    with caplog.at_level(logging.DEBUG):
        with mock.patch("huggingface_hub.HfApi", return_value=hub.api):
            assert main(_args(dataset_dir=str(sample_dataset_dir), model_dirs=[str(model_folder)])) == 0
    captured = capsys.readouterr()
    assert SENTINEL not in captured.out + captured.err + caplog.text
    for repo in hub.repos.values():
        assert not any(SENTINEL.encode() in data for data in repo["files"].values())
    for path in [*tmp_path.rglob("*"), *sample_dataset_dir.rglob("*")]:
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
    # A file that holds the token is never uploaded.
    (model_folder / "tokenizer_config.json").write_text(json.dumps({"token": SENTINEL}))
    with pytest.raises(PermissionError, match="contains the Hugging Face token") as error:
        push(_args(model_dirs=[str(model_folder)]), api=hub.api)
    assert SENTINEL not in str(error.value)


def test_script_entry_point_dry_run_offline(tmp_path, sample_dataset_dir):
    """`python push_to_hub.py ... --dry_run` in a fresh process: offline, so whoami fails and ids show <user>."""
    env = offline_env(tmp_path, HF_TOKEN=SENTINEL)
    proc = run_python(ROOT / "push_to_hub.py", "--dataset_dir", sample_dataset_dir, "--dry_run", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dataset <user>/{sample_dataset_dir.name} (private)" in proc.stdout
    assert SENTINEL not in proc.stdout + proc.stderr
    proc = run_python(ROOT / "push_to_hub.py", "--dataset_dir", tmp_path / "nope", cwd=tmp_path, env=env)
    assert (
        proc.returncode == 2
        and "error: cannot confirm a Hugging Face Hub login" in proc.stderr
        and SENTINEL not in proc.stderr
    )


def test_push_to_a_branch_creates_it_first(sample_dataset_dir):
    from push_to_hub import push

    hub = FakeHub()
    push(_args(dataset_dir=str(sample_dataset_dir), dataset_repo_id="someone/mirror", revision="v2"), api=hub.api)
    hub.api.create_branch.assert_called_once_with("someone/mirror", branch="v2", repo_type="dataset", exist_ok=True)
    assert hub.api.create_commit.call_args.kwargs["revision"] == "v2"
    names = [c[0] for c in hub.api.mock_calls]
    assert names.index("create_branch") < names.index("create_commit")
