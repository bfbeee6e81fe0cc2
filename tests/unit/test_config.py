"""params.yaml: parsed once into typed objects; every key documented; errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.config import TASKS, ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]


def test_real_params_load() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.dataset.name == "ml-100k"
    assert params.validate_.rating_min == 1.0
    assert set(params.textualize.train_examples_per_user) == set(TASKS)
    assert params.resolve("data").is_absolute()


def test_every_key_is_commented_with_type_and_meaning() -> None:
    """Every key line carries `# (type) meaning`, except entries of a mapping documented as `# (dict...`."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    missing = []
    for n, line in enumerate(lines):
        if not re.match(r"^\s*[\w.-]+:", line) or "# (" in line:
            continue
        indent = len(line) - len(line.lstrip())
        parent = next((p for p in reversed(lines[:n]) if p.strip() and len(p) - len(p.lstrip()) < indent), "")
        if "# (dict" not in parent:
            missing.append(n + 1)
    assert not missing, f"params.yaml lines without '# (type) meaning': {missing}"


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    text = re.sub(r"(?m)^(split:.*)$", r"\1\n  bogus_key: 1", (REPO / "params.yaml").read_text(), count=1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"split\.bogus_key"):
        load_params(tmp_path / "params.yaml")


def test_invalid_value_names_the_key() -> None:
    with pytest.raises(ParamsError, match=r"split\.cold_item_fraction"):
        load_params(REPO / "params.yaml", {"split.cold_item_fraction": 1.5})
    with pytest.raises(ParamsError, match=r"dataset\.format"):
        load_params(REPO / "params.yaml", {"dataset.format": "xlsx"})


def test_override_of_missing_key_fails() -> None:
    with pytest.raises(ParamsError, match="no such key"):
        load_params(REPO / "params.yaml", {"split.nope": 1})


def test_generic_format_requires_a_path() -> None:
    with pytest.raises(ParamsError, match="generic.interactions.path"):
        load_params(REPO / "params.yaml", {"dataset.format": "generic"})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_item_neighbours_settings_are_checked() -> None:
    with pytest.raises(ParamsError, match=r"item_neighbours\.weight_grid"):
        load_params(REPO / "params.yaml", {"model.item_neighbours.weight_grid": [0.5, -1.0]})
    with pytest.raises(ParamsError, match="embed_items.neighbours.enabled"):
        load_params(REPO / "params.yaml", {"model.item_neighbours.window": 5, "embed_items.neighbours.enabled": False})
    with pytest.raises(ParamsError, match="history_skip_items"):
        load_params(REPO / "params.yaml", {"model.item_neighbours.window": 5, "model.history_skip_items": 0,
                                           "model.verbaliser_prior": False, "model.rating_prior_window": 0,
                                           "select_gates.grid": []})
    grid = load_params(REPO / "params.yaml", {"model.item_neighbours.weight_grid": [2.0, 0.0, 1.0]})
    assert grid.model.item_neighbours.weight_grid == [0.0, 1.0, 2.0]


def test_artifact_location_is_anchored_at_the_params_folder() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.artifact_location() == (params.root / "mlruns").resolve().as_uri()
    assert load_params(REPO / "params.yaml", {"mlflow.artifact_root": "s3://bucket/runs"}).artifact_location() \
        == "s3://bucket/runs"
    assert load_params(REPO / "params.yaml", {"mlflow.tracking_uri": "http://127.0.0.1:5000"}).artifact_location() is None
