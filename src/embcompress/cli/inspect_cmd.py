"""``embcompress inspect``: embedding shapes, parameter share, tying and spectrum of a model."""

from __future__ import annotations

import typer
from rich.table import Table

from ..sources import LoadOptions, load_source
from ..summary import describe_model
from ._common import GgufFile, JsonOut, RichReporter, Verbose, command, finish


@command
def inspect(
    model: str = typer.Argument(..., help="Local folder, hub id, .gguf file, or alias (minilm, smollm2, gemma3)."),
    gguf_file: GgufFile = None,
    spectrum: bool = typer.Option(True, help="Compute the singular-value spectrum summary."),
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Show the embedding matrices of MODEL: shapes, share of parameters, tying, spectrum."""
    _, loaded, _ = load_source(model, LoadOptions(gguf_file=gguf_file), RichReporter(enabled=not json_out))
    info = describe_model(loaded, spectrum=spectrum)
    finish(json_out, info, _table(info))


def _table(info: dict) -> Table:
    table = Table(title=f"{info['architecture']} embeddings", show_header=False)
    table.add_column("field")
    table.add_column("value")
    if info["compressed"]:
        table.add_row("compressed", "yes (embcompress checkpoint)")
        table.add_row("parameters", f"{info['params_total']:,}")
        return table
    inp, out = info["input"], info["output"]
    table.add_row("input embedding", f"{inp['path']}  {inp['shape'][0]} x {inp['shape'][1]}  ({info['dtype']})")
    if inp["aliases"]:
        table.add_row("aliases", ", ".join(inp["aliases"]))
    table.add_row(
        "output embedding", "none" if out is None else f"{out['path']} ({'tied' if out['tied'] else 'untied'})"
    )
    table.add_row("embedding parameters", f"{info['embedding_params']:,} of {info['params_total']:,}")
    table.add_row("embedding share", f"{info['embedding_share']:.1%}")
    table.add_row("break-even rank", str(info["break_even_rank"]))
    spec = inp.get("spectrum")
    if spec:
        table.add_row("energy kept", ", ".join(f"r{r}: {e:.0%}" for r, e in spec["energy_at_rank"].items()))
        table.add_row("rank for energy", ", ".join(f"{float(e):.0%}: r{r}" for e, r in spec["rank_for_energy"].items()))
    return table
