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
    cmp = {"sasrec": {"metric": "ndcg@10", "model": 0.125, "expert": 0.1, "diff": 0.025, "ci95": [0.01, 0.04],
                      "users": 3, "verdict": "beats"},
           "pop": {"metric": "ndcg@10", "model": 0.125, "expert": 0.05, "diff": 0.075, "ci95": [-0.01, 0.2],
                   "users": 3, "verdict": "ties"}}
    payload = {"dataset": "toy", "model": {"next_item": {"hr@10": 0.25, "ndcg@10": 0.125}, "rating": {"rmse": 0.9},
                                           "text": {"attribute_f1": 0.5}},
               "unseen": {"next_item": {"ndcg@10": 0.2}},
               "baselines": {"pop": {"next_item": {"ndcg@10": 0.05}}, "sasrec": {"next_item": {"ndcg@10": 0.1}},
                             "mf": {"rating": {"rmse": 1.0}}},
               "comparisons": {"next_item": cmp, "rating": {"mf": {"metric": "rmse", "model": 0.9, "expert": 1.0,
                                                                   "diff": -0.1, "ci95": [-0.15, -0.05], "users": 4,
                                                                   "verdict": "beats"}}},
               "best_expert": {"next_item": "sasrec", "rating": "mf"},
               "meta": {"split": "test", "top_k": 10, "users": {"next_item": {"evaluated": 3, "eligible": 3}},
                        "bootstrap": {"resamples": 1000}, "wall_seconds": {"total": 90.0}}}
    table = results_table(payload, train={"wall_seconds": 120.0, "steps": 5, "peak_rss_gib": 1.5})
    lines = table.splitlines()
    assert lines[0] == ("| task | metric | unirec (seen / unseen templates) | best expert (chosen on validation) "
                        "| unirec − best expert [95 % CI] | popularity | unirec − popularity [95 % CI] "
                        "| users evaluated / eligible |")
    assert lines[2] == ("| next_item | ndcg@10 | 0.1250 / 0.2000 | SASRec 0.1000 | +0.0250 [+0.0100, +0.0400] beats "
                        "| 0.0500 | +0.0750 [-0.0100, +0.2000] ties | 3 / 3 |")
    assert lines[3] == "| rating | rmse | 0.9000 | MF 1.0000 | -0.1000 [-0.1500, -0.0500] beats |  |  |  |"
    assert lines[4] == "| text | attribute_f1 | 0.5000 |  |  |  |  |  |" and lines[5] == ""
    assert "paired bootstrap over users (1000 resamples)" in table
    assert "`unirec evaluate` took 1.5 min." in table and "`unirec train` took 2.0 min (5 steps)" in table
    older = results_table({k: v for k, v in payload.items() if k not in ("comparisons", "best_expert")})
    assert "| next_item | ndcg@10 | 0.1250 / 0.2000 |  |  | 0.0500 |  | 3 / 3 |" in older
    assert "predates the paired intervals" in older


def test_render_replaces_only_the_block_and_needs_both_markers(tmp_path) -> None:
    text = f"intro\n{START}\nold\n{END}\nrest\n"
    assert render(text, "new") == f"intro\n{START}\nnew\n{END}\nrest\n"
    with pytest.raises(ValueError, match="results markers are missing"):
        render("no markers", "new")
