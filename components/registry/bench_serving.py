"""`unirec benchmark serving`: a seeded mix of good and bad requests against a RUNNING scoring server
(`mlflow models serve -m models:/<name>@champion`) → `<paths.metrics_dir>/bench_serving.json`.

The requests are built from the project's catalogue (`requests.Catalogue`: id maps, stored histories, cold items):
good ones for every task (ids sometimes sent as JSON numbers, the way clients do), bad ones that must get HTTP 400
(unknown task / user / item, k out of range, an empty record, wrongly typed fields, a missing query or item list,
more rows than `registry.serving.max_rows`, a text request over the generation cap, malformed JSON). They are sent
one at a time (no concurrency: the latency of a request, not the server's throughput) and the file records, per
task, the p50 / p95 latency of the answered requests, and the status classes of all (a 5xx is a serving bug).
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from components.config import TASKS, Params
from components.registry.requests import Catalogue
from components.registry.store import git_state, write_json
from components.textualize.registry import load_registry


class ServingBenchError(ValueError):
    """No scoring server answers at the given URL."""


@dataclass(frozen=True)
class Probe:
    kind: str
    """The task of a good request, else the rule the bad request breaks (`bad:<rule>`)."""
    body: bytes
    expect: int
    """200 or 400."""


@dataclass
class Outcome:
    kind: str
    expect: int
    status: int
    ms: float
    message: str = ""


@dataclass
class ServingBenchReport:
    path: str
    payload: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        p = self.payload
        lines = [f"benchmark serving: {p['requests']} requests to {p['meta']['url']} in {p['wall_s']:.1f} s → "
                 f"{self.path}", f"  status classes {p['status']}; unexpected answers {p['unexpected']}"]
        for task, row in p["tasks"].items():
            lines.append(f"  {task:<17} {row['answered']:>4} answered  p50 {row['p50_ms']:8.1f} ms  "
                         f"p95 {row['p95_ms']:8.1f} ms")
        rejected = p["rejected"]
        lines.append(f"  {'rejected (400)':<17} {rejected['requests']:>4} requests  p50 {rejected['p50_ms']:8.1f} ms  "
                     f"p95 {rejected['p95_ms']:8.1f} ms")
        return "\n".join(lines)


def _body(rows: list[dict[str, Any]], **options: Any) -> bytes:
    return json.dumps({"dataframe_records": rows, "params": options}).encode()


def _as_number(ids: list[str]) -> list[Any]:
    return [int(i) if i.isdigit() else i for i in ids]


def request_mix(params: Params, n: int, bad_fraction: float, seed: int) -> list[Probe]:
    """`n` requests in a seeded order: about `bad_fraction` of them bad (each rule in turn), the rest good,
    spread over every task."""
    registry = load_registry(params.resolve(params.textualize.registry))
    cat = Catalogue.load(params, registry)
    limits = params.registry.serving
    rng = random.Random(seed)
    users = [u for u, i in cat.user_idx.items() if len(cat.history.get(i, ())) > 0]
    items, cold = cat.item_raw, [cat.item_raw[i] for i in cat.cold_items]
    objectives, queries = sorted(registry.objectives), ["a funny film", "an old drama", "science fiction"]

    def user() -> str:
        return rng.choice(users)

    def history() -> list[str]:
        return rng.sample(items, min(len(items), rng.randint(1, 8)))

    def good(task: str) -> bytes:
        row: dict[str, Any] = {"user_id": user()} if rng.random() < 0.7 else {"history": history()}
        if rng.random() < 0.3:  # ids as JSON numbers
            row = {k: (_as_number(v) if isinstance(v, list) else int(v) if str(v).isdigit() else v)
                   for k, v in row.items()}
        options: dict[str, Any] = {"task": task, "k": rng.randint(1, 10)}
        if task in ("candidate_choice", "ctr", "rating"):
            row["items"] = rng.sample(items, min(len(items), rng.randint(options["k"], options["k"] + 5)))
        if task == "cold_start":
            options["k"] = rng.randint(1, max(1, min(5, len(cold) - 9)))  # a stored user may have seen a few
        if task == "multi_objective":
            options["objective"] = rng.choice(objectives)
        if task == "query":
            options["query"] = rng.choice(queries)
        if task == "infill":
            options["query"] = f"{cat.item_name[0]}; {registry.format['mask'].format(k=0)}"
        if task in ("text", "infill"):
            options.pop("k")
        return _body([row], **options)

    u = user()
    bad = [
        ("unknown_task", _body([{"user_id": u}], task="fly")),
        ("k_out_of_range", _body([{"user_id": u}], k=limits.max_k + 1)),
        ("unknown_item", _body([{"history": ["no-such-item"]}])),
        ("unknown_user", _body([{"user_id": "no-such-user"}])),
        ("empty_record", _body([{}])),
        ("no_rows", _body([])),
        ("history_not_a_list", _body([{"history": items[0]}])),
        ("fractional_id", _body([{"history": [1.5]}])),
        ("user_id_a_list", _body([{"user_id": [u]}])),
        ("unknown_field", _body([{"user": u}])),
        ("query_missing", _body([{"user_id": u}], task="query")),
        ("items_missing", _body([{"user_id": u}], task="ctr")),
        ("too_many_rows", _body([{"user_id": u}] * (limits.max_rows + 1))),
        ("generation_over_cap", _body([{"user_id": u}] * min(limits.max_rows, limits.max_request_new_tokens
                                                               // limits.max_new_tokens + 1), task="text")),
        ("malformed_json", b'{"dataframe_records": [{"user_id": "1"'),
    ]
    tasks = [t for t in TASKS]
    probes = []
    for n_probe in range(n):
        if rng.random() < bad_fraction:
            rule, body = bad[n_probe % len(bad)]
            probes.append(Probe(f"bad:{rule}", body, 400))
        else:
            task = tasks[n_probe % len(tasks)]
            probes.append(Probe(task, good(task), 200))
    return probes


def send(url: str, probe: Probe, timeout_s: float) -> Outcome:
    request = urllib.request.Request(url.rstrip("/") + "/invocations", data=probe.body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            status, text = resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as err:  # no answer (time-out, connection lost): status 0
        status, text = 0, json.dumps({"message": f"no answer: {err}"})
    ms = (time.perf_counter() - start) * 1000
    message = ""
    if status != 200:
        try:
            message = str(json.loads(text).get("message", ""))[-300:]
        except ValueError:
            message = text[-300:]
    return Outcome(probe.kind, probe.expect, status, ms, message)


def ping(url: str) -> None:
    """Fail with one clear line unless a scoring server answers `<url>/ping`."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=30) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        problem = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        problem = str(getattr(err, "reason", err))
    raise ServingBenchError(f"{url}: no scoring server answers /ping ({problem}): start one with `mlflow models "
                            "serve -m models:/<registry.model_name>@champion --env-manager local -p PORT` or fix --url")


def _percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50_ms": 0.0, "p95_ms": 0.0}
    p50, p95 = np.percentile(ms, [50, 95])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}


def summarise(outcomes: list[Outcome], wall_s: float, meta: dict[str, Any]) -> dict[str, Any]:
    classes = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    for o in outcomes:
        key = f"{o.status // 100}xx"
        classes[key if key in classes else "other"] += 1
    tasks: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        mine = [o for o in outcomes if o.kind == task]
        if mine:
            ok = [o.ms for o in mine if o.status == 200]
            tasks[task] = {"requests": len(mine), "answered": len(ok), **_percentiles(ok)}
    bad = [o for o in outcomes if o.kind.startswith("bad:")]
    unexpected = [{"kind": o.kind, "status": o.status, "message": o.message} for o in outcomes if o.status != o.expect]
    return {"meta": meta, "requests": len(outcomes), "wall_s": round(wall_s, 2), "status": classes,
            "unexpected": len(unexpected), "unexpected_examples": unexpected[:10], "tasks": tasks,
            "rejected": {"requests": len(bad), **_percentiles([o.ms for o in bad if o.status == 400]),
                         "by_rule": {k: sum(o.kind == k for o in bad) for k in sorted({o.kind for o in bad})}}}


def benchmark_serving(params: Params, url: str, out: Path | None = None, note: str = "") -> ServingBenchReport:
    """Send `benchmark.serving_requests` mixed requests to the server at `url`; write the summary to `out`
    (default `<paths.metrics_dir>/bench_serving.json`). `note` goes into `meta` (e.g. which model is served)."""
    cfg = params.benchmark
    ping(url)
    probes = request_mix(params, cfg.serving_requests, cfg.serving_bad_fraction, params.seed)
    for probe in probes[:cfg.serving_warmup]:  # not timed
        send(url, probe, cfg.serving_timeout_s)
    start = time.perf_counter()
    outcomes = [send(url, probe, cfg.serving_timeout_s) for probe in probes]
    wall = time.perf_counter() - start
    commit, dirty = git_state(params.root)
    meta = {"url": url, "dataset": params.dataset.name, "seed": params.seed, "bad_fraction": cfg.serving_bad_fraction,
            "warmup": cfg.serving_warmup, "sequential": True, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "git_dirty": dirty, "note": note,
            "latency": "wall time per HTTP request (urllib, one at a time), answered requests only"}
    path = out or params.resolve(params.paths.metrics_dir) / "bench_serving.json"
    payload = summarise(outcomes, wall, meta)
    write_json(path, payload)
    return ServingBenchReport(str(path), payload)
