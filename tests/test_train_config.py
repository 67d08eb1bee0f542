"""`mirror train` configuration: recipes, the CLI parser, the model card, and every error raised before training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from recipes import RECIPES_DIR
from training.modeling import MirrorConfigError
from training.train import TINY_RECIPE, build_trainer, finetuning_mode, make_parser, parse_args

MODEL_RECIPES = sorted(p for p in RECIPES_DIR.glob("*/*.yaml") if p.parent.name not in ("accelerate", "data", "eval"))


def tiny_argv(model_dir, dataset_dir, output_dir, *extra: str) -> list[str]:
    return [
        "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--dataset_name", str(dataset_dir),
        "--output_dir", str(output_dir),
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if data or a model gets loaded: an error must come before either."""

    def refuse(*args, **kwargs):
        raise AssertionError("loaded data or a model before refusing the configuration")

    monkeypatch.setattr("training.data.load_sft_dataset", refuse)
    monkeypatch.setattr("training.train.load_model", refuse)
    monkeypatch.setattr("training.train.load_processing_class", refuse)


# ---------------------------------------------------------------------------------------------------------------------
# Recipes and the parser


@pytest.mark.parametrize("recipe", MODEL_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses(recipe):
    script_args, training_args, model_args = parse_args(["--config", str(recipe), "--use_cpu", "true"])
    assert script_args.recipe == str(recipe) and model_args.use_peft is True
    assert script_args.variant == recipe.stem
    assert training_args.assistant_only_loss is True
    if script_args.variant != "text":
        assert training_args.max_length is None  # vision: never truncate image tokens


@pytest.mark.parametrize("variant", ["base", "planning", "ec_planning"])
def test_llava_recipes_carry_the_paper_settings(variant):
    script_args, training_args, model_args = parse_args(
        ["--config", str(RECIPES_DIR / "llava-1.5-7b" / f"{variant}.yaml"), "--use_cpu", "true"]
    )
    assert model_args.model_name_or_path == "llava-hf/llava-1.5-7b-hf"
    assert script_args.variant == variant
    assert (finetuning_mode(model_args), model_args.lora_r, model_args.lora_alpha) == ("lora", 128, 256)
    assert script_args.chat_template == "llava_eos"
    assert script_args.train_projector and script_args.projector_lr == 2e-5
    assert training_args.learning_rate == 2e-4 and training_args.weight_decay == 0.0
    assert training_args.lr_scheduler_type.value == "cosine" and training_args.warmup_steps == 0.03
    assert training_args.num_train_epochs == 5 and training_args.per_device_train_batch_size == 32
    assert training_args.bf16 is True and training_args.gradient_checkpointing is True
    assert model_args.dtype == "bfloat16"


def test_other_families_and_text_baseline_recipes():
    _, _, qwen = parse_args(["--config", str(RECIPES_DIR / "qwen2.5-vl-7b" / "base.yaml"), "--use_cpu", "true"])
    assert qwen.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    text, text_training, text_model = parse_args(
        ["--config", str(RECIPES_DIR / "llama-3-8b-instruct" / "text.yaml"), "--use_cpu", "true"]
    )
    assert text_model.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct" and text.variant == "text"
    assert text_training.max_length == 2048


@pytest.mark.parametrize("name", ["ddp", "zero3", "fsdp"])
def test_accelerate_configs(name):
    config = yaml.safe_load((RECIPES_DIR / "accelerate" / f"{name}.yaml").read_text())
    expected = {"ddp": "MULTI_GPU", "zero3": "DEEPSPEED", "fsdp": "FSDP"}[name]
    assert config["distributed_type"] == expected and config["mixed_precision"] == "bf16"
    if name == "zero3":
        assert config["deepspeed_config"]["zero_stage"] == 3
        assert config["deepspeed_config"]["zero3_save_16bit_model"] is True


def test_cli_overrides_the_recipe():
    _, training_args, model_args = parse_args(
        ["--config", str(TINY_RECIPE), "--lora_r", "4", "--learning_rate", "0.5"]
    )
    assert model_args.lora_r == 4 and training_args.learning_rate == 0.5
    assert model_args.lora_alpha == 16  # from the recipe


def test_config_takes_a_bundled_recipe_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("llava-1.5-7b/base", "recipes/llava-1.5-7b/base.yaml"):
        script_args, _, model_args = parse_args(["--config", name, "--use_cpu", "true"])
        assert script_args == parse_args([f"--config={name}", "--use_cpu", "true"])[0]
        assert script_args.recipe == name and model_args.model_name_or_path == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(FileNotFoundError, match=r"no recipe 'llava-1\.5-7b/nope'"):
        parse_args(["--config", "llava-1.5-7b/nope"])


def test_train_parser_is_a_trl_parser():
    from trl import TrlParser

    from mirror_cli import make_command_parser

    parser = make_command_parser("train", prog="python -m training.train")
    assert isinstance(parser, TrlParser)
    script_args, _, _ = parse_args(["--config", str(TINY_RECIPE), "--variant", "text"], parser=parser)
    assert script_args.variant == "text"


def test_every_argument_has_help():
    import dataclasses

    from training.merge import MergeArguments
    from training.train import MirrorScriptArguments

    for cls in (MirrorScriptArguments, MergeArguments):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


# ---------------------------------------------------------------------------------------------------------------------
# Errors, each before any training step


def test_unknown_recipe_key_is_named(tmp_path):
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe["lora_alfa"] = 8
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match=r"Unknown arguments from config file: \['--lora_alfa', '8'\]"):
        parse_args(["--config", str(path)])


def test_trl_parser_alone_also_refuses_unknown_recipe_keys(tmp_path):
    """The behaviour we rely on underneath: TrlParser reports config keys no dataclass consumes."""
    path = tmp_path / "typo.yaml"
    path.write_text("use_cpu: true\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        make_parser().parse_args_and_config(["--config", str(path)], fail_with_unknown_args=True)


def test_variant_missing_from_the_dataset(tiny_llava_dir, sample_dataset_dir, tmp_path):
    import datasets

    sft = datasets.load_dataset(str(sample_dataset_dir), "sft", split="train")
    lacking = sft.filter(lambda v: v != "planning", input_columns="variant")
    folder = tmp_path / "no-planning"
    (folder / "data" / "sft").mkdir(parents=True)
    lacking.to_parquet(str(folder / "data" / "sft" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: sft\n  data_files:\n  - split: train\n    path: data/sft/*.parquet\n---\n"
    )
    script_args, training_args, model_args = parse_args(
        tiny_argv(tiny_llava_dir, folder, tmp_path / "out", "--variant", "planning")
    )
    left = sorted(set(lacking["variant"]))
    with pytest.raises(ValueError, match=re.escape(f"no rows for variant 'planning'; it has variants {left}")):
        build_trainer(script_args, training_args, model_args)


def test_variant_selection_keeps_the_right_rows(sample_dataset_dir):
    import datasets

    from training.data import load_sft_dataset

    sft = datasets.load_dataset(str(sample_dataset_dir), "sft", split="train")
    from collections import Counter

    count = Counter(zip(sft["variant"], sft["task"], strict=True))
    ec = load_sft_dataset(str(sample_dataset_dir), "ec_planning")
    assert len(ec) == sum(n for (variant, _), n in count.items() if variant == "ec_planning")
    assert count["ec_planning", "emotion_caption"] > 0  # ec_planning trains every task by default
    responses = load_sft_dataset(str(sample_dataset_dir), "ec_planning", tasks=["response"])
    assert len(responses) == count["ec_planning", "response"]
    base = load_sft_dataset(str(sample_dataset_dir), "base", max_samples=5)
    assert len(base) == 5 and base.column_names == ["messages", "images"] and len(base[0]["images"]) == 1
    text = load_sft_dataset(str(sample_dataset_dir), "text")
    assert text.column_names == ["messages"] and len(text) == count["text", "response"]
    assert all(isinstance(message["content"], str) for message in text[0]["messages"])


def test_missing_dataset_folder(tiny_llava_dir, tmp_path):
    script_args, training_args, model_args = parse_args(tiny_argv(tiny_llava_dir, tmp_path / "nope", tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_trainer(script_args, training_args, model_args)


def test_text_only_model_for_a_vision_variant(tiny_lm_dir, sample_dataset_dir, tmp_path):
    script_args, training_args, model_args = parse_args(tiny_argv(tiny_lm_dir, sample_dataset_dir, tmp_path / "out"))
    with pytest.raises(
        MirrorConfigError, match=r"Variant 'base' shows the model the client's face, .* no vision tower"
    ):
        build_trainer(script_args, training_args, model_args)


def test_vision_model_for_the_text_variant(tiny_llava_dir, sample_dataset_dir, tmp_path):
    script_args, training_args, model_args = parse_args(
        tiny_argv(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--variant", "text")
    )
    with pytest.raises(MirrorConfigError, match=r"Variant 'text' trains a causal language model"):
        build_trainer(script_args, training_args, model_args)


def test_vision_model_without_image_processor(tiny_llava_dir, sample_dataset_dir, tmp_path):
    import shutil

    folder = tmp_path / "llava-no-processor"
    shutil.copytree(tiny_llava_dir, folder)
    (folder / "processor_config.json").unlink()  # AutoProcessor now falls back to the bare tokenizer
    script_args, training_args, model_args = parse_args(tiny_argv(folder, sample_dataset_dir, tmp_path / "out"))
    with pytest.raises(MirrorConfigError, match="needs a processor with an image processor"):
        build_trainer(script_args, training_args, model_args)


def test_vision_config_without_image_token(tiny_llava_dir):
    from types import SimpleNamespace

    from transformers import AutoProcessor

    from training.modeling import check_vision_model

    config = SimpleNamespace(vision_config=object())
    with pytest.raises(MirrorConfigError, match="needs a model with an image token"):
        check_vision_model("some/vlm", config, AutoProcessor.from_pretrained(tiny_llava_dir), "planning")


def test_max_length_that_would_cut_image_tokens(tiny_llava_dir, sample_dataset_dir, tmp_path):
    import datasets

    from training.data import longest_row_length

    script_args, training_args, model_args = parse_args(
        tiny_argv(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--max_length", "64")
    )
    with pytest.raises(MirrorConfigError, match=r"max_length=64 would cut image tokens .* Set max_length to null"):
        build_trainer(script_args, training_args, model_args)

    # the boundary: exactly the longest row is accepted
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    rows = datasets.load_dataset(str(sample_dataset_dir), "sft", split="train")
    rows = rows.filter(lambda v: v == "base", input_columns="variant").select_columns(["messages", "images"])
    longest = longest_row_length(rows, processor, processor.chat_template, vision=True)
    assert longest > 64
    for max_length, fails in ((longest - 1, True), (longest, False)):
        script_args, training_args, model_args = parse_args(
            tiny_argv(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--max_length", str(max_length))
        )
        if fails:
            with pytest.raises(MirrorConfigError, match=f"at least {longest}"):
                build_trainer(script_args, training_args, model_args)
        else:
            build_trainer(script_args, training_args, model_args)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_qlora_refused_without_gpu_before_loading(tiny_llava_dir, sample_dataset_dir, tmp_path, no_loading):
    script_args, training_args, model_args = parse_args(
        tiny_argv(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--load_in_4bit", "true")
    )
    with pytest.raises(MirrorConfigError, match=r"QLoRA .* needs a CUDA GPU, and none is available"):
        build_trainer(script_args, training_args, model_args)


REFUSED_BEFORE_LOADING = {
    "vision without assistant_only_loss": (["--assistant_only_loss", "false"], "needs assistant_only_loss=True"),
    "push_to_hub": (["--push_to_hub", "true"], r"Publish the finished folder with `mirror push`"),
    "checkpoints inside the model folder": (
        ["--checkpoint_dir", "{out}/checkpoints"],
        r"checkpoint_dir .* is inside the model folder .* would be published",
    ),
    "resume without checkpoint": (["--resume_from_checkpoint", "last"], "has no checkpoint"),
}


@pytest.mark.parametrize("case", list(REFUSED_BEFORE_LOADING))
def test_configuration_refused_before_loading(case, tiny_llava_dir, sample_dataset_dir, tmp_path, no_loading):
    extra, message = REFUSED_BEFORE_LOADING[case]
    out = tmp_path / "out"
    arguments = parse_args(tiny_argv(tiny_llava_dir, sample_dataset_dir, out, *(e.format(out=out) for e in extra)))
    with pytest.raises(MirrorConfigError, match=message):
        build_trainer(*arguments)


def test_chat_template_without_eos_in_generation_block(tiny_llava_dir, sample_dataset_dir, tmp_path):
    stock_like = (Path(TINY_RECIPE).parents[2] / "training" / "chat_templates" / "llava_eos.jinja").read_text()
    no_eos = tmp_path / "no_eos.jinja"
    no_eos.write_text(stock_like.replace("{{ eos_token }}{% endgeneration %}", "{% endgeneration %}{{ eos_token }}"))
    script_args, training_args, model_args = parse_args(
        tiny_argv(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--chat_template", str(no_eos))
    )
    with pytest.raises(MirrorConfigError, match="would never learn to stop"):
        build_trainer(script_args, training_args, model_args)


# ---------------------------------------------------------------------------------------------------------------------
# Model-side helpers on other VLM families (tiny configs, no weights)


def _tiny_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "rope_scaling": {"type": "mrope",
                     "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32,
                       "fullatt_block_indexes": [1]},
        image_token_id=100, video_token_id=101, vision_start_token_id=102,
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config)


def _tiny_idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config(
        text_config={"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "model_type": "llama"},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        image_token_id=100, scale_factor=2,
    )  # fmt: skip
    return Idefics3ForConditionalGeneration(config)


@pytest.mark.parametrize(
    ("build", "projector"),
    [(_tiny_qwen2_5_vl, "model.visual.merger"), (_tiny_idefics3, "model.connector")],
    ids=["qwen2.5-vl", "idefics3"],
)
def test_lora_regex_and_projector_on_other_vlm_families(build, projector):
    import torch

    from training.modeling import (
        default_lora_target_regex,
        find_projector_modules,
        find_vision_tower_modules,
        language_model_prefix,
        modules_matching,
    )

    model = build()
    prefix = language_model_prefix(model)
    matched = modules_matching(model, default_lora_target_regex(model))
    lm_linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")]
    assert sorted(matched) == sorted(lm_linears) and matched
    towers = find_vision_tower_modules(model)
    assert towers and not any(name.startswith(tuple(t + "." for t in towers)) for name in matched)
    assert find_projector_modules(model) == [projector]


# ---------------------------------------------------------------------------------------------------------------------
# The model card renderer (plain data in, Markdown out)


def test_model_card_metadata_and_safety_sections():
    from huggingface_hub import ModelCard

    from model_cards import render_model_card

    text = render_model_card(
        {
            "model_name": "mirror-llava-1.5-7b-base",
            "base_model": "llava-hf/llava-1.5-7b-hf",
            "variant": "ec_planning",
            "license": "llama2",
            "dataset": "./mirror_dataset",
            "dataset_hub_id": "someone/mirror",
            "hyperparameters": {"learning_rate": 2e-4, "lora_r": 128},
            "framework_versions": {"trl": "1.16.0"},
        }
    )
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["license"] == "llama2" and data["base_model"] == "llava-hf/llava-1.5-7b-hf"
    assert data["datasets"] == ["someone/mirror"] and data["pipeline_tag"] == "image-text-to-text"
    assert data["library_name"] == "peft" and "variant-ec_planning" in data["tags"]
    assert "not a medical device" in card.text and "988" in card.text and "Limitations" in card.text
    assert "emotion-recognition" in card.text  # the ec_planning description
    assert "| `lora_r` | `128` |" in card.text and "- trl 1.16.0" in card.text


def test_model_card_for_text_model_with_local_base_and_bad_fields():
    from huggingface_hub import ModelCard

    from model_cards import render_model_card

    text = render_model_card(
        {
            "model_name": "m",
            "base_model": "/tmp/base",
            "variant": "text",
            "vision": False,
            "adapter": False,
            "finetuning": "full",
        }
    )
    data = ModelCard(text).data.to_dict()
    assert data["pipeline_tag"] == "text-generation" and data["library_name"] == "transformers"
    assert "base_model" not in data  # a local path is not Hub metadata
    assert "datasets" not in data
    with pytest.raises(ValueError, match="Unknown model card fields"):
        render_model_card({"model_name": "m", "base_model": "b", "variant": "base", "colour": "red"})
    with pytest.raises(ValueError, match="Unknown fine-tuning method"):
        render_model_card({"model_name": "m", "base_model": "b", "variant": "base", "finetuning": "dora"})
