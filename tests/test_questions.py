"""Tests for lib.protocol.questions: built-in sets, user files, validation and the PSF-Med importer."""

import json

import pytest

from lib.protocol import questions as qs


def test_builtin_sets_are_valid():
    sets = qs.load_question_sets()
    assert set(sets) == {"cardiomegaly", "pleural effusion", "pneumothorax", "nodule"}
    sizes = set()
    for finding, qset in sets.items():
        assert qset.finding == finding
        assert qset.prompts == qs.BUILTIN_QUESTIONS[finding]
        assert qset.prompts[0].startswith("Is there")  # the original question comes first
        assert all(qs.is_yes_no_question(p) for p in qset.prompts), finding
        assert len(set(qset.prompts)) == len(qset.prompts)
        assert not any(" not " in f" {p.lower()} " or "n't" in p for p in qset.prompts)
        sizes.add(len(qset.prompts) - 1)
    assert sizes == {4, 5}  # paraphrase count varies between findings


def test_prompts_for():
    sets = qs.load_question_sets()
    assert qs.prompts_for("Cardiomegaly", sets) == qs.BUILTIN_QUESTIONS["cardiomegaly"]
    assert qs.prompts_for("Pleural Effusion ", sets, max_paraphrases=2) == qs.BUILTIN_QUESTIONS["pleural effusion"][:3]
    assert qs.prompts_for("nodule", sets, max_paraphrases=0) == ("Is there a lung nodule?",)
    assert len(qs.prompts_for("nodule", sets, max_paraphrases=10)) == 5
    with pytest.raises(KeyError, match="edema"):
        qs.prompts_for("edema", sets)
    with pytest.raises(ValueError):
        qs.prompts_for("nodule", sets, max_paraphrases=-1)


@pytest.mark.parametrize("text, expected", [
    ("Is there cardiomegaly?", True),
    ("  does the heart look enlarged?  ", True),
    ("WERE the lungs clear?", True),
    ("Has the line moved?", True),
    ("Is there cardiomegaly", False),           # no question mark
    ("What is the heart size?", False),         # wh-question
    ("Isn't the heart enlarged?", False),       # contraction is not in the list
    ("Island shape?", False),                   # first word must be exactly the verb
    ("", False),
    (None, False),
])
def test_is_yes_no_question(text, expected):
    assert qs.is_yes_no_question(text) is expected


def test_csv_round_trip(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(
        "finding,prompt_id,prompt\n"
        "Edema,2,Can edema be seen?\n"
        "Edema,0,Is there edema?\n"
        "Edema,1,Is there fluid in the lungs?\n"
        "mass,0,Is there a mass?\n"
    )
    sets = qs.load_question_sets(path)
    assert sets == {
        "edema": qs.QuestionSet("edema", ("Is there edema?", "Is there fluid in the lungs?", "Can edema be seen?")),
        "mass": qs.QuestionSet("mass", ("Is there a mass?",)),
    }


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        json.dumps({"finding": "edema", "question": "Is there edema?", "paraphrases": ["Can edema be seen?"]})
        + "\n\n"
        + json.dumps({"finding": "mass", "question": "Is there a mass?", "paraphrases": []}) + "\n"
    )
    sets = qs.load_question_sets(path)
    assert sets["edema"].prompts == ("Is there edema?", "Can edema be seen?")
    assert sets["mass"].prompts == ("Is there a mass?",)


@pytest.mark.parametrize("name, content, match", [
    ("a.csv", "finding,prompt\nedema,Is there edema?\n", "prompt_id"),
    ("b.csv", "finding,prompt_id,prompt\nedema,1,Is there edema?\n", "'edema'.*prompt_id 0"),
    ("c.csv", "finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,0,Can edema be seen?\n", "duplicate"),
    ("d.csv", "finding,prompt_id,prompt\nedema,zero,Is there edema?\n", "integer"),
    ("e.csv", "finding,prompt_id,prompt\nedema,0,\n", "non-empty"),
    ("f.jsonl", '{"finding": "edema", "question": "Is there edema?"}\n', "paraphrases"),
    ("g.jsonl", '{"finding": "edema", "question": "Is there edema?", "paraphrases": []}\n' * 2, "duplicate"),
    ("h.jsonl", '{"finding": "edema", "question": "Is there edema?", "paraphrases": "Can it?"}\n', "list"),
    ("i.jsonl", "not json\n", "line 1"),
    ("j.txt", "finding,prompt_id,prompt\n", "extension"),
])
def test_validation_errors_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        qs.load_question_sets(path)
    assert name in str(err.value)


def test_import_psf_med_jsonl(tmp_path):
    rows = [
        # kept; one paraphrase is a wh-question -> 1 paraphrase dropped
        {"dicom_id": "d1", "original_question": "Is there cardiomegaly?", "answer": "Yes",
         "paraphrase_list": ["Is the heart enlarged?", "What is the heart size?"], "finding": "Cardiomegaly"},
        # kept, answer with a trailing period, paraphrases as a JSON string, no finding
        {"dicom_id": "d2", "original_question": "Can a nodule be seen?", "answer": "no.",
         "paraphrase_list": '["Is there a lung nodule?"]'},
        # dropped: question is not yes/no
        {"dicom_id": "d3", "original_question": "Where is the effusion?", "answer": "yes", "paraphrase_list": []},
        # dropped: answer is not yes/no (checked before the question)
        {"dicom_id": "d4", "original_question": "Which side?", "answer": "left", "paraphrase_list": []},
        {"dicom_id": "d5", "original_question": "Is there edema?", "answer": "uncertain", "paraphrase_list": []},
    ]
    src = tmp_path / "psf.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "questions.jsonl"
    counts = qs.import_psf_med(src, out)
    assert counts == {"rows_in": 5, "kept": 2, "dropped_not_yes_no": 1, "dropped_label": 2, "paraphrases_dropped": 1}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [
        {"image_id": "d1", "finding": "cardiomegaly", "label": "yes", "question": "Is there cardiomegaly?",
         "paraphrases": ["Is the heart enlarged?"]},
        {"image_id": "d2", "finding": None, "label": "no", "question": "Can a nodule be seen?",
         "paraphrases": ["Is there a lung nodule?"]},
    ]


def test_import_psf_med_csv(tmp_path):
    src = tmp_path / "psf.csv"
    src.write_text(
        "ImageID,question,paraphrases,label,finding\n"
        "\"img1.png\",Is there a pneumothorax?,\"['Is air present outside the lung?', 'Describe the lung.']\",no,pneumothorax\n"
        "img2.png,Is the heart enlarged?,,YES,cardiomegaly\n"
        "img3.png,Is there fluid?,\"[\"\"Is fluid present?\"\"]\",maybe,pleural effusion\n"
    )
    out = tmp_path / "q.jsonl"
    counts = qs.import_psf_med(src, out)
    assert counts == {"rows_in": 3, "kept": 2, "dropped_not_yes_no": 0, "dropped_label": 1, "paraphrases_dropped": 1}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["image_id"] for w in written] == ["img1.png", "img2.png"]
    assert written[0]["paraphrases"] == ["Is air present outside the lung?"]
    assert written[1]["paraphrases"] == [] and written[1]["label"] == "yes"


def test_import_psf_med_errors(tmp_path):
    src = tmp_path / "psf.jsonl"
    src.write_text(json.dumps({"image_id": "x", "question": "Is there edema?", "paraphrases": []}) + "\n")
    with pytest.raises(ValueError, match=r"psf\.jsonl.*'label'.*answer"):
        qs.import_psf_med(src, tmp_path / "out.jsonl")
    bad = tmp_path / "psf.parquet"
    bad.write_text("")
    with pytest.raises(ValueError, match="extension"):
        qs.import_psf_med(bad, tmp_path / "out.jsonl")
