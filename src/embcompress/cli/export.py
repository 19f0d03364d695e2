"""``embcompress export``: a vanilla dense checkpoint (``--dense``) or an ONNX model whose embedding
stays compressed (``--onnx``), for runtimes that cannot import embcompress."""

from __future__ import annotations

from pathlib import Path

import typer

from ..checkpoint import check_outside_input
from ..errors import EmbcompressError
from ..export import write_dense
from ..onnx_export import export_onnx
from ..onnx_quantize import check_quantize
from ._common import JsonOut, Overwrite, RichReporter, Verbose, command, finish


@command
def export(
    checkpoint: Path = typer.Argument(..., help="A compressed checkpoint folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the exported model."),
    dense: bool = typer.Option(False, "--dense", help="Multiply the factors out into dense matrices."),
    onnx: bool = typer.Option(
        False, "--onnx", help="Write onnx/model.onnx with the embedding kept compressed (needs embcompress[onnx])."
    ),
    quantize: str | None = typer.Option(
        None, "--quantize", help="With --onnx: int8 writes onnx/model_quantized.onnx, every other weight int8."
    ),
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Export a compressed checkpoint; --dense writes plain transformers weights, --onnx an ONNX model."""
    if dense == onnx:
        raise EmbcompressError("choose an export format: --dense or --onnx (one of them)")
    if quantize is not None and not onnx:
        raise EmbcompressError(f"--quantize {quantize} needs --onnx (the dense export writes float weights)")
    check_quantize(quantize)
    check_outside_input(output, checkpoint)
    if onnx:
        with RichReporter(enabled=not json_out).stage(f"exporting {checkpoint} -> {output} (ONNX)"):
            result = export_onnx(checkpoint, output, overwrite, quantize=quantize)
        diff = f"max |diff| vs PyTorch {result.max_abs_diff:.2e}"
        written = f"wrote ONNX model [bold]{result.path}[/] ({result.file_bytes:,} bytes, {diff})"
        finish(json_out, {"output": str(output), "format": "onnx", **result.to_dict()}, written)
        return
    with RichReporter(enabled=not json_out).stage(f"exporting {checkpoint} -> {output}"):
        model, diff = write_dense(checkpoint, output, overwrite)
    params = sum(p.numel() for p in model.parameters())
    written = f"wrote dense checkpoint [bold]{output}[/] ({params:,} parameters, max |diff| vs compressed {diff:.2e})"
    finish(json_out, {"output": str(output), "format": "dense", "params": params, "max_abs_diff": diff}, written)
