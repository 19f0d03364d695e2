"""Report numbers cross-checked against independent computations on tiny models."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import embcompress
from embcompress.quant import fake_quantize_rows
from embcompress.report import EvalOptions, ReportOptions, build_report, prepare_evaluation
from embcompress.report.behaviour import compare, neighbour_overlap
from embcompress.report.buckets import BUCKETS, frequency_buckets
from embcompress.report.builder import quantized_copy
from embcompress.report.speed import measure_speed
from embcompress.sizes import quantized_nbytes
from embcompress.sources import ModelSource, load_model, load_tokenizer
from helpers.report import tiny_folder, tiny_student, write_text

OPTIONS = ReportOptions(eval=EvalOptions(max_tokens=256, max_docs=16, seq_len=16, batch_size=4), speed_repeats=1)


def _load(folder: Path) -> tuple[torch.nn.Module, object]:
    source = ModelSource(str(folder), "local", folder)
    return load_model(source), load_tokenizer(source)


@pytest.fixture(scope="module")
def causal(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp_path = tmp_path_factory.mktemp("causal")
    teacher_dir = tiny_folder(tmp_path, "llama-tied")
    student_dir = tiny_student(tmp_path, teacher_dir, rank=4)
    teacher, tok = _load(teacher_dir)
    student = embcompress.load(student_dir)
    text = write_text(tmp_path / "eval.txt")
    report = build_report(student, teacher, tok, text, OPTIONS, student_dir=student_dir, teacher_name="tiny")
    return {"teacher": teacher, "student": student, "tok": tok, "text": text, "report": report, "dir": student_dir}


def test_frequency_buckets_follow_occurrence_coverage() -> None:
    counts = torch.tensor([50.0, 30.0, 10.0, 5.0, 5.0, 0.0])
    buckets = frequency_buckets(counts)
    # token 0 starts at 0% (frequent); 1 starts at 50% (medium); 2 at 80% (medium); 3 at 90% (rare); 5 unseen
    assert [BUCKETS[i] for i in buckets] == ["frequent", "medium", "medium", "rare", "rare", "never"]


def test_bytes_match_files_and_tensors(causal: dict) -> None:
    size = causal["report"]["size"]
    folder: Path = causal["dir"]
    on_disk = sum(os.path.getsize(p) for p in folder.iterdir() if p.is_file())
    assert size["disk"]["student"]["total_bytes"] == on_disk
    assert size["disk"]["student"]["weights_bytes"] == os.path.getsize(folder / "model.safetensors")
    inp, out = size["modules"]
    emb = causal["student"].get_input_embeddings()
    assert inp["bytes_after"] == (emb.codes.numel() + emb.basis.numel()) * 4
    assert inp["bytes_before"] == 96 * 16 * 4 and out["tied"] and out["bytes_after"] == 0
    assert size["model"]["student"]["params"] == sum(p.numel() for p in causal["student"].parameters())


def test_perplexity_and_kl_match_direct_computation(causal: dict) -> None:
    beh = causal["report"]["behaviour"]
    ids = torch.cat([b["input_ids"] for b in _eval_batches(causal)])
    with torch.no_grad():
        loss_t = causal["teacher"](input_ids=ids, labels=ids).loss
        loss_s = causal["student"](input_ids=ids, labels=ids).loss
        logp_t = F.log_softmax(causal["teacher"](input_ids=ids).logits[:, :-1], -1)
        logp_s = F.log_softmax(causal["student"](input_ids=ids).logits[:, :-1], -1)
    assert beh["perplexity_teacher"] == pytest.approx(math.exp(loss_t), rel=1e-4)
    assert beh["perplexity_student"] == pytest.approx(math.exp(loss_s), rel=1e-4)
    assert beh["perplexity_ratio"] == pytest.approx(math.exp(loss_s - loss_t), rel=1e-4)
    kl = F.kl_div(logp_s, logp_t, log_target=True, reduction="none").sum(-1).mean()
    assert beh["kl"] == pytest.approx(float(kl), rel=1e-4)
    top1 = (logp_s.argmax(-1) == logp_t.argmax(-1)).float().mean()
    assert beh["top1_agreement"] == pytest.approx(float(top1))


def _eval_batches(causal: dict) -> list[dict]:
    evaluation = prepare_evaluation(causal["teacher"], causal["tok"], causal["text"], OPTIONS)
    return evaluation.teacher.eval_set.batches


def test_int8_reference_matches_fake_quantization(causal: dict) -> None:
    report = causal["report"]
    int8 = next(r for r in report["references"] if r["name"] == "int8")
    weight = causal["teacher"].get_input_embeddings().weight.detach()
    expected = torch.linalg.norm(weight - fake_quantize_rows(weight, 8)) / torch.linalg.norm(weight)
    assert int8["fidelity"]["input"]["relative_error"] == pytest.approx(float(expected), rel=1e-5)
    assert int8["embedding_bytes"] == quantized_nbytes(96, 16, 8)
    assert int8["behaviour"]["kl"] < report["behaviour"]["kl"]
    names = ["original", "student", "int8", "q8_0", "q4_0", "nf4", "int4"]
    assert [r["name"] for r in report["glance"]["rows"]] == names
    refs = {r["name"]: r for r in report["references"]}
    # 16 columns: one zero-padded ggml block of 32 per row (18 bytes for Q4_0, 34 for Q8_0), one NF4 block of 64
    assert refs["q4_0"]["embedding_bytes"] == 96 * 18 and refs["q8_0"]["embedding_bytes"] == 96 * 34
    assert refs["nf4"]["embedding_bytes"] == 96 * (32 + 2)
    assert refs["int4"]["bits_per_weight"] == pytest.approx(8 * quantized_nbytes(96, 16, 4) / (96 * 16))


def test_student_fidelity_matches_dense_product(causal: dict) -> None:
    fid = causal["report"]["fidelity"]["input"]
    weight = causal["teacher"].get_input_embeddings().weight.detach()
    dense = causal["student"].get_input_embeddings().dense().detach()
    assert fid["relative_error"] == pytest.approx(float(torch.linalg.norm(weight - dense) / torch.linalg.norm(weight)))
    cos = F.cosine_similarity(weight, dense, dim=1)
    assert fid["row_cosine_mean"] == pytest.approx(float(cos.mean()), rel=1e-5)
    assert fid["by_bucket"]["never"]["rows"] > 0 and causal["report"]["fidelity"]["output"] == {"tied_to_input": True}


def test_teacher_against_itself_is_perfect(tmp_path: Path) -> None:
    teacher, tok = _load(tiny_folder(tmp_path, "llama-untied"))
    evaluation = prepare_evaluation(teacher, tok, write_text(tmp_path / "t.txt"), OPTIONS)
    beh = compare(teacher, evaluation.teacher, evaluation.buckets)
    assert beh["perplexity_ratio"] == pytest.approx(1.0) and beh["kl"] == pytest.approx(0.0, abs=1e-6)
    assert beh["top1_agreement"] == 1.0 and beh["top5_agreement"] == 1.0


def test_masked_lm_accuracy_matches_manual(tmp_path: Path) -> None:
    teacher, tok = _load(tiny_folder(tmp_path, "bert-mlm"))
    evaluation = prepare_evaluation(teacher, tok, write_text(tmp_path / "t.txt"), OPTIONS)
    int4 = quantized_copy(teacher, "int4")
    beh = compare(int4, evaluation.teacher, evaluation.buckets)
    hits_t = hits_s = agree = n = 0
    for batch in evaluation.teacher.eval_set.batches:
        sel = batch["labels"] != -100
        with torch.no_grad():
            pred_t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            pred_s = int4(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
        hits_t += int((pred_t[sel] == batch["labels"][sel]).sum())
        hits_s += int((pred_s[sel] == batch["labels"][sel]).sum())
        agree += int((pred_t[sel] == pred_s[sel]).sum())
        n += int(sel.sum())
    assert beh["tokens"] == n > 0
    assert beh["accuracy_teacher"] == pytest.approx(hits_t / n) and beh["accuracy_student"] == pytest.approx(hits_s / n)
    assert beh["agreement"] == pytest.approx(agree / n)


def test_encoder_metrics_match_manual(tmp_path: Path) -> None:
    teacher_dir = tiny_folder(tmp_path, "bert-encoder")
    teacher, tok = _load(teacher_dir)
    student = embcompress.load(tiny_student(tmp_path, teacher_dir, rank=3))
    evaluation = prepare_evaluation(teacher, tok, write_text(tmp_path / "t.txt"), OPTIONS)
    beh = compare(student, evaluation.teacher, evaluation.buckets, tok.all_special_ids)
    pooled = {"t": [], "s": []}
    for batch in evaluation.teacher.eval_set.batches:
        mask = batch["attention_mask"][..., None].float()
        for key, model in (("t", teacher), ("s", student)):
            with torch.no_grad():
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled[key].append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    p_t, p_s = torch.cat(pooled["t"]), torch.cat(pooled["s"])
    assert beh["documents"] == 16
    assert beh["pooled_cosine"] == pytest.approx(float((p_t * p_s).sum(-1).mean()), rel=1e-5)
    assert beh["neighbour_overlap"] == pytest.approx(neighbour_overlap(p_t, p_s, 10))
    assert neighbour_overlap(p_t, p_t, 10) == 1.0


def test_neighbour_overlap_counts_shared_neighbours() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    swapped = ref[:, [1, 0]]  # same geometry, rows relabelled: neighbours of 0 become {1}, unchanged
    assert neighbour_overlap(ref, swapped, 1) == 1.0
    other = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert neighbour_overlap(ref, other, 1) == 0.0


def test_speed_measures_both_models_and_restores_threads(causal: dict) -> None:
    batch = _eval_batches(causal)[0]
    before = torch.get_num_threads()
    speed = measure_speed(causal["teacher"], causal["student"], batch, repeats=2, threads=1)
    assert torch.get_num_threads() == before
    assert speed["threads"] == 1 and speed["batch_shape"] == list(batch["input_ids"].shape)
    for part in ("forward", "embedding_lookup", "lm_head"):
        pair = speed[part]
        assert pair["teacher_ms"] > 0 and pair["student_ms"] > 0
        assert pair["ratio"] == pytest.approx(pair["student_ms"] / pair["teacher_ms"])
