"""Dataset and model cards: rendered from `huggingface_hub` card data, licence from provenance, offline validation,
per-variant SFT configs (loaded by `datasets` and by TRL's own `trl sft` CLI), a quick-start snippet that runs."""

import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from helpers import offline_env, run_python, sample_records, with_images, write_raw

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path):
    return offline_env(tmp_path, HF_DATASETS_OFFLINE="1")


def _build(tmp_path, name, *, dataset_values, celeba=False):
    """A small real build whose records carry the given `source.dataset` values (one per session, cycled)."""
    from dataset_builder.build import BuildOptions, build_dataset

    records = with_images(sample_records(len(dataset_values)), tmp_path / f"{name}-raw")
    for record, value in zip(records, dataset_values, strict=True):
        record["source"]["dataset"] = value
        if celeba:
            record["identity"]["key"] = "celeba-000123"
    raw = write_raw(tmp_path / f"{name}-raw", records)
    result = build_dataset(raw, tmp_path / name, BuildOptions(pretty_name=f"Mirror {name}"))
    return result.output_dir


def _front_matter(folder):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(folder / "README.md")
    return card.data.to_dict(), card.text


# ---------------------------------------------------------------------------------------------------------------------
# Dataset card


def test_sample_dataset_card_documents_everything_and_validates(sample_dataset_dir):
    from datasets import load_dataset

    from dataset_builder.schema import CONFIG_FEATURES, SFT_VARIANTS
    from model_cards import card_problems
    from model_cards.dataset_card import feature_columns
    from model_cards.validate import REQUIRED_SECTIONS

    data, text = _front_matter(sample_dataset_dir)
    assert card_problems(sample_dataset_dir / "README.md", "dataset", folder=sample_dataset_dir) == []
    for section in REQUIRED_SECTIONS["dataset"]:
        assert f"## {section}\n" in text, section
    assert data["license"] == "cc-by-4.0" and data["pretty_name"] == "Mirror sample"
    configs = {c["config_name"]: c for c in data["configs"]}
    variants = sorted(set(load_dataset(str(sample_dataset_dir), "sft", split="train")["variant"]))
    assert set(variants) <= set(SFT_VARIANTS) and {"base", "planning", "ec_planning", "text"} <= set(variants)
    assert set(configs) == {"sessions", "sft", "profiles", "filtered", *(f"sft_{v}" for v in variants)}
    assert configs["sessions"]["default"] is True
    assert configs["sft_planning"]["data_files"][0]["path"] == "data/sft/planning-*"
    # Every column of every config has a row in the Fields section.
    for config, features in CONFIG_FEATURES.items():
        fields = text.split(f"### `{config}`", 1)[1].split("###", 1)[0]
        for column, _ in feature_columns(features):
            assert f"| `{column}` |" in fields, (config, column)
    # Synthetic disclosure from the records' source, faces, demographics, filter statistics, citation.
    assert "| `mirror-sample` | hand-written for MIRROR |" in text
    assert "no image shows a real person" in text and "CelebA" not in text.split("## Faces")[1].split("##")[0]
    sessions = load_dataset(str(sample_dataset_dir), split="train")
    profiles = load_dataset(str(sample_dataset_dir), "profiles", split="test")
    demographics = text.split("## Composition")[1].split("## Filtering")[0]
    for style in ("none", "emotional", "cognitive", "behavioral"):
        count = sum(1 for r in sessions["resistance"] if r == style)
        assert re.search(rf"\| `{style}` \| {count} \| .*\| \d+-\d+ \(median", demographics), style
    assert f"| session | kept | {sessions.num_rows} |" in text and f"| profile | kept | {profiles.num_rows} |" in text
    assert "`turn_count`" in text
    assert "@inproceedings{kim-etal-2025-mirror" in text and "Research use only" in text
    assert "/tmp" not in text and str(sample_dataset_dir) not in text  # no local paths on a card


def test_sft_variant_configs_share_files_and_hold_one_variant_each(sample_dataset_dir):
    from datasets import load_dataset

    everything = load_dataset(str(sample_dataset_dir), "sft", split="train")
    variants = sorted(set(everything["variant"]))
    files = sorted(p.name for p in (sample_dataset_dir / "data" / "sft").iterdir())
    assert files == [f"{v}-00000-of-00001.parquet" for v in variants]  # one shard set per variant, no copies
    total = 0
    for variant in variants:
        rows = load_dataset(str(sample_dataset_dir), f"sft_{variant}", split="train")
        assert set(rows["variant"]) == {variant}, variant
        assert rows.num_rows == sum(1 for v in everything["variant"] if v == variant)
        total += rows.num_rows
    assert total == everything.num_rows


@pytest.mark.parametrize(
    ("values", "licenses", "sources"),
    [
        (["mirror-sample", "mirror-sample"], "cc-by-4.0", ["original"]),
        (["cactus", "cactus"], "gpl-2.0", ["extended|LangAGI-Lab/cactus"]),
        (
            ["mirror-release", "mirror-release"],
            "gpl-2.0",
            ["extended|LangAGI-Lab/cactus", "extended|multimodal-reframing/mirror"],
        ),
        (["mirror-sample", "cactus"], ["cc-by-4.0", "gpl-2.0"], ["extended|LangAGI-Lab/cactus"]),
    ],
)
def test_licence_follows_provenance(tmp_path, values, licenses, sources):
    from model_cards import card_problems

    folder = _build(tmp_path, "mirror", dataset_values=values)
    data, text = _front_matter(folder)
    assert data["license"] == licenses
    assert data["source_datasets"] == sources
    assert card_problems(folder / "README.md", "dataset", folder=folder) == []
    licence_section = text.split("## Licence and sources")[1]
    for value in set(values):
        assert f"| `{value}` |" in licence_section
    if "mirror-release" in values:  # imported official data: CelebA references are not redistributed
        assert "no\nCelebA image is included here" in text


def test_unknown_provenance_is_loud_and_blocks_publishing(tmp_path, caplog):
    from model_cards import CardValidationError, card_problems, check_card

    with caplog.at_level(logging.WARNING, logger="model_cards.dataset_card"):
        folder = _build(tmp_path, "mirror", dataset_values=["my-own-scrape", "mirror-sample"])
    assert "unknown provenance" in caplog.text and "my-own-scrape" in caplog.text
    data, text = _front_matter(folder)
    assert data["license"] == ["cc-by-4.0", "other"] and data["license_name"] == "unknown-provenance"
    assert "**Licence unknown.**" in text
    with pytest.raises(CardValidationError, match="unknown provenance"):
        check_card(folder / "README.md", "dataset", folder=folder)
    assert card_problems(folder / "README.md", "dataset", folder=folder, allow_unknown_license=True) == []


def test_celeba_reference_faces_make_a_folder_unpublishable(tmp_path):
    from model_cards import card_problems

    folder = _build(tmp_path, "mirror", dataset_values=["mirror-release"], celeba=True)
    data, text = _front_matter(folder)
    assert data["mirror"]["celeba_reference_faces"] == 1
    assert "Not publishable" in text and "no image shows a real person" not in text
    assert any("CelebA" in problem for problem in card_problems(folder / "README.md", "dataset", folder=folder))


def test_bad_cards_fail_offline_validation(sample_dataset_dir):
    from model_cards import card_problems, render_model_card

    text = (sample_dataset_dir / "README.md").read_text()
    assert any(
        "'cc-by-4' is not a Hub licence id" in p
        for p in card_problems(text.replace("license: cc-by-4.0", "license: cc-by-4"), "dataset")
    )
    assert any(
        "does not parse" in p
        for p in card_problems(text.replace("license: cc-by-4.0", "license: [cc-by-4.0"), "dataset")
    )
    assert any(
        "missing section(s): Faces" in p for p in card_problems(text.replace("## Faces", "## Pictures"), "dataset")
    )
    assert any(
        "'sft_planning': no file matches 'data/sft/planing-*'" in p
        for p in card_problems(
            text.replace("path: data/sft/planning-*", "path: data/sft/planing-*"), "dataset", folder=sample_dataset_dir
        )
    )
    model = render_model_card(
        {"model_name": "m", "base_model": "llava-hf/llava-1.5-7b-hf", "variant": "base", "license": "llama2"}
    )
    assert card_problems(model, "model") == []
    assert any("'llama-2'" in p for p in card_problems(model.replace("license: llama2", "license: llama-2"), "model"))
    assert any("license_name" in p for p in card_problems(model.replace("license: llama2", "license: other"), "model"))


def test_load_dataset_by_folder_name_from_its_parent(tmp_path):
    """`mirror build --output mirror`, then `load_dataset("mirror")` in that working directory (a fresh process)."""
    records = with_images(sample_records(2), tmp_path / "raw")
    write_raw(tmp_path / "raw", records)
    env = _env(tmp_path)
    build = run_python(ROOT / "mirror_cli.py", "build", "--input", "raw", "--output", "mirror", cwd=tmp_path, env=env)
    assert build.returncode == 0, build.stderr[-3000:]
    code = (
        "import json; from datasets import load_dataset; d = load_dataset('mirror'); "
        "p = load_dataset('mirror', 'sft_planning', split='train'); "
        "print(json.dumps({'splits': list(d), 'rows': d['train'].num_rows, 'variants': sorted(set(p['variant']))}))"
    )
    proc = run_python("-c", code, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"splits": ["train"], "rows": 2, "variants": ["planning"]}


def test_trl_cli_trains_on_one_variant_config(tmp_path, sample_dataset_dir, tiny_llava_dir):
    """The dataset card's own `trl sft` line (TRL's CLI), on the tiny LLaVA and its processor, `--dataset_config
    sft_planning`: trains a few steps on planning rows only. Only the model, dataset and output folder are swapped
    for local ones, and CPU / few-step flags are appended."""
    from datasets import Dataset, load_dataset

    card = (sample_dataset_dir / "README.md").read_text()
    line = next(block for block in card.split("```bash\n")[1:] if "trl sft" in block).split("```")[0]
    line = line[line.index("trl sft") :].replace("\\\n", " ")
    args = shlex.split(line.splitlines()[0])
    swap = {
        "--model_name_or_path": str(tiny_llava_dir),
        "--dataset_name": str(sample_dataset_dir),
        "--output_dir": str(tmp_path / "out"),
    }
    for flag, value in swap.items():
        args[args.index(flag) + 1] = value
    assert args[args.index("--dataset_config") + 1] == "sft_planning" and "--assistant_only_loss" in args
    trl = shutil.which("trl", path=str(Path(sys.executable).parent)) or "trl"
    cmd = [
        trl,
        *args[1:],
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--use_cpu",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--log_level",
        "info",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    planning = load_dataset(str(sample_dataset_dir), "sft_planning", split="train").num_rows
    everything = load_dataset(str(sample_dataset_dir), "sft", split="train").num_rows
    assert planning < everything
    assert f"Num examples = {planning}" in proc.stdout + proc.stderr
    # What TRL actually loaded, read back from the `datasets` cache of that process.
    arrows = list((tmp_path / "hf" / "datasets").rglob("*.arrow"))
    assert arrows and all("sft_planning" in str(path) for path in arrows)
    seen = Dataset.from_file(str(arrows[0]))
    assert seen.num_rows == planning and set(seen["variant"]) == {"planning"}
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Model card


def _eval_results():
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="text-generation",
            dataset_type="someone/mirror",
            dataset_name="Mirror profiles",
            dataset_config="profiles",
            dataset_split="test",
            metric_type="ctrs_overall",
            metric_name="CTRS overall",
            metric_value=3.25,
        ),
        {
            "task_type": "text-generation",
            "dataset_type": "someone/mirror",
            "dataset_name": "Mirror profiles",
            "dataset_config": "profiles",
            "dataset_split": "test",
            "metric_type": "wai_overall",
            "metric_name": "WAI overall",
            "metric_value": 4.5,
        },
    ]


def test_model_card_sections_model_index_and_licence_terms(tmp_path):
    from huggingface_hub import ModelCard

    from model_cards import check_card, render_model_card
    from model_cards.validate import REQUIRED_SECTIONS

    text = render_model_card(
        {
            "model_name": "mirror-llava-planning",
            "base_model": "llava-hf/llava-1.5-7b-hf",
            "variant": "planning",
            "license": "llama2",
            "dataset": str(tmp_path / "mirror"),
            "dataset_hub_id": "someone/mirror",
            "hub_model_id": "someone/mirror-llava-planning",
            "recipe": str(ROOT / "recipes/llava-1.5-7b/planning.yaml"),
            "hyperparameters": {"learning_rate": 2e-4, "lora_r": 128},
            "framework_versions": {"trl": "1.16.0"},
            "eval_results": _eval_results(),
        }
    )
    check_card(text, "model")
    card = ModelCard(text)
    for section in REQUIRED_SECTIONS["model"]:
        assert f"## {section}\n" in card.text, section
    results = card.data.eval_results
    assert [(r.metric_type, r.metric_value, r.dataset_config, r.dataset_split) for r in results] == [
        ("ctrs_overall", 3.25, "profiles", "test"),
        ("wai_overall", 4.5, "profiles", "test"),
    ]
    assert (
        card.data.model_name == "someone/mirror-llava-planning" and card.data.base_model == "llava-hf/llava-1.5-7b-hf"
    )
    assert "| Mirror profiles (profiles, test) | CTRS overall | 3.25 |" in card.text
    out_of_scope = card.text.split("## Out-of-scope use")[1].split("##")[0]
    for use in ("Diagnosis", "treatment", "Crisis support", "minors"):
        assert use in out_of_scope
    assert "Llama 2 Community License" in card.text.split("## Licence")[1]
    assert "recipes/llava-1.5-7b/planning.yaml" in card.text and str(tmp_path) not in card.text and "/work" not in text


def test_model_card_snippet_runs_against_the_tiny_model(tmp_path, tiny_llava_dir, sample_dataset_dir):
    """The card's quick-start code, executed as written except for the two repo ids, which point at local folders."""
    from model_cards import render_model_card

    text = render_model_card(
        {
            "model_name": "mirror-tiny",
            "base_model": "llava-hf/llava-1.5-7b-hf",
            "variant": "base",
            "license": "llama2",
            "dataset_hub_id": "someone/mirror",
            "hub_model_id": "someone/mirror-tiny",
            "adapter": False,
            "finetuning": "full",
        }
    )
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'MirrorTherapist.from_pretrained("someone/mirror-tiny")' in snippet
    assert 'load_dataset("someone/mirror", "profiles", split="test")' in snippet
    snippet = snippet.replace('"someone/mirror-tiny"', repr(str(tiny_llava_dir)))
    snippet = snippet.replace('"someone/mirror"', repr(str(sample_dataset_dir)))
    proc = run_python("-c", snippet, cwd=ROOT, env=_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 2 and "AI" in proc.stdout  # the disclosure, then the (random) reply


def test_hub_validation_runs_only_when_the_hub_is_reachable(sample_dataset_dir, monkeypatch):
    """`RepoCard.validate()` posts to the Hub; the session is MOCKED (no network here) to see what is sent."""
    from huggingface_hub import constants, repocard

    from model_cards import validate_on_hub

    session = mock.MagicMock()
    session.post.return_value = mock.MagicMock(status_code=200)
    monkeypatch.setattr(repocard, "get_session", lambda: session)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert validate_on_hub(sample_dataset_dir / "README.md", "dataset") is False and not session.post.called
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(repocard, "hf_raise_for_status", lambda response: None)
    assert validate_on_hub(sample_dataset_dir / "README.md", "dataset") is True
    url, body = session.post.call_args.args[0], session.post.call_args.kwargs["json"]
    assert url.endswith("/api/validate-yaml") and body["repoType"] == "dataset" and "configs:" in body["content"]
