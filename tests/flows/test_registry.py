"""Index step, MLflow registration and the promotion gate against a REAL `mlflow server` (SQLite backend) on
127.0.0.1, with a real tiny model trained into it (tests/flows/registry_stack.py).

The gate's inputs are eval figures: each version is registered with an eval.json whose figures the test
chooses (so "better" and "worse" are known in advance); everything else — model, bundle, pyfunc, registry,
aliases, tags — is real. Every test uses its own registered-model name, so the tests are order-independent.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from components.config import load_params
from components.utils import sha256_of
from components.indexing import ItemIndexError, build_item_index, load_item_index
from components.registry import fetch_model_version, promote, register_model
from components.registry.promotion import gate_override
from components.registry.promotion_gate import decide, lower_is_better, regression
from components.registry.store import RegistryError, champion_events, champion_history, champion_stack
from tests.flows.registry_stack import Stack, eval_figures, shared_stack
from unirec.cli import app

REPO = Path(__file__).resolve().parents[2]
GATE = "next_item.ndcg@10"
TRACKED = ["next_item.hr@10", "ctr.auc", "rating.rmse"]
BASE = {GATE: 0.10, "next_item.hr@10": 0.20, "ctr.auc": 0.60, "rating.rmse": 1.10}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Stack:
    return shared_stack(tmp_path_factory, request)


def _params(stack: Stack, out: Path, name: str, **extra: object):
    return stack.params(out, **{"registry.model_name": name, "registry.gate_metric": GATE,
                                "registry.gate_margin": 0.005, "registry.tracked_metrics": TRACKED,
                                "registry.regression_tolerance": 0.1, **extra})


def _register(stack: Stack, tmp: Path, name: str, figures: dict[str, float]):
    params = _params(stack, tmp, name)
    eval_figures(params.resolve(params.evaluate.metrics_file), stack.run_id, figures)
    return params, register_model(params)


def _with_champion(stack: Stack, tmp: Path):
    """A new registered model whose v1 (figures BASE) is the champion: (name, client, params)."""
    name = f"unirec_{uuid.uuid4().hex[:8]}"
    params, _ = _register(stack, tmp, name, BASE)
    promote(params)
    return name, MlflowClient(tracking_uri=stack.server.url, registry_uri=stack.server.url), params


# ------------------------------------------------------------------------------------------ pure gate
def test_gate_decisions_by_hand() -> None:
    assert lower_is_better("rating.rmse") and lower_is_better("ctr.logloss") and not lower_is_better(GATE)
    assert regression(0.9, 1.0, lower=False) == pytest.approx(0.1)   # 10 % below a higher-is-better champion
    assert regression(1.21, 1.10, lower=True) == pytest.approx(0.1)  # rmse 10 % above
    assert regression(-0.2, 0.0, lower=False) == pytest.approx(0.2)  # champion 0: absolute
    ok = decide({**BASE, GATE: 0.106}, BASE, GATE, 0.005, TRACKED, 0.1)
    assert ok.passed and ok.required == pytest.approx(0.105) and set(ok.regressions) == set(TRACKED)
    short = decide({**BASE, GATE: 0.104}, BASE, GATE, 0.005, TRACKED, 0.1)  # improves, but by less than the margin
    assert not short.passed and "is not >= 0.105" in short.reason
    # gate passes, AUC drops 0.60 -> 0.53 (11.7 % > 10 %), rmse 1.10 -> 1.20 (9.1 % <= 10 %)
    regress = decide({**BASE, GATE: 0.2, "ctr.auc": 0.53, "rating.rmse": 1.2}, BASE, GATE, 0.005, TRACKED, 0.1)
    assert not regress.passed and regress.failed == ["ctr.auc"] and "ctr.auc 0.6 -> 0.53" in regress.reason
    lower_gate = decide({"rating.rmse": 1.0}, {"rating.rmse": 1.1}, "rating.rmse", 0.05, [], 0.1)
    assert lower_gate.passed and lower_gate.required == pytest.approx(1.05)
    missing = decide({"ctr.auc": 0.7}, BASE, GATE, 0.0, TRACKED, 0.1)
    assert not missing.passed and "has no next_item.ndcg@10" in missing.reason and "next_item.hr@10" in missing.not_compared
    no_champion_figure = decide(BASE, {}, GATE, 0.005, TRACKED, 0.1)
    assert no_champion_figure.passed and no_champion_figure.required is None and no_champion_figure.not_compared == TRACKED


# ------------------------------------------------------------------------------------------ index step
def test_index_step_writes_a_faiss_index_tied_to_the_item_vectors(stack: Stack, tmp_path: Path) -> None:
    params = stack.params(tmp_path, **{"index.out_dir": str(tmp_path / "index"), "index.kind": "hnsw"})
    report = build_item_index(params)
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    vectors = np.load(stack.shared / "unirec" / "item_vectors.npy")
    assert meta["kind"] == "hnsw" and (meta["n_items"], meta["dim"]) == vectors.shape
    assert meta["vectors_sha256"] == sha256_of(stack.shared / "unirec" / "item_vectors.npy") == report.vectors_sha256
    assert report.exact_agreement > 0.9 and "hnsw" in report.summary()
    index = load_item_index(tmp_path / "index", stack.shared / "unirec" / "item_vectors.npy", params.index)
    ids, _ = index.topk(vectors[:3], 5, [[0], [], [2]])
    assert ids.shape == (3, 5) and 0 not in ids[0] and 2 not in ids[2]
    first = (tmp_path / "index" / "items.faiss").read_bytes()
    build_item_index(params)  # deterministic: an unchanged model gives the same bytes (DVC sees no change)
    assert (tmp_path / "index" / "items.faiss").read_bytes() == first
    other = tmp_path / "other.npy"
    np.save(other, vectors + 1.0)
    with pytest.raises(ItemIndexError, match="rerun `unirec index`"):
        load_item_index(tmp_path / "index", other, params.index)
    with pytest.raises(ItemIndexError, match="index.kind 'torch'"):
        build_item_index(stack.params(tmp_path, **{"index.kind": "torch"}))


# ------------------------------------------------------------------------------------------ registry
def test_first_model_becomes_champion_with_provenance_and_reruns_are_idempotent(stack: Stack, tmp_path: Path) -> None:
    name = f"unirec_{uuid.uuid4().hex[:8]}"
    params, first = _register(stack, tmp_path, name, BASE)
    assert first.created and first.version == "1" and first.aliases == ["challenger"] and first.run_id == stack.run_id
    client = MlflowClient(tracking_uri=stack.server.url, registry_uri=stack.server.url)
    run = client.get_run(stack.run_id)
    assert run.data.params["train.max_steps"] == "4" and "registry.model_name" in run.data.params
    assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["unirec.dvc_lock_sha256"]
    assert run.data.metrics["eval.next_item.ndcg_at_10"] == pytest.approx(0.10)
    reports = {a.path for a in client.list_artifacts(stack.run_id, "reports")}
    assert "reports/eval.json" in reports and "reports/validation" in reports
    version = client.get_model_version(name, "1")
    assert version.tags["eval.next_item.ndcg_at_10"] == repr(0.10) and version.run_id == stack.run_id
    assert json.loads(Path(params.registry.metrics_file).read_text())["version"] == "1"

    decision = promote(params)
    assert decision.action == "promoted" and "first model" in decision.reason
    model = client.get_registered_model(name)
    assert model.aliases == {"challenger": "1", "champion": "1"} and model.tags["champion_history"] == "[\"1\"]"
    assert client.get_model_version(name, "1").tags["promotion.decision"] == "promoted"

    again = register_model(params)  # same model, same eval figures: no new version
    assert not again.created and again.version == "1" and again.fingerprint == first.fingerprint
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert promote(params).action == "unchanged"
    assert client.get_registered_model(name).aliases == {"challenger": "1", "champion": "1"}
    record = json.loads(Path(params.registry.promotion_file).read_text())
    assert record["action"] == "unchanged" and record["champion"] == "1"


def test_better_is_promoted_worse_refused_and_rollback_restores_the_previous_champion(
        stack: Stack, tmp_path: Path) -> None:
    name, client, params = _with_champion(stack, tmp_path)
    _, better = _register(stack, tmp_path, name, {**BASE, GATE: 0.12})
    won = promote(params)
    assert better.version == "2" and won.action == "promoted" and won.champion_before == "1"
    assert client.get_registered_model(name).tags["previous_champion"] == "1"
    assert float(client.get_model_version(name, "2").tags["promotion.champion_value"]) == pytest.approx(0.10)

    _, worse = _register(stack, tmp_path, name, {**BASE, GATE: 0.08})
    lost = promote(params)
    assert worse.version == "3" and lost.action == "refused" and lost.champion_after == "2"
    tags = client.get_model_version(name, "3").tags
    assert tags["promotion.decision"] == "refused" and "next_item.ndcg@10 0.08 is not >= 0.125" in tags["promotion.reason"]
    assert tags["promotion.compared_to"] == "2" and float(tags["promotion.required"]) == pytest.approx(0.125)
    assert client.get_registered_model(name).aliases == {"challenger": "3", "champion": "2"}
    assert promote(params).action == "refused"  # rerun: same decision, nothing moves
    assert client.get_registered_model(name).aliases["champion"] == "2"

    back = promote(params, rollback=True)
    assert back.action == "rolled_back" and (back.champion_before, back.champion_after) == ("2", "1")
    model = client.get_registered_model(name)
    # the FULL alias history: v2 stays listed after its rollback, v1 appears again; every move is an event
    assert model.aliases["champion"] == "1" and json.loads(model.tags["champion_history"]) == ["1", "2", "1"]
    events = json.loads(model.tags["champion_events"])
    assert [(e["event"], e["version"], e["from"]) for e in events] == [
        ("promoted", "1", None), ("promoted", "2", "1"), ("rolled_back", "1", "2")]
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in events)
    assert events[0]["at"] <= events[1]["at"] <= events[2]["at"]
    assert model.tags["previous_champion"] == ""
    assert client.get_model_version(name, "2").tags["promotion.decision"] == "rolled_back"
    with pytest.raises(RegistryError, match="no previous champion"):
        promote(params, rollback=True)
    _register(stack, tmp_path, name, {**BASE, GATE: 0.12})  # v2 again: identical model and figures
    assert promote(params).action == "refused"  # a rolled-back version is never re-promoted
    assert client.get_registered_model(name).aliases == {"challenger": "2", "champion": "1"}
    assert json.loads(client.get_registered_model(name).tags["champion_history"]) == ["1", "2", "1"]


def test_champion_stack_replays_the_events_and_reads_the_old_history_tag() -> None:
    class Model:
        def __init__(self, tags: dict[str, str]) -> None:
            self.tags = tags

    class Client:
        def __init__(self, tags: dict[str, str]) -> None:
            self.model = Model(tags)

        def get_registered_model(self, name: str) -> Model:
            return self.model

    events = [{"at": "t1", "event": "promoted", "version": "1", "from": None},
              {"at": "t2", "event": "promoted", "version": "2", "from": "1"},
              {"at": "t3", "event": "rolled_back", "version": "1", "from": "2"},
              {"at": "t4", "event": "adopted", "version": "5", "from": "1"},
              {"at": "t5", "event": "promoted", "version": "6", "from": "5"}]
    assert champion_stack(events) == ["1", "5", "6"]
    client = Client({"champion_events": json.dumps(events)})
    assert champion_history(client, "m") == ["1", "2", "1", "5", "6"]  # type: ignore[arg-type]
    old = Client({"champion_history": '["1", "3"]'})  # written before the event log: a stack of promotions
    assert [(e["event"], e["version"], e["from"]) for e in champion_events(old, "m")] == [  # type: ignore[arg-type]
        ("promoted", "1", None), ("promoted", "3", "1")]
    assert champion_stack(champion_events(old, "m")) == ["1", "3"]  # type: ignore[arg-type]


def test_a_gate_override_is_recorded_on_the_version_and_strict_fails_on_a_refusal(
        stack: Stack, tmp_path: Path) -> None:
    name, client, params = _with_champion(stack, tmp_path)
    _register(stack, tmp_path, name, {**BASE, GATE: 0.2, "rating.rmse": 1.3})  # v2: rmse 18 % worse: refused
    args = ["promote", "--params", str(Path(params.root) / "params.yaml"),
            *[a for k, v in _cli_sets(params, name).items() for a in ("--set", f"{k}={v}")]]
    strict = CliRunner().invoke(app, [*args, "--strict"])  # refused → exit 1, one line, the refusal recorded
    assert strict.exit_code == 1, strict.output
    assert strict.stderr.strip().splitlines() == [
        strict.stderr.strip()] and strict.stderr.startswith("unirec promote failed: challenger v2 refused by the "
                                                            "promotion gate (--strict): tracked metrics regress")
    assert "champion stays v1" in strict.stderr
    assert client.get_model_version(name, "2").tags["promotion.decision"] == "refused"
    assert json.loads(Path(params.registry.promotion_file).read_text())["action"] == "refused"

    # the operator overrides the tolerance: promoted, and the override is on the version and in promotion.json
    forced = CliRunner().invoke(app, [*args, "--strict", "--set", "registry.regression_tolerance=10"])
    assert forced.exit_code == 0, forced.output
    assert "GATE OVERRIDE" in forced.stdout and "registry.regression_tolerance 0.1 → 10.0" in forced.stdout
    expected = {"registry.gate_margin": {"params_yaml": 0.001, "effective": 0.005},
                "registry.regression_tolerance": {"params_yaml": 0.1, "effective": 10.0},
                "registry.tracked_metrics": {"params_yaml": load_params(REPO / "params.yaml").registry.tracked_metrics,
                                             "effective": TRACKED}}
    tags = client.get_model_version(name, "2").tags
    assert tags["promotion.decision"] == "promoted" and json.loads(tags["promotion.override"]) == expected
    record = json.loads(Path(params.registry.promotion_file).read_text())
    assert record["action"] == "promoted" and record["override"] == expected
    assert client.get_registered_model(name).aliases["champion"] == "2"

    # settings equal to the params file's are no override
    plain = {"registry.model_name": name, "mlflow.tracking_uri": stack.server.url,
             "registry.promotion_file": params.registry.promotion_file}
    assert gate_override(load_params(Path(params.root) / "params.yaml", {**plain, "registry.gate_margin": 0.001})) == {}
    same = promote(load_params(Path(params.root) / "params.yaml", plain))
    assert same.action == "unchanged" and same.override == {}
    assert json.loads(Path(params.registry.promotion_file).read_text())["override"] == {}


def test_a_tracked_regression_refuses_a_challenger_that_passes_the_gate(stack: Stack, tmp_path: Path) -> None:
    name, _, params = _with_champion(stack, tmp_path)
    _register(stack, tmp_path, name, {**BASE, GATE: 0.2, "rating.rmse": 1.3})  # rmse 18 % worse
    decision = promote(params)
    assert decision.action == "refused" and decision.gate["failed"] == ["rating.rmse"]
    result = CliRunner().invoke(app, ["promote", "--params", str(Path(params.root) / "params.yaml"),
                                      *[a for k, v in _cli_sets(params, name).items() for a in ("--set", f"{k}={v}")]])
    assert result.exit_code == 0 and "refused" in result.output and "rating.rmse" in result.output


def _cli_sets(params, name: str) -> dict[str, str]:
    return {"registry.model_name": name, "mlflow.tracking_uri": params.mlflow.tracking_uri,
            "registry.gate_metric": GATE, "registry.tracked_metrics": json.dumps(TRACKED),
            "registry.gate_margin": "0.005", "registry.promotion_file": params.registry.promotion_file}


def test_clear_errors_for_missing_model_stale_eval_and_missing_alias(stack: Stack, tmp_path: Path) -> None:
    params = _params(stack, tmp_path, f"unirec_{uuid.uuid4().hex[:8]}")
    with pytest.raises(RegistryError, match="not found in the tracking store; run `unirec register` first"):
        promote(params)
    eval_figures(params.resolve(params.evaluate.metrics_file), "0" * 32, BASE)
    with pytest.raises(RegistryError, match="run `unirec evaluate` before `unirec register`"):
        register_model(params)
    with pytest.raises(RegistryError, match="no version with alias 'champion'"):
        fetch_model_version(params, "champion", tmp_path / "fetched")


def test_fetched_champion_is_laid_out_like_train_out_dir(stack: Stack, tmp_path: Path) -> None:
    name = f"unirec_{uuid.uuid4().hex[:8]}"
    params, _ = _register(stack, tmp_path, name, BASE)
    promote(params)
    got = fetch_model_version(params, "champion", tmp_path / "fetched")
    trained = stack.shared / "unirec"
    for rel in ("modules.safetensors", "item_vectors.npy", "model.json", "adapter/adapter_model.safetensors"):
        assert sha256_of(got / rel) == sha256_of(trained / rel), rel
    bundle = got.parent
    assert yaml.safe_load((bundle / "params.yaml").read_text())["train"]["out_dir"] == "model"
    assert json.loads((bundle / "backbone.json").read_text()) == {"source": "tiny", "folder": None, "files": {}}
    assert fetch_model_version(params, "champion", tmp_path / "fetched") == got  # refetch replaces cleanly


def test_dvc_stages_index_register_promote() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["index"]["cmd"] == "unirec index" and stages["index"]["outs"] == ["${index.out_dir}"]
    assert "${train.out_dir}" in stages["index"]["deps"]
    assert {"${index.out_dir}", "${train.out_dir}", "${evaluate.metrics_file}"} <= set(stages["register"]["deps"])
    assert stages["register"]["metrics"] == [{"${registry.metrics_file}": {"cache": False}}]
    assert "${registry.metrics_file}" in stages["promote"]["deps"]
    assert stages["promote"]["metrics"] == [{"${registry.promotion_file}": {"cache": False}}]


def test_a_local_backbone_is_referenced_by_sha256_not_copied(stack: Stack, tmp_path: Path) -> None:
    from components.model.backbone import load_backbone
    from components.registry.bundle import BACKBONE_FILE, BundleError, backbone_reference, verify_backbone

    tiny = load_backbone(stack.params(tmp_path))  # a real HF causal-LM folder: the tiny Llama saved as hf_dir
    tiny.model.save_pretrained(tmp_path / "hf")
    tiny.tokenizer.save_pretrained(tmp_path / "hf")
    params = stack.params(tmp_path, **{"backbone.source": "hf_dir", "backbone.hf_dir": str(tmp_path / "hf")})
    ref = backbone_reference(params)
    assert ref["folder"] == str((tmp_path / "hf").resolve())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(ref["files"])
    assert ref["files"]["model.safetensors"] == sha256_of(tmp_path / "hf" / "model.safetensors")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / BACKBONE_FILE).write_text(json.dumps(ref))
    verify_backbone(bundle, params)
    config = tmp_path / "hf" / "config.json"
    config.write_text(config.read_text().replace("}", ', "edited": true}', 1))
    with pytest.raises(BundleError, match="sha256 differs from the one recorded at registration"):
        verify_backbone(bundle, params)
    config.unlink()
    with pytest.raises(BundleError, match="missing on this machine"):
        verify_backbone(bundle, params)
