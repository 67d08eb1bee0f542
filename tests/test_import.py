"""`mirror import` on fixture files written in the official release's layout (CSV and JSON), then `mirror build`."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from dataset_builder.importer import (
    ImportArguments,
    import_release,
    main,
    parse_personal_info,
    parse_screenplay,
    read_release_file,
)

INTAKE = """Name:
Laura Saunders
Age:
45
Gender:
female
Occupation: Office Manager
Education: Bachelor's Degree in Business Administration
Marital Status: Married
Family Details: Lives with her husband and two teenage children

2. Presenting Problem
Laura has been worrying that her team thinks she is incompetent since a project deadline slipped."""

INTAKE_2 = """Name: Omar Haddad
Age: 31
Gender: male
Occupation: Line cook
Education: High school diploma
Marital Status: Single
Family Details: Lives alone; his brother lives nearby
Omar has stopped answering friends' messages after losing a cooking competition."""

# A screenplay in the release's line format, with what the paper's parser tolerates: a line that names the client
# ("Laura:") instead of the role, a line without a stage direction, and a garbage line that must be dropped.
DIALOGUE_1 = """Client: [Sits stiffly, handbag on her lap, eyes on the floor]
Therapist: Hi Laura, thank you for coming in. What would you like us to focus on today?
Laura: [Shrugs, avoids eye contact] Work, I suppose. It's probably nothing.
Therapist: It sounds like part of you isn't sure this is worth talking about, and that's okay to say.
Client: [Twists her wedding ring] Since the deadline slipped, I keep thinking everyone sees me as useless.
Therapist: That sounds painful to carry. What evidence do you have that they see you that way?
--- scene break ---
Client: Nobody said it outright, but I could tell.
Therapist: Let's look at that together: what did your manager actually say after the deadline?
Client: [Pauses, brow furrowed] She thanked me for the update, actually.
Therapist: Would you be willing to try an experiment this week, noting each time a colleague asks for your help?"""

DIALOGUE_2 = """Therapist: Welcome, Omar. What brings you in today?
Client: [Leans back, arms crossed] My sister booked this. I don't really see the point.
Therapist: Thanks for being honest about that; we can go at whatever pace feels right.
Omar Haddad: [Looks at the window] I lost a competition. Everyone I know watched me fail.
Therapist: That sounds like a hard moment. How have you been spending your time since then?
Client: [Jaw tight, shakes his head] Mostly at home. Talking about it won't change anything.
Therapist: Would you try answering one message from a friend this week, just to see what happens?
Client: [Exhales slowly, small shrug] Maybe one. No promises."""

PLAN_1 = (
    "Evidence-Based Questioning\n1. Identify the thought that colleagues see her as incompetent. "
    "2. Gather evidence for and against. 3. Plan a small observation experiment."
)
PLAN_2 = "1. Build rapport. 2. Use Behavior Experiment: reply to one friend and record the outcome."

TRAIN_ROWS = [
    {
        "idx": "cactus-101-cognitive-resistance",
        "model": "gpt-4o-mini",
        "personal_info": INTAKE,
        "personality": "Cognitive Resistance",
        "distorted_thought": "Everyone at work thinks I'm incompetent.",
        "thinking_trap": "Mind Reading, Overgeneralization",
        "reason_for_seeking_counseling": "Constant worry about being judged at work.",
        "cbt_plan": PLAN_1,
        "dialogue": DIALOGUE_1,
        "proc_dialogue": "[]",
        "turn": "11",
        "resistance": "cognitive",
        "cactus_idx": "101",
        "celeba_idx": "7",
        "extra_column": "kept out of the records",
    },
    {
        "idx": "cactus-202-no-resistance",
        "model": "gpt-4o-mini",
        "personal_info": INTAKE_2,
        "personality": "No Resistance",
        "distorted_thought": "Everyone I know thinks I'm a failure now.",
        "thinking_trap": "Labeling; Mind Reading",
        "reason_for_seeking_counseling": "He has withdrawn from friends since a public loss.",
        "cbt_plan": PLAN_2,
        "dialogue": DIALOGUE_2,
        "proc_dialogue": "[]",
        "turn": "8",
        "resistance": "",
        "cactus_idx": "202",
        "celeba_idx": "12",
        "extra_column": "",
    },
]
TEST_ROWS = [
    {
        "idx": "cactus-303-emotional-resistance",
        "personal_info": INTAKE_2.replace("Omar Haddad", "Rina Cole").replace("male", "female"),
        "personality": "Emotional Resistance",
        "distorted_thought": "If I cry, I'm weak.",
        "thinking_trap": "should statements",
        "reason_for_seeking_counseling": "Trouble sleeping since her father's illness.",
        "cbt_plan": "1. Rapport. 2. Continuum Technique on 'weak'.",
        "cactus_idx": "303",
        "celeba_idx": "3",
    },
]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_release(folder, fmt="csv"):
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        write_csv(folder / "mirror_data.csv", TRAIN_ROWS)
    else:
        (folder / "mirror_data.json").write_text(json.dumps(TRAIN_ROWS, indent=1), encoding="utf-8")
    write_csv(folder / "mirror_test.csv", TEST_ROWS)
    return folder


def test_screenplay_parser_name_prefix_missing_direction_and_garbage():
    parsed = parse_screenplay(DIALOGUE_1, "Laura Saunders")
    assert parsed.dropped_lines == ["--- scene break ---"]
    speakers = [t["speaker"] for t in parsed.turns]
    assert speakers == ["client", "therapist"] * 5
    assert parsed.turns[2]["statement"] == "Work, I suppose. It's probably nothing."  # the "Laura:" line
    assert parsed.turns[2]["stage_direction"] == "Shrugs, avoids eye contact"
    assert parsed.turns[0]["statement"] == "" and parsed.turns[0]["stage_direction"].startswith("Sits stiffly")
    missing = parsed.turns[6]
    assert missing["statement"] == "Nobody said it outright, but I could tell." and missing["stage_direction"] is None
    assert parsed.turns[1]["stage_direction"] is None  # a therapist line without a bracket
    # Without the client's name, the name-prefixed line is garbage, as in the paper's parser.
    assert (
        "Laura: [Shrugs, avoids eye contact] Work, I suppose. It's probably nothing."
        in parse_screenplay(DIALOGUE_1).dropped_lines
    )


def test_screenplay_parser_full_name_and_markdown_and_merged_lines():
    text = (
        "**Therapist:** Hello.\nOmar Haddad: [Nods] Hi.\nMr. Haddad: And sorry I'm late.\nnarration line\n"
        "Therapist: [warmly] No problem at all."
    )
    parsed = parse_screenplay(text, "Omar Haddad")
    assert [(t["speaker"], t["statement"]) for t in parsed.turns] == [
        ("therapist", "Hello."),
        ("client", "Hi. And sorry I'm late."),
        ("therapist", "No problem at all."),
    ]
    assert parsed.turns[2]["stage_direction"] == "warmly"
    assert parsed.dropped_lines == ["narration line"]


def test_personal_info_parsing():
    fields = parse_personal_info(INTAKE)
    assert fields["name"] == "Laura Saunders" and fields["age"] == 45 and fields["gender"] == "female"
    assert fields["occupation"] == "Office Manager" and fields["marital_status"] == "Married"
    assert fields["personal_info"].startswith("Laura has been worrying")
    assert parse_personal_info(INTAKE_2)["name"] == "Omar Haddad"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_import_then_build_loads_with_faces(tmp_path, fmt):
    from datasets import load_dataset

    from dataset_builder.build import build_dataset

    release = write_release(tmp_path / "release", fmt)
    raw = tmp_path / "raw"
    assert main(ImportArguments(source=str(release), output=str(raw))) == 0
    report = json.loads((raw / "import-report.json").read_text())
    assert report["sessions"] == 2 and report["profiles"] == 1 and report["dropped_screenplay_lines"] == 1
    assert report["reference_faces"] == "embedded-renderer"

    result = build_dataset(raw, tmp_path / "dataset")
    sessions = load_dataset(str(result.output_dir), split="train")
    assert sorted(sessions["id"]) == ["cactus-101-cognitive-resistance", "cactus-202-no-resistance"]
    laura = sessions.filter(lambda r: r["id"].startswith("cactus-101"))[0]
    assert laura["resistance"] == "cognitive" and laura["cbt_technique"] == "Evidence-Based Questioning"
    assert laura["client"]["thinking_traps"] == ["mind reading", "overgeneralization"]
    assert laura["source"]["image_backend"].startswith("embedded")
    client_turns = [t for t in laura["turns"] if t["speaker"] == "client"]
    assert all(t["image"] is not None and t["image"].size == (336, 336) for t in client_turns)
    assert "reference_face:embedded-renderer" in laura["quality"]["flags"]
    omar = sessions.filter(lambda r: r["id"].startswith("cactus-202"))[0]
    assert omar["resistance"] == "none" and omar["cbt_technique"] == "Behavior Experiment"
    profiles = load_dataset(str(result.output_dir), "profiles", split="test")
    assert profiles[0]["resistance"] == "emotional" and profiles[0]["cbt_technique"] == "Continuum Technique"
    assert profiles[0]["client"]["name"] == "Rina Cole"


def test_missing_column_lists_expected_and_found(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "distorted_thought"} for row in TRAIN_ROWS]
    release = tmp_path / "release"
    release.mkdir()
    write_csv(release / "mirror_data.csv", rows)
    with pytest.raises(ValueError) as err:
        import_release(ImportArguments(source=str(release), output=str(tmp_path / "raw"), render_faces=False))
    message = str(err.value)
    assert "missing needed column(s) ['distorted_thought']" in message
    assert "expected columns:" in message and "distorted_thought or thought" in message
    assert "found columns:" in message and "'personality'" in message and "'extra_column'" in message


def test_celeba_references_by_index_are_used_not_copied(tmp_path):
    celeba = tmp_path / "celeba"
    celeba.mkdir()
    for index in (3, 7, 12):
        Image.new("RGB", (178, 218), (index * 20, 90, 120)).save(celeba / f"{index:06d}.jpg")
    release = write_release(tmp_path / "release")
    raw = tmp_path / "raw"
    import_release(ImportArguments(source=str(release), output=str(raw), celeba_dir=str(celeba)))
    record = json.loads((raw / "sessions.jsonl").read_text().splitlines()[0])
    assert record["identity"] == {"key": "celeba-000007", "image": str(celeba / "000007.jpg")}
    assert "reference_face:celeba" in record["quality"]["flags"]
    assert not list(raw.rglob("000007.jpg"))  # used by path, never copied into the raw folder
    assert "do not publish" in json.loads((raw / "import-report.json").read_text())["reference_faces"]


def test_bad_row_raise_and_skip(tmp_path):
    rows = [dict(TRAIN_ROWS[0]), dict(TRAIN_ROWS[1], personal_info="no labelled fields here")]
    release = tmp_path / "release"
    release.mkdir()
    (release / "mirror_data.json").write_text(json.dumps({"train": rows}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"mirror_data.json row 2 .*cactus-202.*no name or age"):
        import_release(ImportArguments(source=str(release), output=str(tmp_path / "a"), render_faces=False))
    result = import_release(
        ImportArguments(source=str(release), output=str(tmp_path / "b"), render_faces=False, on_bad_row="skip")
    )
    assert result.sessions == 1 and result.skipped_rows[0]["row"] == 2


def test_output_folder_is_not_overwritten(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        import_release(ImportArguments(source=str(write_release(tmp_path / "release")), output=str(tmp_path / "raw")))


def test_json_column_orient_is_read(tmp_path):
    path = tmp_path / "mirror_data.json"
    path.write_text(json.dumps({key: [row[key] for row in TRAIN_ROWS] for key in TRAIN_ROWS[0]}))
    assert [row["idx"] for row in read_release_file(path)] == [row["idx"] for row in TRAIN_ROWS]


def test_cli_import_and_missing_column_is_one_line(tmp_path, capsys):
    import mirror_cli

    release = write_release(tmp_path / "release")
    assert (
        mirror_cli.main(["import", "--source", str(release), "--output", str(tmp_path / "raw"), "--no_render_faces"])
        == 0
    )
    assert (tmp_path / "raw" / "sessions.jsonl").is_file() and not (tmp_path / "raw" / "images").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    write_csv(
        bad / "mirror_data.csv", [{k: v for k, v in TRAIN_ROWS[0].items() if k not in ("dialogue", "proc_dialogue")}]
    )
    assert mirror_cli.main(["import", "--source", str(bad), "--output", str(tmp_path / "raw2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("mirror import: error:")
        and "missing needed column(s) ['dialogue']" in err[0]
    )


def test_hub_id_takes_the_local_file_path(tmp_path, monkeypatch):
    """The Hub is unreachable here: `hf_hub_download` (the network edge) is replaced by a copy from a local
    release folder; everything after the download is the code path local files take."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    release = write_release(tmp_path / "hub-cache")
    calls = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        if not (release / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(release / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    result = import_release(
        ImportArguments(
            source="multimodal-reframing/mirror", output=str(tmp_path / "raw"), revision="main", render_faces=False
        )
    )
    assert result.sessions == 2 and result.profiles == 1
    assert ("multimodal-reframing/mirror", "mirror_data.csv", "dataset", "main") in calls
    report = json.loads((tmp_path / "raw" / "import-report.json").read_text())
    assert report["source"] == "hf://datasets/multimodal-reframing/mirror@main" and report["license"] == "gpl-2.0"


def test_proc_dialogue_column_when_dialogue_is_missing(tmp_path):
    from dataset_builder.importer import parse_dialogue_cell

    turns = parse_screenplay(DIALOGUE_1, "Laura Saunders").turns
    as_python = repr(
        [
            {
                "speaker": "Client" if t["speaker"] == "client" else "Therapist",
                "stage_direction": t["stage_direction"],
                "statement": t["statement"],
            }
            for t in turns
        ]
    )
    parsed = parse_dialogue_cell(as_python, "Laura Saunders")
    assert [(t["speaker"], t["statement"], t["stage_direction"]) for t in parsed.turns] == [
        (t["speaker"], t["statement"], t["stage_direction"]) for t in turns
    ]
    rows = [{**{k: v for k, v in TRAIN_ROWS[0].items() if k != "dialogue"}, "proc_dialogue": as_python}]
    release = tmp_path / "release"
    release.mkdir()
    write_csv(release / "mirror_data.csv", rows)
    result = import_release(ImportArguments(source=str(release), output=str(tmp_path / "raw"), render_faces=False))
    assert result.sessions == 1
    record = json.loads((tmp_path / "raw" / "sessions.jsonl").read_text())
    assert len(record["turns"]) == len(turns)


def test_duplicate_idx_is_named(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    write_csv(release / "mirror_data.csv", [TRAIN_ROWS[0], TRAIN_ROWS[1], TRAIN_ROWS[0]])
    with pytest.raises(ValueError, match=r"row 3: duplicate idx 'cactus-101-cognitive-resistance' \(first at row 1\)"):
        import_release(ImportArguments(source=str(release), output=str(tmp_path / "raw"), render_faces=False))
