"""Prompt tokens per item for batched assignment against one item per call.

    python benchmarks/batching_tokens.py [--items 96] [--batch-sizes 1,2,4,8,16]

Every call of the assigner carries the same fixed part (system prompt, instructions, the
vocabulary with definitions, the JSON schema with the descriptors as enums); batching
shares it among the items of a call. This runs the real tagging pipeline on the same
MovieLens items once per batch size, against the simulated provider
(tests/sim_server.py, zero latency, its own process), with a realistic vocabulary: the
MovieLens genres as a seed facet plus the drafted facets. Tokens are the provider's
usage (about 4 characters a token, counted over every message). Prints JSON: per batch
size, calls, prompt and completion tokens per item, and the ratio to one item per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sim_server import SimServer  # noqa: E402

from tagsmith.core.config import load_config  # noqa: E402
from tagsmith.runtime import execute, open_store  # noqa: E402


def make_config(db: str, url: str, batch_size: int, seed_facets: list[dict]):
    return load_config(overrides={
        "llm": {"model": "openai/sim", "api_base": url, "concurrency": 8, "timeout_s": 60},
        "store": {"db": db}, "progress": False,
        "pipeline": {"vocab": {"dedup": False, "max_rounds": 0, "annotators": 2, "batch_size": 6,
                               "domain": "movies", "seed_facets": seed_facets},
                     "assign": {"batch_size": batch_size, "repair_by_embedding": False, "domain": "movies"}}},
        environ={})


async def bench(n_items: int, batch_sizes: list[int]) -> dict:
    from tagsmith.core.datasets import movielens_items
    from tagsmith.core.config import VocabConfig
    from tagsmith.core.vocabulary import seed_facet_from_field
    from tagsmith.pipelines.vocabulary import final_vocabulary

    movies = movielens_items(limit=max(n_items, 200))
    seed = [seed_facet_from_field(movies, "genres", VocabConfig().max_per_facet).model_dump()]
    items = [{"id": m["id"], "text": m["text"]} for m in movies[:n_items]]
    out: dict = {"items": n_items, "token_count": "provider usage, ceil(chars/4) + 4 per message", "rows": []}
    with tempfile.TemporaryDirectory() as tmp, SimServer(latency=0.0) as sim:
        db = str(Path(tmp) / "b.db")
        cfg = make_config(db, sim.url, 1, seed)
        vrun, _ = await execute("vocab", cfg, {"items": items[:24]})
        store = open_store(cfg)
        vocab, _ = final_vocabulary(store, vrun.id)
        out["vocabulary"] = {"facets": len(vocab.facets), "descriptors": vocab.size()}
        for b in batch_sizes:
            cfg = make_config(db, sim.url, b, seed)
            sim.reset_stats()
            # a fresh prefix per batch size keeps the response cache out of the comparison
            batch_items = [{"id": f"b{b}-{i['id']}", "text": i["text"]} for i in items]
            run, _ = await execute("tag", cfg, {"vocab_run": vrun.id, "items": batch_items}, parent_run=vrun.id)
            stats = sim.stats()
            run = store.require_run(run.id)
            m = json.loads(run.metrics_json)
            assert run.status == "done" and m["coverage"] == 1.0
            out["rows"].append({"batch_size": b, "calls": run.calls, "server_requests": stats["requests"],
                                "prompt_tokens_per_item": round(run.prompt_tokens / n_items, 1),
                                "completion_tokens_per_item": round(run.completion_tokens / n_items, 1),
                                "tokens_per_item": round((run.prompt_tokens + run.completion_tokens) / n_items, 1),
                                "prompt_tokens_per_call": round(run.prompt_tokens / run.calls, 1)})
        store.close()
    base = next((r for r in out["rows"] if r["batch_size"] == 1), None)
    if base:
        for r in out["rows"]:
            r["prompt_tokens_vs_one_per_call"] = round(r["prompt_tokens_per_item"] / base["prompt_tokens_per_item"], 3)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(bench(a.items, [int(x) for x in a.batch_sizes.split(",")])), indent=2))
