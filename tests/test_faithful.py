"""A faithful reproduction (issue 8) and training at GPU speed, CPU part (issue 14), through `mirror train`'s own
trainer on the tiny LLaVA: fp32 trainable weights under a bf16 base, a frozen vision tower without an autograd graph,
the proposed speed settings, LLaVA's pad-to-square, safetensors-only loading and facts defined once."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from training.modeling import MirrorConfigError
from training.train import TINY_RECIPE, build_trainer, parse_args


def tiny_args(model_dir, dataset_dir, output_dir, *extra: str):
    """Parsed `mirror train` arguments: the tiny recipe (LoRA + projector, activation checkpointing) plus `extra`."""
    return parse_args(
        ["--config", str(TINY_RECIPE), "--model_name_or_path", str(model_dir), "--dataset_name", str(dataset_dir),
         "--output_dir", str(output_dir), "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
         *extra]
    )  # fmt: skip


def projector_params(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad and "multi_modal_projector" in n}


# ------------------------------------------------------------------------------------------ fp32 trainable weights


def test_bf16_base_keeps_every_trainable_parameter_fp32_and_the_projector_learns(
    tiny_llava_dir, sample_dataset_dir, tmp_path
):
    args = tiny_args(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--dtype", "bfloat16", "--bf16", "true",
                     "--max_steps", "3", "--per_device_train_batch_size", "2", "--projector_lr", "2e-5")  # fmt: skip
    trainer = build_trainer(*args)
    model = trainer.model
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}, "the base model really is bf16"
    assert set(trainable.values()) == {torch.float32}, {n: d for n, d in trainable.items() if d != torch.float32}
    projector = projector_params(model)
    assert projector and any("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in projector.items()}
    # Why it matters: an Adam step at the paper's projector lr (2e-5) mostly rounds away in bf16.
    weight = before[next(n for n in before if n.endswith("linear_1.weight"))]
    bf16_weight = weight.to(torch.bfloat16)
    rounded_away = ((bf16_weight.float() + 2e-5).to(torch.bfloat16) == bf16_weight).float().mean().item()
    assert rounded_away > 0.5
    trainer.train()
    moved = [(p.detach() != before[n]).float().mean().item() for n, p in projector_params(trainer.model).items()]
    assert min(moved) > 0.9, f"share of projector elements that changed, per tensor: {moved}"
    assert {p.dtype for p in projector_params(trainer.model).values()} == {torch.float32}


def test_half_precision_base_without_autocast_is_refused(tiny_llava_dir, sample_dataset_dir, tmp_path):
    args = tiny_args(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--dtype", "bfloat16", "--bf16", "false")
    with pytest.raises(MirrorConfigError, match="bf16: true"):
        build_trainer(*args)


# ----------------------------------------------------------------------------------- frozen vision tower, no graph


def record_vision_outputs(model, names):
    seen = []

    def hook(module, inputs, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        seen.append((hidden.requires_grad, hidden.grad_fn))

    return seen, [model.get_submodule(name).register_forward_hook(hook) for name in names]


def test_frozen_vision_tower_runs_without_graph_in_a_training_step(tiny_llava_dir, sample_dataset_dir, tmp_path):
    from training.modeling import find_vision_tower_modules

    args = tiny_args(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--max_steps", "1",
                     "--per_device_train_batch_size", "2")  # fmt: skip
    assert args[1].activation_checkpointing, "the tiny recipe checkpoints activations (enable_input_require_grads)"
    trainer = build_trainer(*args)
    towers = find_vision_tower_modules(trainer.model)
    assert towers and trainer.mirror_speedups["vision_towers_without_graph"] == towers
    seen, hooks = record_vision_outputs(trainer.model, towers)
    trainer.train()
    for hook in hooks:
        hook.remove()
    assert seen and all(not requires_grad and grad_fn is None for requires_grad, grad_fn in seen), seen
    tower_params = [p for name in towers for p in trainer.model.get_submodule(name).parameters()]
    assert all(p.grad is None for p in tower_params)
    assert trainer.state.log_history[0]["grad_norm"] > 0  # LoRA and the projector still learn


def test_without_the_fix_trl_builds_a_graph_through_the_frozen_tower(tiny_llava_dir, sample_dataset_dir, tmp_path):
    """The control: plain TRL with the same LoRA and activation checkpointing back-propagates through CLIP."""
    from peft import LoraConfig
    from transformers import AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from training.data import load_sft_dataset
    from training.modeling import default_lora_target_regex, find_vision_tower_modules

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    rows = load_sft_dataset(str(sample_dataset_dir), "base", max_samples=4)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, max_steps=1, report_to="none",
                     per_device_train_batch_size=2, activation_checkpointing=True, max_length=None,
                     assistant_only_loss=True, save_strategy="no", disable_tqdm=True)  # fmt: skip
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=default_lora_target_regex(model),
                      modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor, peft_config=peft)
    seen, hooks = record_vision_outputs(trainer.model, find_vision_tower_modules(trainer.model))
    trainer.train()
    for hook in hooks:
        hook.remove()
    assert seen and all(requires_grad and grad_fn is not None for requires_grad, grad_fn in seen)


# ------------------------------------------------------------------------------------------------ speed settings


def test_proposed_speed_settings_parse_and_train_with_the_same_loss(tiny_llava_dir, sample_dataset_dir, tmp_path):
    """The GPU proposals of recipes/llava-1.5-7b/*.yaml parse and train on CPU at tiny size, scaled down (micro-batch
    1, the same accumulation), with the loss of the plain setting (one batch of the same rows, every layer
    checkpointed, token metrics on) over the first steps. Regional compilation uses the `aot_eager` backend here: it
    traces and compiles the graph like inductor but skips C++ code generation, which takes minutes on this CPU."""
    import yaml

    from bench.train import proposed_speed_settings, settings_argv

    proposals = proposed_speed_settings()
    assert {"H100 80GB", "H200 141GB"} <= set(proposals)
    recipe = yaml.safe_load((TINY_RECIPE.parents[1] / "llava-1.5-7b" / "base.yaml").read_text())
    assert recipe["log_token_metrics"] is False  # active in the 7B recipes, with every proposal
    for recipe in ("planning", "ec_planning"):
        assert proposed_speed_settings(TINY_RECIPE.parents[1] / "llava-1.5-7b" / f"{recipe}.yaml") == proposals
    steps = ["--max_steps", "2", "--variant", "planning", "--seed", "0"]  # planning: its text-only plan rows mix in

    def losses(name, *extra):
        trainer = build_trainer(*tiny_args(tiny_llava_dir, sample_dataset_dir, tmp_path / name, *steps, *extra))
        trainer.train()
        return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    for gpu, settings in proposals.items():
        accumulation = settings["gradient_accumulation_steps"]
        scaled = {
            **settings,
            "per_device_train_batch_size": 1,
            "compile_backend": "aot_eager",
            "log_token_metrics": False,
        }
        trainer, proposed = losses(gpu.split()[0], *settings_argv(scaled))
        args = trainer.args
        assert (args.gradient_accumulation_steps, args.pad_to_multiple_of) == (accumulation, 64)
        assert args.activation_checkpointing is settings["activation_checkpointing"]
        assert trainer.mirror_speedups["compiled_layers"] == 2  # the tiny LLaVA's two decoder layers
        assert not any("entropy" in entry for entry in trainer.state.log_history)  # the recipes turn it off
        _, plain = losses(f"plain-{accumulation}", "--per_device_train_batch_size", str(accumulation))
        assert len(proposed) == len(plain) == 2
        assert proposed == pytest.approx(plain, rel=1e-4), (gpu, proposed, plain)


# ------------------------------------------------------------------------------------------------- pad to square


def test_pad_to_square_pads_with_the_image_mean_instead_of_cropping(tiny_llava_dir, tmp_path):
    from transformers import AutoProcessor

    from training.modeling import pad_to_square_image_processor, set_pad_to_square
    from training.tiny import build_tiny_llava

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    wide = Image.new("RGB", (84, 28), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 28, 28))  # a blue left third, which a centre crop cuts away
    mean = tuple(int(m * 255) for m in processor.image_processor.image_mean)
    square = Image.new("RGB", (84, 84), mean)
    square.paste(wide, (0, 28))  # LLaVA's expand2square, written out
    padded = pad_to_square_image_processor(processor.image_processor)
    got = padded(wide, return_tensors="pt")["pixel_values"]
    expected = processor.image_processor(square, return_tensors="pt")["pixel_values"]
    cropped = processor.image_processor(wide, return_tensors="pt")["pixel_values"]
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, cropped, atol=1e-2)
    assert cropped[0, 2].max() < 0 < got[0, 2].max()  # the blue part survives only with padding
    # As a training option, saved with the processor, so inference preprocesses the same way.
    set_pad_to_square(processor)
    processor.save_pretrained(tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert torch.allclose(reloaded.image_processor(wide, return_tensors="pt")["pixel_values"], got, atol=1e-5)
    folder = build_tiny_llava(tmp_path / "padded-llava", pad_to_square=True)
    assert AutoProcessor.from_pretrained(folder).image_processor.do_pad is True


def test_pad_to_square_is_a_training_option(tiny_llava_dir, sample_dataset_dir, tmp_path):
    args = tiny_args(tiny_llava_dir, sample_dataset_dir, tmp_path / "out", "--pad_to_square", "true",
                     "--max_steps", "1")  # fmt: skip
    assert args[0].pad_to_square is True
    trainer = build_trainer(*args)
    assert trainer.processing_class.image_processor.do_pad is True
    trainer.train()


# ------------------------------------------------------------------------------------------- safetensors, facts


def test_every_load_path_refuses_pickled_weights(tiny_llava_dir, sample_dataset_dir, tmp_path):
    """Training, merging and inference load weights with use_safetensors=True: a folder holding only a pickle
    (`pytorch_model.bin`) is refused instead of unpickled."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from inference.backends.transformers_backend import TransformersBackend
    from training.train import load_model

    pickled = tmp_path / "pickled-llava"
    shutil.copytree(tiny_llava_dir, pickled)
    for weights in pickled.glob("*.safetensors*"):
        weights.unlink()
    state = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).state_dict()
    torch.save(state, pickled / "pytorch_model.bin")  # what an old checkpoint holds
    assert (pickled / "pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        TransformersBackend.from_pretrained(pickled, device="cpu")
    script_args, training_args, model_args = tiny_args(pickled, sample_dataset_dir, tmp_path / "out")
    with pytest.raises(OSError, match="safetensors"):
        load_model(script_args, training_args, model_args, vision=True)
    from test_backends import make_lora_adapter

    from training.merge import merge_adapter

    adapter = make_lora_adapter(tiny_llava_dir, tmp_path / "adapter")
    with pytest.raises(OSError, match="safetensors"):
        merge_adapter(adapter, tmp_path / "merged", base_model=str(pickled))


def test_facts_are_defined_once():
    import dataset_builder.schema
    import inference.prompts
    import inference.therapist
    import training.data
    import training.modeling
    import training.tiny
    import training.train

    assert training.train.TRAINING_RECORD is inference.prompts.TRAINING_RECORD_NAME
    assert inference.therapist.TRAINING_RECORD_NAME is inference.prompts.TRAINING_RECORD_NAME
    assert training.data.SFT_TASKS is dataset_builder.schema.SFT_TASKS is inference.prompts.SFT_TASKS
    assert "plan" in inference.prompts.SFT_TASKS
    assert training.tiny.load_chat_template() == training.modeling.read_chat_template("llava_eos")
    from inference.backends.transformers_backend import parse_dtype

    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="Unknown dtype"):
        parse_dtype("bfloat17")


def test_bench_settings_specs():
    """`bench/train.py --real-size --settings` specs: inline keys, the recipe's proposals, the same effective batch."""
    from bench.train import parse_setting

    spec = parse_setting("micro=4,ga=8,ckpt=every2,compile=1,metrics=0,pad=64,kernels=1", 32)
    assert spec == {
        "name": "micro=4,ga=8,ckpt=every2,compile=1,metrics=0,pad=64,kernels=1",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 8,
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"every_n_layers": 2},
        "compile_decoder_layers": True,
        "log_token_metrics": False,
        "pad_to_multiple_of": 64,
        "model_init_kwargs": {"use_kernels": True},
    }
    paper = parse_setting("paper", 32)
    assert (paper["per_device_train_batch_size"], paper["activation_checkpointing"]) == (32, True)
    h100 = parse_setting("h100", 32)
    assert (h100["per_device_train_batch_size"], h100["gradient_accumulation_steps"]) == (4, 8)
    with pytest.raises(ValueError, match="effective batch"):
        parse_setting("micro=4,ga=4", 32)
    with pytest.raises(ValueError, match="Unknown key"):
        parse_setting("micro=4,ga=8,warp=9", 32)
