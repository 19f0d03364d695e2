"""Nothing lost, nothing silently wrong (issue #21): one test per numbered case, through the real CLI
(typer's CliRunner or a subprocess) on real safetensors files of tiny models. Each asserts the exit
code, one ``error:`` line naming the value and what to do, that no input changed (hashes before and
after) and that no output, staging copy or lock is left behind. docs/guarantees.md states the rules."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import embcompress
from embcompress.errors import CheckpointError
from embcompress.hf_integration import LOAD_GUARD_FILE
from embcompress.sources import resolve_source
from helpers.guarantees import (
    assert_nothing_written,
    cli_error,
    invoke,
    leftovers,
    run_cli_batch,
    tree_hashes,
)
from helpers.models import requires_minilm
from helpers.report import tiny_folder, tiny_student, write_text

WEIGHTS = "model.safetensors"
CODES = "model.embed_tokens.codes"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama teacher (with tokenizer), its rank-4 student, and text (never modified by the tests)."""
    root = tmp_path_factory.mktemp("guarantees")
    teacher = tiny_folder(root, "llama-tied")
    return {"teacher": teacher, "student": tiny_student(root, teacher), "text": write_text(root / "text.txt")}


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit_weights(folder: Path, drop: str | None = None, **replace: torch.Tensor) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    if drop is not None:
        del tensors[drop]
    tensors.update(replace)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


def _edit_config(folder: Path, edit: object) -> None:
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)  # type: ignore[operator]
    (folder / "config.json").write_text(json.dumps(raw))


def _garbage_weights(folder: Path) -> None:
    """Weights no loader can read: an error about anything else proves the check ran before loading them."""
    (folder / WEIGHTS).write_bytes(b"\x07" * 64)


# -- 1. an alias or a hub cache folder as the output -------------------------------------------------


@requires_minilm
@pytest.mark.parametrize("command", ["factorize", "compress"])
@pytest.mark.parametrize("where", ["the folder", "inside it"])
def test_case01_output_inside_a_packaged_model_is_refused(command: str, where: str) -> None:
    folder = resolve_source("minilm").path
    out = folder if where == "the folder" else folder / "minilm-r32"
    before = tree_hashes(folder)
    budget = ["--rank", "32"] if command == "factorize" else ["--ratio", "8"]
    result = invoke(command, "minilm", *budget, "-o", out, "--overwrite")
    cli_error(result, f"output '{out}' overlaps the input '{folder}'", "choose an output folder outside the input")
    assert tree_hashes(folder) == before
    assert leftovers(folder, folder.parent) == []
    assert where == "the folder" or not out.exists()


def _hub_cache(root: Path, source: Path) -> tuple[Path, Path]:
    """A Hugging Face hub cache holding ``source`` as ``tiny/model`` (snapshot files link to blobs)."""
    repo = root / "models--tiny--model"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for i, file in enumerate(sorted(source.iterdir())):
        shutil.copy2(file, repo / "blobs" / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snapshot / file.name)
    return repo, snapshot


def test_case01_output_inside_the_hub_cache_of_the_input_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    repo, snapshot = _hub_cache(tmp_path / "hub", models["teacher"])
    outs = [snapshot, repo / "blobs" / "out", repo]
    before = tree_hashes(repo)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    commands = [["factorize", "tiny/model", "--rank", "4", "-o", out, "--overwrite"] for out in outs]
    for out, result in zip(outs, run_cli_batch(commands, env), strict=True):
        cli_error(result, f"output '{out}' overlaps the input", "choose an output folder outside the input")
        assert leftovers(out.parent) == []
    assert tree_hashes(repo) == before and not (repo / "blobs" / "out").exists()


# -- 2. distill's teacher and student are inputs --------------------------------------------------------


@pytest.mark.parametrize("target", ["teacher", "student"])
def test_case02_distill_output_onto_teacher_or_student_is_refused(
    models: dict[str, Path], tmp_path: Path, target: str
) -> None:
    teacher, student = _copy(models["teacher"], tmp_path / "t"), _copy(models["student"], tmp_path / "s")
    out = teacher if target == "teacher" else student
    before = tree_hashes(teacher, student)
    result = invoke("distill", student, "-t", teacher, "-o", out, "--overwrite", "--steps", "1")
    cli_error(result, f"output '{out}' overlaps the input '{out}'", "choose an output folder outside the input")
    assert tree_hashes(teacher, student) == before
    assert leftovers(tmp_path) == [] and not (tmp_path / f"{out.name}.distill").exists()


# -- 3. --html targets are outputs like any other ------------------------------------------------------


def test_case03_html_onto_the_checkpoint_weights_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    student = _copy(models["student"], tmp_path / "s")
    target = student / WEIGHTS
    before = tree_hashes(student, models["teacher"], models["text"])
    args = ("report", student, "-t", models["teacher"], "--data", models["text"], "--html", target)
    cli_error(invoke(*args), f"--html '{target}' already exists; pass --overwrite to replace it")
    line = cli_error(invoke(*args, "--overwrite"), f"--html '{target}' overlaps the input '{student}'")
    assert line.endswith("choose a file outside the input")
    assert tree_hashes(student, models["teacher"], models["text"]) == before
    assert leftovers(student, tmp_path) == []


def test_case03_existing_html_needs_overwrite_and_is_then_replaced_whole(
    models: dict[str, Path], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text("mine")
    before = tree_hashes(models["student"], models["teacher"], models["text"])
    args = ("report", models["student"], "-t", models["teacher"], "--data", models["text"], "--html", page)
    cli_error(invoke(*args), f"--html '{page}' already exists; pass --overwrite to replace it")
    assert page.read_text() == "mine"
    result = invoke(*args, "--overwrite", "--no-speed")
    assert result.exit_code == 0, result.stderr
    assert page.read_text().lstrip().lower().startswith("<!doctype html")
    assert tree_hashes(models["student"], models["teacher"], models["text"]) == before
    assert leftovers(tmp_path) == []


# -- 4. two writers of one output ---------------------------------------------------------------------


def test_case04_two_concurrent_writers_never_both_succeed(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "same"
    before = tree_hashes(models["teacher"])
    cmd = [sys.executable, "-m", "embcompress", "factorize", str(models["teacher"]), "--rank", "4", "-o", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2], results
    code, stderr = next(r for r in results if r[0] == 2)
    line = cli_error(subprocess.CompletedProcess(cmd, code, "", stderr))
    assert any(
        needle in line
        for needle in (
            "is being written by another embcompress run",
            "already exists",
            "was created by another process",
        )
    ), line
    assert embcompress.load(out) is not None  # the winner's checkpoint, whole
    assert tree_hashes(models["teacher"]) == before and leftovers(tmp_path) == []


# -- 5. a factor tensor missing from the weights --------------------------------------------------------


def test_case05_missing_factor_is_refused_by_from_pretrained_and_inspect(
    models: dict[str, Path], tmp_path: Path
) -> None:
    student = _copy(models["student"], tmp_path / "s")
    _edit_weights(student, drop=CODES)
    before = tree_hashes(student)
    with pytest.raises(CheckpointError, match=f"is missing factor tensor\\(s\\): {CODES}; .*re-create"):
        transformers.AutoModelForCausalLM.from_pretrained(str(student))
    cli_error(invoke("inspect", student), f"missing factor tensor\\(s\\): {CODES}", "re-create the checkpoint")
    assert tree_hashes(student) == before and leftovers(tmp_path) == []


# -- 6. strict loading: every weight, finite factors ------------------------------------------------------


def test_case06_load_refuses_a_missing_layer_weight(models: dict[str, Path], tmp_path: Path) -> None:
    student = _copy(models["student"], tmp_path / "s")
    missing = "model.layers.0.self_attn.q_proj.weight"
    _edit_weights(student, drop=missing)
    before = tree_hashes(student)
    with pytest.raises(CheckpointError, match=f"lacks weight\\(s\\) of the model: {missing}; .*initialised at random"):
        embcompress.load(student)
    cli_error(
        invoke("report", student, "-t", models["teacher"], "--data", models["text"]), f"lacks weight\\(s\\).*{missing}"
    )
    assert tree_hashes(student) == before


def test_case06_nan_factors_are_refused_by_load_report_and_inspect(models: dict[str, Path], tmp_path: Path) -> None:
    student = _copy(models["student"], tmp_path / "s")
    codes = load_file(str(student / WEIGHTS))[CODES]
    _edit_weights(student, **{CODES: torch.full_like(codes, float("nan"))})
    before = tree_hashes(student, models["teacher"], models["text"])
    with pytest.raises(CheckpointError, match=f"factor tensor {CODES} holds NaN or infinite values"):
        embcompress.load(student)
    page = tmp_path / "r.html"
    result = invoke("report", student, "-t", models["teacher"], "--data", models["text"], "--html", page)
    cli_error(result, f"{CODES} holds NaN or infinite values", "re-create it")
    cli_error(invoke("inspect", student), "holds NaN or infinite values")
    assert tree_hashes(student, models["teacher"], models["text"]) == before
    assert not page.exists() and leftovers(tmp_path) == []


# -- 7. plain transformers without the import -----------------------------------------------------------

PLAIN_LOAD = """
import sys, transformers
for ignore in (False, True):
    try:
        transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], ignore_mismatched_sizes=ignore)
        print("loaded")
    except Exception as exc:
        print(type(exc).__name__, exc)
assert not any(name.startswith("embcompress") for name in sys.modules)
"""


def test_case07_plain_loading_fails_loudly_even_with_ignore_mismatched_sizes(models: dict[str, Path]) -> None:
    before = tree_hashes(models["student"])
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(models["student"])], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and "loaded" not in lines, lines  # without and with ignore_mismatched_sizes=True
    for line in lines:
        assert line.startswith("FileNotFoundError") and LOAD_GUARD_FILE in line, line
    assert "pip-install-embcompress-then-import-embcompress" in LOAD_GUARD_FILE
    assert tree_hashes(models["student"]) == before
    # after the import the same call loads the real weights
    model = transformers.AutoModelForCausalLM.from_pretrained(str(models["student"]), ignore_mismatched_sizes=True)
    assert torch.equal(model.model.embed_tokens.codes, load_file(str(models["student"] / WEIGHTS))[CODES])


# -- 8. a full disk ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 KiB tmpfs (needs root and mount; skipped elsewhere, where the RLIMIT test still runs)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _write_commands(models: dict[str, Path], out: Path) -> dict[str, list[object]]:
    return {
        "factorize": ["factorize", models["teacher"], "--rank", "4", "-o", out],
        "compress": ["compress", models["teacher"], "--ratio", "4", "--ood-data", models["text"], "-o", out],
        "export --dense": ["export", models["student"], "--dense", "-o", out],
    }


@pytest.mark.parametrize("command", ["factorize", "compress", "export --dense"])
def test_case08_full_disk_is_one_line_and_leaves_nothing(
    models: dict[str, Path], small_disk: Path, command: str
) -> None:
    out = small_disk / "out"
    before = tree_hashes(models["teacher"], models["student"])
    result = invoke(*_write_commands(models, out)[command])
    cli_error(result, f"cannot write output '{out}': .*No space left on device", "nothing was written")
    assert_nothing_written([out], before, [models["teacher"], models["student"]])
    assert list(small_disk.iterdir()) == []


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing


def test_case08_a_failing_write_is_one_line_and_leaves_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    """Files may not grow past 8 KiB in the subprocess (RLIMIT_FSIZE): writes fail with EFBIG, no root needed."""
    outs = {name: tmp_path / name.replace(" --", "-") for name in ("factorize", "compress", "export --dense")}
    before = tree_hashes(models["teacher"], models["student"])
    commands = [_write_commands(models, out)[name] for name, out in outs.items()]
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    for out, result in zip(outs.values(), run_cli_batch(commands, env, preexec_fn=_limit_file_size), strict=True):
        cli_error(result, f"cannot write output '{out}': .*File too large", "nothing was written")
    assert_nothing_written(outs.values(), before, [models["teacher"], models["student"]])


# -- 9. crafted quantization_config -----------------------------------------------------------------------

CRAFTED = {
    "rank": (
        lambda raw: raw["quantization_config"]["modules"][0].update(rank="abc"),
        "'rank' is \"abc\"; allowed: an integer",
    ),
    "modules": (
        lambda raw: raw["quantization_config"].update(modules=None),
        "'modules' is null; allowed: a non-empty list",
    ),
    "section": (lambda raw: raw.update(quantization_config="abc"), "quantization_config in .* is a str, not an object"),
    "role": (
        lambda raw: raw["quantization_config"]["modules"][0].update(role="embedding"),
        "'role' is \"embedding\"; allowed: 'input' or 'output'",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_case09_crafted_quantization_config_is_one_line_everywhere(
    models: dict[str, Path], tmp_path: Path, case: str
) -> None:
    edit, needle = CRAFTED[case]
    student = _copy(models["student"], tmp_path / "s")
    _edit_config(student, edit)
    before = tree_hashes(student, models["teacher"], models["text"])
    cli_error(invoke("inspect", student), needle, "re-create the checkpoint")
    cli_error(invoke("report", student, "-t", models["teacher"], "--data", models["text"]), needle)
    with pytest.raises(CheckpointError, match=needle) as caught:
        embcompress.load(student)
    assert len(str(caught.value).splitlines()) == 1
    if case != "section":  # a string section is refused by transformers itself before any quantizer runs
        with pytest.raises(CheckpointError, match=needle):
            transformers.AutoModelForCausalLM.from_pretrained(str(student))
    assert tree_hashes(student, models["teacher"], models["text"]) == before


# -- 10. inspect on a wrong factor shape ------------------------------------------------------------------


def test_case10_inspect_names_the_misshapen_factor(models: dict[str, Path], tmp_path: Path) -> None:
    student = _copy(models["student"], tmp_path / "s")
    _edit_weights(student, **{CODES: torch.ones(96, 3)})
    before = tree_hashes(student)
    line = cli_error(
        invoke("inspect", student),
        f"factor tensor\\(s\\) of the wrong shape: {CODES} \\[96, 3\\] \\(config says \\[96, 4\\]\\)",
        "re-create the checkpoint",
    )
    assert "above" not in line
    assert tree_hashes(student) == before


# -- 11. validation before the model is loaded -----------------------------------------------------------


@pytest.fixture
def unloadable_teacher(models: dict[str, Path], tmp_path: Path) -> Path:
    """The teacher with its config and tokenizer but weights no loader can read."""
    teacher = _copy(models["teacher"], tmp_path / "teacher")
    _garbage_weights(teacher)
    return teacher


@pytest.fixture
def bad_folder(models: dict[str, Path], tmp_path: Path) -> Path:
    """Good text first, a Latin-1 file last (sorted order): found only by reading every file."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(models["text"], folder / "a.txt")
    (folder / "zz-latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"))
    return folder


def test_case11_one_paragraph_of_data_fails_before_loading(unloadable_teacher: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("Just one paragraph about the tiny grammar.\n")
    out = tmp_path / "out"
    before = tree_hashes(unloadable_teacher, one)
    result = invoke("compress", unloadable_teacher, "--data", one, "-o", out)
    cli_error(result, f"held-out split .* of --data '{one}' is empty", "add documents .* or pass --eval-data")
    assert_nothing_written([out], before, [unloadable_teacher, one])


def test_case11_too_little_text_to_distil_fails_before_loading(
    models: dict[str, Path], unloadable_teacher: Path, tmp_path: Path
) -> None:
    few = write_text(tmp_path / "few.txt", docs=30, words=3)
    student = _copy(models["student"], tmp_path / "s")
    _garbage_weights(student)
    out = tmp_path / "out"
    before = tree_hashes(unloadable_teacher, student, few)
    result = invoke("compress", unloadable_teacher, "--ratio", "2", "--domain", "--data", few, "-o", out)
    cli_error(result, f"--data '{few}' is too small to distil on", "windows of .* tokens", "pass --no-distill")
    result = invoke("distill", student, "-t", unloadable_teacher, "--data", few, "-o", out)
    cli_error(result, f"--data '{few}' is too small to distil on", "lower --batch-size / --seq-len")
    assert_nothing_written([out], before, [unloadable_teacher, student, few])


@pytest.mark.parametrize("command", ["compress", "factorize", "distill", "report"])
def test_case11_a_non_utf8_file_late_in_a_folder_fails_before_loading(
    models: dict[str, Path], unloadable_teacher: Path, bad_folder: Path, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "out"
    student = _copy(models["student"], tmp_path / "s")
    _garbage_weights(student)
    args = {
        "compress": ["compress", unloadable_teacher, "--data", bad_folder, "-o", out],
        "factorize": [
            "factorize",
            unloadable_teacher,
            "-m",
            "weighted-svd",
            "-r",
            "4",
            "--freq-data",
            bad_folder,
            "-o",
            out,
        ],
        "distill": ["distill", student, "-t", unloadable_teacher, "--data", bad_folder, "-o", out],
        "report": ["report", student, "-t", unloadable_teacher, "--data", bad_folder, "--html", out],
    }[command]
    before = tree_hashes(unloadable_teacher, student, bad_folder)
    cli_error(invoke(*args), f"data file '{bad_folder / 'zz-latin1.txt'}' is not UTF-8 text", "convert it")
    assert_nothing_written([out], before, [unloadable_teacher, student, bad_folder])


@pytest.mark.parametrize("mode", [[], ["--domain"]])
def test_case11_an_impossible_ratio_fails_before_loading(
    unloadable_teacher: Path, tmp_path: Path, mode: list[str]
) -> None:
    out = tmp_path / "out"
    before = tree_hashes(unloadable_teacher)
    result = invoke("compress", unloadable_teacher, "--ratio", "10000", *mode, "--no-distill", "-o", out)
    cli_error(
        result, "--ratio 10000 leaves 0 bytes for a 96x16 embedding, below its smallest code", "use --ratio .* or lower"
    )
    assert_nothing_written([out], before, [unloadable_teacher])


# -- 12. a writer killed with SIGKILL --------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from embcompress.outputs import atomic_output
with atomic_output(Path(sys.argv[1])) as tmp:
    (tmp / "partial.bin").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A real writer of ``tmp_path/out`` stopped in the middle of its write (holding the lock)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    yield proc
    proc.kill()
    proc.wait()


def _staging(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]


def test_case12_a_live_writers_staging_copy_is_never_touched(
    models: dict[str, Path], tmp_path: Path, writer: subprocess.Popen
) -> None:
    (staging,) = _staging(tmp_path)
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        result = invoke("factorize", models["teacher"], "--rank", "4", "-o", out, *extra)
        cli_error(result, f"output '{out}' is being written by another embcompress run \\(process {writer.pid} ")
    assert (staging / "partial.bin").read_bytes() == b"x" * 1000 and not out.exists()


def test_case12_a_killed_writers_staging_copy_is_removed_by_the_next_run(
    models: dict[str, Path], tmp_path: Path, writer: subprocess.Popen
) -> None:
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert _staging(tmp_path) and (tmp_path / ".out.lock").exists()  # what SIGKILL leaves
    before = tree_hashes(models["teacher"])
    result = invoke("factorize", models["teacher"], "--rank", "4", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert embcompress.load(tmp_path / "out") is not None
    assert leftovers(tmp_path) == [] and tree_hashes(models["teacher"]) == before
