"""`unirec report readme`: the README's results table is generated from the committed metrics and cannot drift."""

from __future__ import annotations

import pytest

from components.config import load_params
from components.evaluation.readme import END, START, render, results_table, update_readme
from tests.conftest import REPO


def test_the_committed_readme_matches_the_committed_metrics() -> None:
    update_readme(load_params(REPO / "params.yaml"), check=True)  # raises when they differ


def test_readme_is_user_documentation_of_at_most_300_lines() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_table_rows_cells_and_notes_from_a_hand_built_payload() -> None:
    payload = {"dataset": "toy", "model": {"next_item": {"hr@10": 0.25, "ndcg@10": 0.125}, "rating": {"rmse": 0.9}},
               "unseen": {"next_item": {"hr@10": 0.2}},
               "baselines": {"pop": {"next_item": {"hr@10": 0.1}}, "mf": {"rating": {"rmse": 1.0}}},
               "meta": {"split": "test", "users": {"next_item": {"evaluated": 3, "eligible": 4}},
                        "wall_seconds": {"total": 90.0}}}
    table = results_table(payload, train={"wall_seconds": 120.0, "steps": 5, "peak_rss_gib": 1.5})
    lines = table.splitlines()
    assert lines[0] == ("| task | metric | unirec (seen templates) | unirec (unseen templates) | popularity | MF "
                        "| users evaluated / eligible |")
    assert lines[2] == "| next_item | hr@10 | 0.2500 | 0.2000 | 0.1000 |  | 3 / 4 |"
    assert lines[3] == "| next_item | ndcg@10 | 0.1250 |  |  |  | 3 / 4 |"
    assert lines[4] == "| rating | rmse | 0.9000 |  |  | 1.0000 |  |"
    assert "`unirec evaluate` took 1.5 min." in table and "`unirec train` took 2.0 min (5 steps)" in table


def test_render_replaces_only_the_block_and_needs_both_markers(tmp_path) -> None:
    text = f"intro\n{START}\nold\n{END}\nrest\n"
    assert render(text, "new") == f"intro\n{START}\nnew\n{END}\nrest\n"
    with pytest.raises(ValueError, match="results markers are missing"):
        render("no markers", "new")
