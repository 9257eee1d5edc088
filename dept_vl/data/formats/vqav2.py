"""The official VQAv2 files: questions, annotations (optional: without them a test split, read
unanswered) and the COCO image folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dept_vl.data.bad_data import DataError, Policy, fail
from dept_vl.data.rows import (
    ImageResolver, finish, id_field, image_field, path_resolver, text_field,
)
from dept_vl.data.records import Record, VQARecord, read_row
from dept_vl.data.formats.documents import check_dir, json_list, read_json


def _question_id(value: Any, where: str) -> int | str:
    """VQAv2 question ids are integers; strings are accepted for hand-made files."""
    if value is None:
        fail(where, "missing field 'question_id'", "missing_field")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        fail(where, f"field 'question_id' must be an integer or a string, got {value!r}",
             "bad_field")
    return value


def _annotation(ann: Any, where: str, by_question: dict[Any, tuple[str, dict]]) -> None:
    if not isinstance(ann, dict):
        fail(where, f"expected a JSON object, got {type(ann).__name__}", "not_an_object")
    qid = _question_id(ann.get("question_id"), where)
    if qid in by_question:
        fail(where, f"second annotation for question_id {qid} (first at {by_question[qid][0]})",
             "duplicate_id")
    by_question[qid] = (where, ann)


def _index_annotations(
    doc: Any, path: str, policy: Policy
) -> dict[Any, tuple[str, dict]]:
    """question_id -> (where the annotation is, the annotation); bad entries obey the policy."""
    by_question: dict[Any, tuple[str, dict]] = {}
    for k, ann in enumerate(json_list(doc, "annotations", path)):
        where = f"{path}:annotations[{k}]"
        policy.row(where, _annotation, ann, where, by_question)
    return by_question


def _vqav2_answers(ann: dict, qid: Any, where: str, at: str) -> list[Any]:
    """All ten human answers, duplicates kept: VQA accuracy counts agreeing annotators."""
    answers = ann.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        fail(where, f"the annotation of question_id {qid} ({at}): "
             "field 'answers' must be a list of {'answer': ...} objects", "bad_field")
    return [a.get("answer") for a in answers]


def _check_same_image(question_image: int, ann: dict, qid: Any, where: str, at: str) -> None:
    """An annotation about another image would train the answer on the wrong picture."""
    ann_image = ann.get("image_id")
    if ann_image is None:
        return  # nothing to compare with (hand-made files); the question's image is used
    if type(ann_image) is not int or ann_image != question_image:
        fail(where, f"question_id {qid} is about image_id {question_image}, but its annotation "
             f"({at}) has image_id {ann_image!r}", "id_mismatch")


def _vqav2_row(
    question: Any, where: str, annotations: dict[Any, tuple[str, dict]] | None, subtype: str,
    files: tuple[str, str | None],
) -> dict[str, Any]:
    """Join one question with its annotation into a plain row for `read_row`; without
    annotations (a test split) the row has no answers."""
    if not isinstance(question, dict):
        fail(where, f"expected a JSON object, got {type(question).__name__}", "not_an_object")
    qid = _question_id(question.get("question_id"), where)
    image_id = question.get("image_id")
    if image_id is None:
        fail(where, "missing field 'image_id'", "missing_field")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        fail(where, f"field 'image_id' must be an integer, got {image_id!r}", "bad_field")
    row = {"id": qid, "image": f"COCO_{subtype}_{image_id:012d}.jpg",
           "question": question.get("question")}
    if annotations is None:
        return row
    if qid not in annotations:
        fail(where, f"question_id {qid} has no annotation in {files[1]} (questions: {files[0]})",
             "missing_annotation")
    at, ann = annotations[qid]
    _check_same_image(image_id, ann, qid, where, at)
    return {**row, "answers": _vqav2_answers(ann, qid, where, at),
            "question_type": ann.get("answer_type", ann.get("question_type"))}


def _vqav2_record(
    question: Any, where: str, annotations: dict[Any, tuple[str, dict]] | None, subtype: str,
    files: tuple[str, str | None], resolve: ImageResolver,
) -> Record:
    row = _vqav2_row(question, where, annotations, subtype, files)
    if annotations is not None:
        return read_row(row, "vqa", where, str(row["id"]), resolve)
    ident = id_field(row, where, str(row["id"]))
    question_text = text_field(row, "question", where)
    image = image_field(row, where, resolve)
    return VQARecord(ident, image, question_text, (), source=where, unanswered=True)


def load_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_dir: str | os.PathLike,
    check_images: bool = True,
    *,
    skipped: list[dict[str, str]] | None = None,
) -> list[VQARecord]:
    """Official VQAv2 json pair; images are `image_dir/COCO_<subtype>_<image_id:012d>.jpg`.

    Each question is joined with the annotation of its question_id, which must be about the
    same image_id (a mismatch is an error, never a silent join). `annotations_file=None` reads
    a question file alone (test-dev / test-std come without annotations): every record is
    `unanswered`, to be predicted (`python -m dept_vl.evaluate --submission`), not scored.
    """
    qfile = os.fspath(questions_file)
    afile = None if annotations_file is None else os.fspath(annotations_file)
    qdoc = read_json(qfile)
    questions = json_list(qdoc, "questions", qfile)
    subtype = qdoc.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise DataError(f"{qfile}: missing 'data_subtype' (e.g. 'train2014'; it names the images)")
    policy = Policy(skipped)
    annotations = None if afile is None else _index_annotations(read_json(afile), afile, policy)
    if check_images:
        check_dir(image_dir, "image_dir", qfile)
    resolve = path_resolver(Path(image_dir).expanduser().absolute(), check_images)
    records = []
    for k, question in enumerate(questions):
        where = f"{qfile}:questions[{k}]"
        records.append(policy.row(where, _vqav2_record, question, where, annotations, subtype,
                                  (qfile, afile), resolve))
    return finish(records, qfile, policy)  # type: ignore[return-value]
