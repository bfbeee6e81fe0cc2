"""Serving for real: the tiny model is registered and promoted in a real `mlflow server`, then
`mlflow models serve -m models:/<name>@champion --env-manager local` runs as a subprocess on 127.0.0.1 and gets
real HTTP requests (urllib): every task, good and bad requests, the server still serving afterwards, and the
latency of 100 sequential requests. `unirec recommend` prints a table from the same champion.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from components.config import TASKS
from components.registry import promote, register_model
from tests.flows.registry_stack import Server, Stack, eval_figures, model_server, shared_stack
from unirec.cli import app

NAME = "unirec_served"
CAPS = {"registry.serving.max_request_prompt_tokens": 4000, "registry.serving.max_request_new_tokens": 64}
"""Cost caps of the served test model: ~40 tiny-model prompts, 2 text rows of max_new_tokens 32."""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Stack:
    return shared_stack(tmp_path_factory, request)


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("served")
    params = stack.params(out, **{"registry.model_name": NAME, **CAPS})
    eval_figures(params.resolve(params.evaluate.metrics_file), stack.run_id, {"next_item.ndcg@10": 0.1})
    register_model(params)
    assert promote(params).champion_after is not None
    server = model_server(f"models:/{NAME}@champion", stack.server.url, out / "serve.log")
    yield params, server
    server.stop()


def _post(server: Server, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _tables(params) -> dict[str, object]:
    canonical, splits = Path(params.resolve(params.paths.canonical_dir)), Path(params.resolve(params.paths.splits_dir))
    items = pd.read_parquet(canonical / "id_maps" / "items.parquet").sort_values("idx")
    users = pd.read_parquet(canonical / "id_maps" / "users.parquet")
    raw_item = items["raw_id"].astype(str).tolist()
    seen = pd.concat([pd.read_parquet(splits / f"{s}.parquet") for s in ("train", "valid")])
    user = int(seen["user_idx"].min())
    return {"raw_item": raw_item, "user": str(users.loc[users["idx"] == user, "raw_id"].iloc[0]),
            "seen": {raw_item[i] for i in seen.loc[seen["user_idx"] == user, "item_idx"]},
            "cold": {raw_item[i] for i in pd.read_parquet(splits / "cold_items.parquet")["item_idx"]}}


def test_every_task_answers_with_valid_items_scores_or_text(served) -> None:
    params, server = served
    t = _tables(params)
    status, body = _post(server, {"dataframe_records": [{"user_id": t["user"]}], "params": {"task": "next_item", "k": 5}})
    rows = body["predictions"]
    assert status == 200 and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    ids = [r["item_id"] for r in rows]
    assert len(set(ids)) == 5 and set(ids) <= set(t["raw_item"]) and not set(ids) & t["seen"]
    assert all(r["title"] for r in rows) and [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    history = t["raw_item"][:3]
    status, body = _post(server, {"dataframe_split": {"columns": ["history"], "data": [[history]]}, "params": {"k": 4}})
    assert status == 200 and len(body["predictions"]) == 4 and not {r["item_id"] for r in body["predictions"]} & set(history)
    cands = t["raw_item"][10:16]
    cases = {"multi_objective": ({}, {"objective": "like"}), "query": ({}, {"query": "Drama titles"}),
             "cold_start": ({}, {}), "long_tail": ({}, {}), "candidate_choice": ({"items": cands}, {}),
             "ctr": ({"items": cands[:3]}, {}), "rating": ({"items": cands[:2]}, {}), "text": ({}, {}),
             "next_item": ({}, {"template_id": "next_item/unseen-2"})}
    for task, (row, options) in cases.items():
        k = 3 if task != "ctr" and task != "rating" else 10
        status, body = _post(server, {"dataframe_records": [{"user_id": t["user"], **row}],
                                      "params": {"task": task, "k": k, **options}})
        assert status == 200, (task, body)
        out = body["predictions"]
        assert all(r["task"] == task and r["request"] == 0 for r in out), task
        if task == "text":
            assert len(out) == 1 and isinstance(out[0]["text"], str)
            continue
        got = [r["item_id"] for r in out]
        expected = {"ctr": 3, "rating": 2}.get(task, 3)
        assert len(got) == len(set(got)) == expected, (task, out)
        if task == "cold_start":
            assert set(got) <= t["cold"]
        if task in ("candidate_choice", "ctr", "rating"):
            assert set(got) <= set(cands)
        if task == "ctr":
            assert all(0.0 <= r["score"] <= 1.0 for r in out)
        if task == "rating":
            assert all(1.0 <= r["score"] <= 5.0 for r in out)


BAD = [
    ({"dataframe_records": [{"user_id": "U"}], "params": {"task": "fly"}}, "unknown task 'fly'"),
    ({"dataframe_records": [{"user_id": "U"}], "params": {"k": 0}}, "k must be in [1, 100], got 0"),
    ({"dataframe_records": [{"user_id": "U"}], "params": {"k": 101}}, "k must be in [1, 100], got 101"),
    ({"dataframe_records": [{"history": []}]}, "row 0: give a user_id or a non-empty history"),
    ({"dataframe_records": [{"history": ["no-such-item"]}]}, "unknown item id 'no-such-item' (not in the catalogue"),
    ({"dataframe_records": [{"user_id": "no-such-user"}]}, "unknown user id 'no-such-user'"),
    ({"dataframe_records": [{"user_id": "U"}], "params": {"task": "query"}}, "needs a non-empty query param"),
    ({"dataframe_records": [{"user_id": "U"}], "params": {"task": "ctr"}}, "needs a non-empty items list"),
    ({"dataframe_records": [{"user_id": "U"}], "params": {"k": "ten"}}, "Failed to validate type and shape for 'k'"),
    ({"dataframe_records": []}, "the request has no rows"),
    (b'{"dataframe_records": [{"user_id": "1"', "Ensure that input is a valid JSON formatted string"),
    # an empty record is a row without a user or a history (not "no rows")
    ({"dataframe_records": [{}]}, "row 0: give a user_id or a non-empty history"),
    ({"dataframe_records": [{"user_id": "U"}, {}]}, "row 1: give a user_id or a non-empty history"),
    # wrong types, named per field
    ({"dataframe_records": [{"history": "50"}]}, "row 0: history must be a list of item ids (strings or integers), "
                                                 "got the string '50'"),
    ({"dataframe_records": [{"history": [1.5]}]}, "row 0: history[0] must be an item id (a string or an integer), "
                                                  "got the number 1.5"),
    ({"dataframe_records": [{"history": [{"id": 1}]}]}, "row 0: history[0] must be an item id (a string or an "
                                                        "integer), got an object"),
    ({"dataframe_records": [{"user_id": ["U"]}]}, "row 0: user_id must be a user id (a string or an integer), got "
                                                  "a list"),
    ({"dataframe_records": [{"user_id": True}]}, "row 0: user_id must be a user id (a string or an integer), got "
                                                 "the boolean true"),
    ({"dataframe_records": [{"user_id": "U", "items": [True]}], "params": {"task": "ctr"}},
     "row 0: items[0] must be an item id (a string or an integer), got the boolean true"),
    ({"dataframe_records": [{"user": "U"}]}, "unknown request fields ['user']; fields: ['user_id', 'history', 'items']"),
    ({"dataframe_records": [{"history": [99999]}]}, "row 0: history: unknown item id '99999' (not in the catalogue"),
    # the per-request cost caps (CAPS)
    ({"dataframe_records": [{"user_id": "U"}] * 3, "params": {"task": "text"}},
     "request too large: 3 rows x 32 new tokens = 96 tokens to generate, over the cap "
     "registry.serving.max_request_new_tokens = 64; send at most 2 rows per text request"),
    ({"dataframe_records": [{"user_id": "U", "items": "ALL"}] * 2, "params": {"task": "ctr"}},
     "over the cap registry.serving.max_request_prompt_tokens = 4000"),
]


def test_bad_requests_get_a_clear_400_and_the_server_keeps_serving(served) -> None:
    params, server = served
    user = _tables(params)["user"]
    every_item = _tables(params)["raw_item"]
    for body, message in BAD:
        if isinstance(body, dict):
            body = json.loads(json.dumps(body).replace('"U"', json.dumps(user)).replace('"ALL"', json.dumps(every_item)))
        status, answer = _post(server, body)
        assert status == 400, (body, answer)
        assert message in answer["message"], (message, answer)
        assert "stack_trace" not in answer and "Traceback" not in answer["message"]
    assert server.alive()
    with urllib.request.urlopen(server.url + "/ping", timeout=10) as resp:
        assert resp.status == 200
    status, body = _post(server, {"dataframe_records": [{"user_id": user}], "params": {"k": 2}})
    assert status == 200 and len(body["predictions"]) == 2


def test_ids_may_be_json_numbers_or_strings(served) -> None:
    params, server = served
    t = _tables(params)
    numeric = [i for i in t["raw_item"] if i.isdigit()][:4]
    assert len(numeric) == 4, "the tiny catalogue has numeric item ids"
    as_text = _post(server, {"dataframe_records": [{"history": numeric}], "params": {"k": 5}})
    as_numbers = _post(server, {"dataframe_records": [{"history": [int(i) for i in numeric]}], "params": {"k": 5}})
    assert as_text[0] == as_numbers[0] == 200 and as_text[1] == as_numbers[1]
    status, body = _post(server, {"dataframe_records": [{"user_id": int(t["user"]), "items": [int(numeric[0]), numeric[1]]}],
                                  "params": {"task": "ctr"}})
    assert status == 200 and {r["item_id"] for r in body["predictions"]} == set(numeric[:2])
    mixed = _post(server, {"dataframe_records": [{"user_id": int(t["user"])}, {"history": [int(numeric[0])]}],
                           "params": {"k": 2}})  # a column with a number and a missing value (NaN) in pandas
    assert mixed[0] == 200 and {r["request"] for r in mixed[1]["predictions"]} == {0, 1}
    two_text_rows = _post(server, {"dataframe_records": [{"user_id": t["user"]}] * 2, "params": {"task": "text"}})
    assert two_text_rows[0] == 200 and len(two_text_rows[1]["predictions"]) == 2  # within the generation cap


def test_latency_of_100_sequential_requests(served) -> None:
    params, server = served
    user = _tables(params)["user"]
    body = {"dataframe_records": [{"user_id": user}], "params": {"task": "next_item", "k": 10}}
    for _ in range(3):  # warm-up
        _post(server, body)
    ms = []
    for _ in range(100):
        start = time.perf_counter()
        status, _ = _post(server, body)
        ms.append((time.perf_counter() - start) * 1000)
        assert status == 200
    p50, p95 = np.percentile(ms, [50, 95])
    print(f"\nserving latency (tiny model, next_item k=10, 100 sequential requests): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    assert p95 < 2000


def test_unirec_recommend_prints_a_table_from_the_champion(served) -> None:
    params, _ = served
    user = _tables(params)["user"]
    sets = {"registry.model_name": NAME, "mlflow.tracking_uri": params.mlflow.tracking_uri}
    args = ["recommend", "--params", str(Path(params.root) / "params.yaml"),
            *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    result = CliRunner().invoke(app, [*args, "--user", user, "--task", "next_item", "-k", "4"])
    assert result.exit_code == 0, result.output
    assert f"models:/{NAME}@champion (v" in result.output and "item_id" in result.output and "title" in result.output
    table = [line for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert len(table) == 4
    bad = CliRunner().invoke(app, [*args, "--user", user, "-k", "0"])
    assert bad.exit_code == 1 and "unirec recommend failed: k must be in [1, 100], got 0" in bad.output


@pytest.mark.slow
def test_1000_mixed_requests_get_no_5xx_and_latency_per_task_is_written(served, tmp_path: Path) -> None:
    """The load test: `benchmark_serving` sends 1000 good and bad requests (every task, every rule) one at a time;
    every good one is answered, every bad one gets a 400, none a 5xx; bench_serving.json holds p50 / p95 per task."""
    from components.registry.bench_serving import benchmark_serving

    params, server = served
    report = benchmark_serving(params, server.url, out=tmp_path / "bench_serving.json",
                               note=f"tiny test bundle models:/{NAME}@champion (tests/flows/test_serving.py)")
    payload = json.loads((tmp_path / "bench_serving.json").read_text())
    assert payload == report.payload and payload["requests"] == 1000
    assert payload["status"]["5xx"] == 0 and payload["status"]["other"] == 0, payload["unexpected_examples"]
    assert payload["unexpected"] == 0, payload["unexpected_examples"]
    assert 200 < payload["rejected"]["requests"] < 400 and len(payload["rejected"]["by_rule"]) == 15
    assert set(payload["tasks"]) == set(TASKS)
    for task, row in payload["tasks"].items():
        assert row["answered"] == row["requests"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"], (task, row)
    assert server.alive()
    print("\n" + report.summary())
