"""The default ``compress minilm --ratio 8`` checkpoint exported to ONNX, run by real clients: onnxruntime
in Python and transformers.js in Node, against the PyTorch compressed model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import embcompress
from embcompress.compress import CompressOptions, compress_checkpoint
from embcompress.onnx_export import export_onnx, onnx_session
from helpers.models import pydocs_paragraphs as paragraphs
from helpers.models import requires_minilm, requires_pydocs

pytest.importorskip("onnxruntime")

EMBED_JS = Path(__file__).parent / "helpers" / "transformers_js_embed.mjs"
#: Folder whose node_modules holds @huggingface/transformers (``ONNXRUNTIME_NODE_INSTALL=skip npm install
#: @huggingface/transformers`` there); default: npm's global root.
JS_ENV = "EMBCOMPRESS_TRANSFORMERS_JS"


def transformers_js_root() -> Path | None:
    """A folder from which ``@huggingface/transformers`` resolves, or ``None``."""
    if shutil.which("node") is None:
        return None
    candidates = [Path(os.environ[JS_ENV])] if os.environ.get(JS_ENV) else []
    npm = shutil.which("npm")
    if npm:
        proc = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60)
        candidates.append(Path(proc.stdout.strip()).parent)
    return next((c for c in candidates if (c / "node_modules/@huggingface/transformers").is_dir()), None)


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def batches(folder: Path, texts: list[str]) -> list[dict[str, torch.Tensor]]:
    """Python-tokenized batches of 16 (all three inputs), truncated at 256 tokens as the model was trained."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = []
    for start in range(0, len(texts), 16):
        enc = tokenizer(texts[start : start + 16], padding=True, truncation=True, max_length=256, return_tensors="pt")
        out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def reference_and_onnx(
    folder: Path, onnx_path: Path, feeds: list[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence embeddings (mean-pooled, normalised) of the PyTorch checkpoint and the ONNX file."""
    model = embcompress.load(folder, dtype=torch.float32).eval()
    session, ref, got = onnx_session(onnx_path), [], []
    for batch in feeds:
        with torch.no_grad(), embcompress.fast_kernels(False):
            ref.append(pooled(model(**batch).last_hidden_state, batch["attention_mask"]))
        out = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
        got.append(pooled(torch.from_numpy(out), batch["attention_mask"]))
    return torch.cat(ref), torch.cat(got)


def transformers_js(
    root: Path, folder: Path, dtype: str, feeds: list[dict[str, torch.Tensor]], tmp_path: Path
) -> torch.Tensor:
    """transformers.js' ``AutoModel`` on the same token ids, mean-pooled and normalised in Node."""
    (tmp_path / "batches.json").write_text(json.dumps([{k: v.tolist() for k, v in b.items()} for b in feeds]))
    args = ["node", str(EMBED_JS), str(root), str(folder), dtype, str(tmp_path / "batches.json")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.tensor(json.loads(proc.stdout))


@pytest.fixture(scope="module")
def minilm_8x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "minilm-8x"
    compress_checkpoint("minilm", out, CompressOptions(ratio=8.0, report=False))
    return out


@pytest.mark.slow
@requires_minilm
@requires_pydocs
def test_minilm_8x_onnx_is_exact_in_onnxruntime_and_transformers_js(minilm_8x: Path, tmp_path: Path) -> None:
    out = tmp_path / "m8"
    result = export_onnx(minilm_8x, out)
    assert result.table_max_abs_diff is not None and result.table_max_abs_diff < 1e-5  # every row, ~1200 head rows
    feeds = batches(minilm_8x, paragraphs(200))
    ref, ort = reference_and_onnx(minilm_8x, out / "onnx" / "model.onnx", feeds)
    assert torch.nn.functional.cosine_similarity(ref, ort).min().item() >= 0.99999
    root = transformers_js_root()
    if root is None:
        pytest.skip(f"node or @huggingface/transformers missing (set {JS_ENV} to a folder with it installed)")
    js = transformers_js(root, out, "fp32", feeds, tmp_path)
    assert torch.nn.functional.cosine_similarity(ref, js).min().item() >= 0.99999


@pytest.mark.slow
@requires_minilm
@requires_pydocs
def test_minilm_8x_int8_export_runs_in_transformers_js(minilm_8x: Path, tmp_path: Path) -> None:
    out = tmp_path / "m8q"
    result = export_onnx(minilm_8x, out, quantize="int8")
    assert result.file_bytes <= 18_000_000
    assert result.table_max_abs_diff is not None and result.table_max_abs_diff < 1e-5
    feeds = batches(minilm_8x, paragraphs(64))
    ref, ort = reference_and_onnx(minilm_8x, out / "onnx" / "model_quantized.onnx", feeds)
    assert torch.nn.functional.cosine_similarity(ref, ort).mean().item() >= 0.98  # int8 layers
    root = transformers_js_root()
    if root is None:
        pytest.skip(f"node or @huggingface/transformers missing (set {JS_ENV} to a folder with it installed)")
    js = transformers_js(root, out, "q8", feeds, tmp_path)  # transformers.js' name for model_quantized.onnx
    assert torch.nn.functional.cosine_similarity(ort, js).min().item() >= 0.99999
