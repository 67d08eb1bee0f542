"""Training and inference cannot drift apart: replaying a dataset session through `MirrorTherapist` sends the model
exactly the user turn of the dataset's `sft` row for every therapist turn, for every variant."""

import pytest

from inference.backends.base import GenerationConfig
from inference.prompts import VISION_VARIANTS, load_prompt
from inference.safety import SafetyConfig
from inference.therapist import MirrorTherapist


class ReplayBackend:
    """Answers each reply request with the dataset's therapist statement (so the history stays the dataset's)
    and each emotion-caption request with the current stage direction; records what it was sent."""

    name = "replay"
    supports_images = True

    def __init__(self, therapist_statements, stage_directions):
        self.statements, self.directions = list(therapist_statements), list(stage_directions)
        self.calls = []

    def chat(self, messages, images=None, config=None):
        return self.chat_batch([messages], [images or []], config)[0]

    def chat_batch(self, conversations, images=None, config=None):
        replies = []
        for messages, imgs in zip(conversations, images or [[] for _ in conversations], strict=True):
            self.calls.append((messages, imgs))
            text = " ".join(b["text"] for b in messages[-1]["content"] if b["type"] == "text")
            is_caption = text.strip() == load_prompt()["emotion_caption_instruction"].strip()
            replies.append(self.directions.pop(0) if is_caption else self.statements.pop(0))
        return replies


@pytest.fixture(scope="module")
def dataset(sample_dataset_dir):
    from datasets import load_dataset

    return (
        load_dataset(str(sample_dataset_dir), split="train"),
        load_dataset(str(sample_dataset_dir), "sft", split="train"),
    )


@pytest.mark.parametrize("variant", ["base", "planning", "ec_planning", "text"])
@pytest.mark.parametrize("session_index", [0, 13])
def test_replayed_session_sends_the_sft_prompts(dataset, variant, session_index):
    sessions, sft = dataset
    session_row = sessions[session_index]
    turns = session_row["turns"]
    assert turns[0]["speaker"] == "client"
    expected = sft.filter(
        lambda s, v, t: s == session_row["id"] and v == variant and t == "response",
        input_columns=["session_id", "variant", "task"],
    ).sort("turn_index")
    backend = ReplayBackend(
        [t["statement"] for t in turns if t["speaker"] == "therapist"],
        [t["stage_direction"] for t in turns if t["speaker"] == "client"],
    )
    therapist = MirrorTherapist(
        backend, variant, GenerationConfig(temperature=0.0), safety=SafetyConfig(use_embeddings=False)
    )
    session = therapist.start_session(
        session_row["client"], cbt_technique=session_row["cbt_technique"], cbt_plan=session_row["cbt_plan"]
    )
    sent = []
    for index, turn in enumerate(turns):
        if turn["speaker"] != "client":
            continue
        if index + 1 >= len(turns):
            break  # the session ends on the client: no therapist reply to compare
        reply = session.respond(turn["statement"], image=turn["image"], stage_direction=turn["stage_direction"])
        assert reply.text == turns[index + 1]["statement"]
        sent.append(reply)
    assert len(sent) == len(expected) > 0
    for reply, row in zip(sent, expected, strict=True):
        assert reply.messages == row["messages"][:1], row["id"]
        if variant in VISION_VARIANTS:  # the image sent is the client's face of that turn, as in the sft row
            (images,) = [i for m, i in backend.calls if m == reply.messages]
            assert list(images[0].getdata()) == list(row["images"][0].getdata())


# ---------------------------------------------------------------------------- token-level parity (issue 8)
# A SentencePiece-style (Metaspace) tokenizer, as Llama/Vicuna's: a space belongs to the next token ("▁Thank"), so a
# generation prompt ending in "ASSISTANT: " would end in a lone "▁" at inference that training never produced. The
# byte-level tiny tokenizer hides that; these tests use the Metaspace one, built at test time with `tokenizers`.

PARITY_CASES = [
    ("base", "response"),
    ("planning", "response"),
    ("planning", "plan"),
    ("ec_planning", "response"),
    ("ec_planning", "emotion_caption"),
    ("ec_planning", "plan"),
    ("text", "response"),
    ("cactus_plan", "response"),
    ("cactus_plan", "plan"),
]


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory):
    from training.tiny import build_tiny_causal_lm, build_tiny_llava

    root = tmp_path_factory.mktemp("sentencepiece-style")
    return (build_tiny_llava(root / "llava", tokenizer_kind="metaspace"),
            build_tiny_causal_lm(root / "lm", tokenizer_kind="metaspace"))  # fmt: skip


@pytest.fixture(scope="module")
def sp_backends(sp_models):
    from inference.backends.transformers_backend import TransformersBackend

    llava_dir, lm_dir = sp_models
    return (TransformersBackend.from_pretrained(llava_dir, device="cpu"),
            TransformersBackend.from_pretrained(lm_dir, device="cpu"))  # fmt: skip


def training_token_ids(rows, variant, processing_class, lm_dir):
    """Token ids of `rows` exactly as `mirror train` feeds them to the model: vision variants through TRL's vision
    collator, text variants through `load_sft_dataset`'s flattening and TRL's own dataset tokenization."""
    if variant in VISION_VARIANTS:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        collator = DataCollatorForVisionLanguageModeling(processor=processing_class)
        return [collator([{"messages": r["messages"], "images": r["images"]}])["input_ids"][0].tolist() for r in rows]
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from training.data import to_text_messages

    dataset = to_text_messages(Dataset.from_list([{"messages": r["messages"]} for r in rows]))
    args = SFTConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, max_length=None,
                     assistant_only_loss=True, report_to="none")  # fmt: skip
    trainer = SFTTrainer(model=str(lm_dir), args=args, train_dataset=dataset, processing_class=processing_class)
    return list(trainer.train_dataset["input_ids"])


@pytest.mark.parametrize(("variant", "task"), PARITY_CASES)
def test_inference_prompt_tokens_are_a_prefix_of_training_tokens(dataset, sp_models, sp_backends, variant, task):
    _, sft = dataset
    rows = sft.filter(lambda v, t: v == variant and t == task, input_columns=["variant", "task"])
    rows = [rows[i] for i in range(min(4, len(rows)))]
    assert rows, (variant, task)
    vision = variant in VISION_VARIANTS
    backend = sp_backends[0] if vision else sp_backends[1]
    processing_class = backend.processor if vision else backend.tokenizer
    trained = training_token_ids(rows, variant, processing_class, sp_models[1])
    bos = backend.tokenizer.bos_token_id
    for row, train_ids in zip(rows, trained, strict=True):
        prompt = row["messages"][:1]
        inference_ids = backend.encode([prompt], [row["images"]])["input_ids"][0].tolist()
        assert train_ids[: len(inference_ids)] == inference_ids, (
            row["id"],
            backend.tokenizer.convert_ids_to_tokens(inference_ids[-4:]),
            backend.tokenizer.convert_ids_to_tokens(train_ids[len(inference_ids) - 4 : len(inference_ids) + 2]),
        )
        assert len(train_ids) > len(inference_ids)  # the reply and EOS follow
        # BOS starts both sequences, exactly once (the template adds it, the tokenizer must not add another).
        assert train_ids[0] == bos and train_ids.count(bos) == 1, row["id"]
        rendered = processing_class.apply_chat_template(row["messages"], tokenize=False)
        assert rendered.startswith(backend.tokenizer.bos_token)
        assert backend.render(prompt).endswith("ASSISTANT:")


def test_a_trailing_space_in_the_generation_prompt_breaks_parity(dataset, sp_backends):
    """The control: the old template (generation prompt "ASSISTANT: ") fails the prefix check under SentencePiece."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    _, sft = dataset
    row = sft.filter(lambda v, t: v == "base" and t == "response", input_columns=["variant", "task"])[0]
    processor = sp_backends[0].processor
    old = processor.chat_template.replace("{{ 'ASSISTANT:' }}{%- endif -%}", "{{ 'ASSISTANT: ' }}{%- endif -%}")
    assert old != processor.chat_template
    train_ids = DataCollatorForVisionLanguageModeling(processor=processor)([dict(row)])["input_ids"][0].tolist()
    from inference.backends.transformers_backend import attach_images

    inference_ids = processor.apply_chat_template(
        [attach_images(row["messages"][:1], row["images"])], chat_template=old, add_generation_prompt=True,
        tokenize=True, return_dict=True, processor_kwargs={"add_special_tokens": False},
    )["input_ids"][0]  # fmt: skip
    assert processor.tokenizer.convert_ids_to_tokens(inference_ids[-1:]) == ["\u2581"]
    assert train_ids[: len(inference_ids)] != list(inference_ids)


@pytest.mark.parametrize("variant", ["text", "cactus_plan"])
def test_text_variants_flatten_identically_in_training_and_every_backend(dataset, sample_dataset_dir, variant):
    """The `text` and `cactus_plan` rows mirror train loads (plain-string contents) hold exactly the text the
    transformers, vLLM and endpoint backends send for the same prompt."""
    from inference.backends.endpoint import to_openai_messages
    from inference.backends.transformers_backend import flatten_text_content
    from training.data import load_sft_dataset

    _, sft = dataset
    rows = sft.filter(lambda v: v == variant, input_columns="variant")
    loaded = load_sft_dataset(str(sample_dataset_dir), variant)
    assert len(loaded) == len(rows) > 0
    for row, trained in zip(rows, loaded, strict=True):
        assert all(isinstance(m["content"], str) for m in trained["messages"])
        prompt = row["messages"][:1]
        assert flatten_text_content(prompt) == trained["messages"][:1]
        assert to_openai_messages(prompt) == trained["messages"][:1]


@pytest.mark.parametrize("session_index", [0, 13])
def test_replayed_cactus_plan_session_sends_the_sft_prompts(dataset, session_index):
    test_replayed_session_sends_the_sft_prompts(dataset, "cactus_plan", session_index)


def test_plan_rows_are_the_therapists_plan_request(dataset):
    """A fine-tuned planning model is asked for its plan exactly as the `plan` rows ask, and the rows' answers parse
    back to the session's technique and plan."""
    sessions, sft = dataset
    plan_rows = sft.filter(lambda t: t == "plan", input_columns="task")
    assert sorted(set(plan_rows["variant"])) == ["cactus_plan", "ec_planning", "planning"]
    for variant in ("planning", "ec_planning", "cactus_plan"):
        assert plan_rows["variant"].count(variant) == len(sessions), variant
    by_id = {s["id"]: s for s in sessions}
    for variant in ("planning", "cactus_plan"):
        session = by_id[plan_rows[plan_rows["variant"].index(variant)]["session_id"]]
        row = next(r for r in plan_rows if r["variant"] == variant and r["session_id"] == session["id"])
        backend = ReplayBackend([row["messages"][1]["content"][0]["text"]], [])
        backend.supports_images = variant != "cactus_plan"
        therapist = MirrorTherapist(backend, variant, GenerationConfig(temperature=0.0),
                                    safety=SafetyConfig(use_embeddings=False))  # fmt: skip
        (session_started,) = therapist.start_sessions([session["client"]])  # no plan given: the model is asked
        assert backend.calls[0] == (row["messages"][:1], []) and row["images"] == []
        plan = session_started.plan
        assert (plan.technique, plan.plan, plan.parse_failed) == (session["cbt_technique"], session["cbt_plan"], False)
