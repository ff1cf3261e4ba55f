"""Tests for lib.protocol.questions (built-in sets, user files, validation), lib.protocol.image_questions
(per-image files, check_file) and lib.protocol.psf_med (the PSF-Med importer)."""

import json

import pytest

from lib.protocol import image_questions, psf_med
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


# a JSON line nested beyond the decoder's depth limit
DEEP = b"[" * 100000 + b"]" * 100000 + b"\n"


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
    counts = psf_med.import_psf_med(src, out)
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
    counts = psf_med.import_psf_med(src, out)
    assert counts == {"rows_in": 3, "kept": 2, "dropped_not_yes_no": 0, "dropped_label": 1, "paraphrases_dropped": 1}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["image_id"] for w in written] == ["img1.png", "img2.png"]
    assert written[0]["paraphrases"] == ["Is air present outside the lung?"]
    assert written[1]["paraphrases"] == [] and written[1]["label"] == "yes"


def test_import_psf_med_errors(tmp_path):
    src = tmp_path / "psf.jsonl"
    src.write_text(json.dumps({"image_id": "x", "question": "Is there edema?", "paraphrases": []}) + "\n")
    with pytest.raises(ValueError, match=r"psf\.jsonl.*'label'.*answer"):
        psf_med.import_psf_med(src, tmp_path / "out.jsonl")
    bad = tmp_path / "psf.parquet"
    bad.write_text("")
    with pytest.raises(ValueError, match="extension"):
        psf_med.import_psf_med(bad, tmp_path / "out.jsonl")


# --- built-in collections, kinds, negated paraphrases, file checks (issues 15 and 10) ---------

from lib.protocol import labels  # noqa: E402


def test_default_builtin_set_unchanged_and_tagged():
    sets = qs.load_question_sets()
    assert {f: s.prompts for f, s in sets.items()} == qs.BUILTIN_QUESTIONS
    for finding, qset in sets.items():
        assert qset.kinds == qs.BUILTIN_KINDS[finding] and not any(qset.negated)


def test_chexpert_builtin_set_covers_every_finding_with_every_kind():
    sets = qs.load_question_sets("builtin:chexpert")
    assert set(sets) == set(labels.FINDING_LABELS)  # 13: every CheXpert column but No Finding
    for finding, qset in sets.items():
        assert qset.kinds[0] == "original" and not any(qset.negated)
        kinds = qset.kinds[1:]
        assert len(kinds) >= 4 and set(kinds) == set(qs.ANSWER_PRESERVING_KINDS), finding
        assert all(qs.is_yes_no_question(p) for p in qset.prompts), finding
        assert len(set(qset.prompts)) == len(qset.prompts)
        assert not any(" not " in f" {p.lower()} " or "n't" in p for p in qset.prompts)
    for finding, prompts in qs.BUILTIN_QUESTIONS.items():  # the default texts come first
        assert sets[finding].prompts[:len(prompts)] == prompts
    with pytest.raises(ValueError, match=r"unknown built-in question set 'chexbert'.*builtin:chexpert"):
        qs.load_question_sets("builtin:chexbert")


def test_csv_kind_and_negated_columns(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("finding,prompt_id,prompt,kind,negated\n"
                    "edema,0,Is there edema?,,\n"
                    "edema,1,Are the lungs clear of fluid?,negation,true\n"
                    "edema,2,Can edema be seen?,syntactic,false\n")
    qset = qs.load_question_sets(path)["edema"]
    assert qset.kinds == ("original", "negation", "syntactic")
    assert qset.negated == (False, True, False)
    assert qs.prompt_specs_for("edema", {"edema": qset})[1] == \
        qs.Prompt("Are the lungs clear of fluid?", "negation", True)
    assert qs.prompts_for("edema", {"edema": qset}, 1) == ("Is there edema?", "Are the lungs clear of fluid?")
    assert image_questions.check_file(path)["negated"] == 1


def test_jsonl_paraphrase_objects_and_per_image_negated(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"finding": "edema", "question": "Is there edema?", "paraphrases": [
        "Can edema be seen?", {"text": "Are the lungs free of edema?", "kind": "negation", "negated": True}]}) + "\n")
    assert qs.load_question_sets(path)["edema"].negated == (False, False, True)
    per_image = tmp_path / "per_image.jsonl"
    per_image.write_text(json.dumps({"image_id": "d1", "label": "yes", "question": "Is there edema?",
                                     "paraphrases": [{"text": "Are the lungs clear?", "negated": True}]}) + "\n")
    rows = image_questions.load_per_image_questions(per_image)["d1"]
    assert rows[0]["prompts"] == ("Is there edema?", "Are the lungs clear?")
    assert rows[0]["negated"] == (False, True) and rows[0]["kinds"] == ("original", None)
    assert image_questions.is_per_image_file(per_image) and not image_questions.is_per_image_file(path)
    info = image_questions.check_file(per_image)
    assert info["per_image"] and info["negated"] == 1 and info["prompts"] == 2


def test_implied_answer():
    assert qs.implied_answer("yes", False) == "yes" and qs.implied_answer("yes", True) == "no"
    assert qs.implied_answer("no", True) == "yes"
    with pytest.raises(ValueError):
        qs.implied_answer("maybe", False)


def test_import_psf_med_keeps_negated_paraphrases(tmp_path):
    src = tmp_path / "psf.jsonl"
    src.write_text(json.dumps({"image_id": "d1", "question": "Is there edema?", "answer": "no",
                               "paraphrases": ["Can edema be seen?",
                                               {"text": "Are the lungs clear?", "negated": True}]}) + "\n")
    psf_med.import_psf_med(src, tmp_path / "out.jsonl")
    rows = image_questions.load_per_image_questions(tmp_path / "out.jsonl")["d1"]
    assert rows[0]["negated"] == (False, False, True)


@pytest.mark.parametrize("name, content, match", [
    ("a.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,1,Is there \xe9d\xe8me?\n",
     r"a\.csv: line 3: not UTF-8 text \(byte 0xe9\)"),
    ("b.jsonl", b'{"finding": "edema", "question": "Is there \xff?", "paraphrases": []}\n',
     r"b\.jsonl: line 1: not UTF-8"),
    ("c.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,1,Is there fluid, or edema?\n",
     r"c\.csv: line 3: 4 fields, the header has 3"),
    ("d.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,x,Can it be seen?\n",
     r"d\.csv: line 3: prompt_id must be an integer"),
    ("e.csv", b"finding,prompt_id,prompt,negated\nedema,0,Is there edema?,\nedema,1,Is it clear?,perhaps\n",
     r"e\.csv: line 3: negated must be true or false, got 'perhaps'"),
    ("f.csv", b"finding,prompt_id,prompt,negated\nedema,0,Is there edema?,true\n",
     r"f\.csv: line 2: .*original question cannot be negated"),
    ("g.csv", b"finding,prompt_id,prompt,kind\nedema,0,Is there edema?,\nedema,1,Is it seen?,synonym\n",
     r"g\.csv: line 3: kind must be one of"),
    ("h.jsonl", b'{"finding": "edema", "question": "Is there edema?", "paraphrases": [{"txt": "x"}]}\n',
     r"h\.jsonl: line 1: a paraphrase object needs a 'text'"),
    ("i.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,0,Again?\n",
     r"i\.csv: line 3: finding 'edema' has duplicate prompt_id 0"),
    ("xa.jsonl", DEEP, r"xa\.jsonl: line 1: JSON nested too deeply$"),
    ("xb.jsonl", b'{"finding": "edema", "question": "Is there edema?", "paraphrases": []}\n' + DEEP,
     r"xb\.jsonl: line 2: JSON nested too deeply$"),
    ("xc.csv", b"finding,finding,prompt_id,prompt\nedema,mass,0,Is there edema?\n",
     r"xc\.csv: line 1: column 'finding' appears more than once in the header$"),
    ("xd.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,-1,Is it there?\n",
     r"xd\.csv: line 3: prompt_id must be an integer from 0 \(the original question\) to 9999, got '-1'$"),
    ("xe.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,99999999999999999999999,Is it?\n",
     r"xe\.csv: line 3: prompt_id must be an integer .* got '99999999999999999999999'$"),
    ("xf.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nedema,+1,Is it there?\n",
     r"xf\.csv: line 3: prompt_id must be an integer .* got '\+1'$"),
    ("xg.jsonl", b'{"finding": "edema", "question": null, "paraphrases": []}\n',
     r"xg\.jsonl: line 1: 'question' must be a non-empty string, got null$"),
    ("xh.jsonl", b'{"finding": "edema", "question": 3, "paraphrases": []}\n',
     r"xh\.jsonl: line 1: 'question' must be a non-empty string, got 3$"),
    ("xi.jsonl", b'{"finding": "edema", "question": ["Is there edema?"], "paraphrases": []}\n',
     r"xi\.jsonl: line 1: 'question' must be a non-empty string, got a list$"),
    ("xj.jsonl", b'{"finding": "edema", "question": " ", "paraphrases": []}\n',
     r"xj\.jsonl: line 1: 'question' must be a non-empty string, got \" \"$"),
    # the empty prompt's own line, not the finding's first line
    ("xk.csv", b"finding,prompt_id,prompt\nedema,0,Is there edema?\nmass,0,Is there a mass?\nedema,1,  \n",
     r"xk\.csv: line 4: prompt must be a non-empty string, got \"  \"$"),
    ("xm.jsonl", b'{"finding": null, "question": "Is there edema?", "paraphrases": []}\n',
     r"xm\.jsonl: line 1: 'finding' must be a non-empty string, got null$"),
    ("xl.jsonl", b'{"image_id": "d1", "label": "yes", "question": null, "paraphrases": []}\n',
     r"xl\.jsonl: line 1: 'question' must be a non-empty string, got null$"),
])
def test_bad_question_files_give_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    reader = image_questions.load_per_image_questions if b"image_id" in content else qs.load_question_sets
    for check in (image_questions.check_file, reader):
        with pytest.raises(qs.QuestionFileError, match=match) as err:
            check(path)
        assert "\n" not in str(err.value)


def test_check_file_sources(tmp_path):
    assert image_questions.check_file(None)["findings"] == sorted(qs.BUILTIN_QUESTIONS)
    assert len(image_questions.check_file("builtin:chexpert")["findings"]) == 13
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        image_questions.check_file(tmp_path / "nowhere.csv")


# --- deep JSON, repeated columns, prompt_id range ----------------------------------------------

def test_deep_json_is_not_a_per_image_file(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(DEEP)
    assert image_questions.is_per_image_file(path) is False  # never raises; the reader says why


def test_prompt_id_range_and_unnamed_columns_accepted(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("finding,prompt_id,prompt,,\n"
                    "edema,000,Is there edema?,,\n"
                    "edema, 9999 ,Can edema be seen?,,\n")
    assert qs.load_question_sets(path)["edema"].prompts == ("Is there edema?", "Can edema be seen?")
