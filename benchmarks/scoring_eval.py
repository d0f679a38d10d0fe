"""Ask-LLM and Density, measured: junk detection (ROC-AUC), the held-out loss of a tiny LM
trained on each method's subset at equal token budgets, and scoring throughput of the
pipeline next to a one-document-at-a-time loop on the same model, in one run.

    python benchmarks/scoring_eval.py --docs 240 --seeds 3 --out benchmarks/results/scoring_eval.json
    python benchmarks/scoring_eval.py --model openai/gpt-4o-mini      # any model with logprobs

Real text: gensim's test corpora (news paragraphs), with injected junk (boilerplate,
repetition, shuffled words, keyboard mash, cut fragments) at 30%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tagsmith.agents import scorer
from tagsmith.agents.gateway import Gateway
from tagsmith.core.config import load_config
from tagsmith.evaluators.junk import clean_corpus, inject_junk, roc_auc, train_eval_lm
from tagsmith.evaluators.selection import select
from tagsmith.runtime import execute
from tagsmith.store.db import Store


async def loop_one_at_a_time(config, docs: list[dict], db: str) -> float:
    """The naive baseline: one document, one awaited call, no concurrency, no graph."""
    store = Store(db)
    gw = Gateway(config.llm.model_copy(update={"concurrency": 1}), store=store)
    started = time.perf_counter()
    for d in docs:
        await scorer.ask(gw, d["text"])
    return time.perf_counter() - started


async def main(args) -> dict:
    corpus = clean_corpus()
    rng = random.Random(0)
    rng.shuffle(corpus)
    heldout, pool_clean = corpus[:60], corpus[60:60 + round(args.docs * 0.7)]
    pool = inject_junk(pool_clean, rate=0.3, seed=0)  # 30% of the pool is junk
    docs = [{"id": str(i), "text": ex[0]} for i, ex in enumerate(pool)]
    labels = {str(i): ex[1] for i, ex in enumerate(pool)}
    kinds = {str(i): ex.kind for i, ex in enumerate(pool)}
    out: dict = {"model": args.model, "docs": len(docs), "junk": sum(labels.values()), "heldout_docs": len(heldout)}
    with tempfile.TemporaryDirectory() as tmp:
        over = {"llm": {"model": args.model, "concurrency": args.concurrency}, "store": {"db": f"{tmp}/p.db"},
                "progress": False}
        if args.api_base:
            over["llm"]["api_base"] = args.api_base
        config = load_config(overrides=over)
        # warm the model server so neither side pays its start-up
        await scorer.ask(Gateway(config.llm, store=Store(f"{tmp}/warm.db")), "warm up")
        n_tp = min(args.throughput_docs, len(docs))
        t0 = time.perf_counter()
        await execute("score", load_config(overrides={**over, "store": {"db": f"{tmp}/tp.db"},
                                                      "pipeline": {"score": {"density": False}}}),
                      {"docs": docs[:n_tp]})
        pipe_s = time.perf_counter() - t0
        loop_s = await loop_one_at_a_time(config, docs[:n_tp], f"{tmp}/loop.db")
        out["throughput"] = {"docs": n_tp, "pipeline_docs_per_s": round(n_tp / pipe_s, 3),
                             "loop_docs_per_s": round(n_tp / loop_s, 3), "ratio": round(loop_s / pipe_s, 3),
                             "concurrency": args.concurrency}
        print(f"throughput: pipeline {n_tp / pipe_s:.2f} docs/s, loop {n_tp / loop_s:.2f} docs/s", file=sys.stderr)
        run, state = await execute("score", config, {"docs": docs})
        store = Store(f"{tmp}/p.db")
        scores = {k: v["score"] for k, v in store.results(run.id, "doc").items()}
        dens = {k: v["density"] for k, v in store.records(run.id, "density").items()}
        out["score_run"] = json.loads(run.metrics_json)
    ids = [d["id"] for d in docs]
    y_clean = [1 - labels[i] for i in ids]
    out["auc_clean_vs_junk"] = {
        "askllm": roc_auc([scores[i] if scores[i] is not None else 0.5 for i in ids], y_clean),
        "inverse_density": roc_auc([-dens[i] for i in ids], y_clean),
        "density": roc_auc([dens[i] for i in ids], y_clean),
    }
    out["auc_by_kind_askllm"] = {}
    for kind in sorted({k for k in kinds.values() if k != "clean"}):
        sub = [i for i in ids if kinds[i] in (kind, "clean")]
        out["auc_by_kind_askllm"][kind] = roc_auc([scores[i] or 0.5 for i in sub], [1 - labels[i] for i in sub])
    text = {d["id"]: d["text"] for d in docs}
    subsets: dict = {}
    for rate in args.rates:
        for method in ("random", "askllm", "density", "combined"):
            losses = []
            for seed in range(args.seeds):
                chosen = select(ids, method, rate, askllm=scores, density=dens, seed=seed)
                r = train_eval_lm([text[i] for i in chosen], heldout, token_budget=args.token_budget, seed=seed)
                losses.append(r["heldout_loss"])
            junk_share = float(np.mean([labels[i] for i in select(ids, method, rate, askllm=scores, density=dens,
                                                                  seed=0)]))
            subsets[f"{method}@{rate:g}"] = {"heldout_loss_mean": statistics.mean(losses),
                                             "heldout_loss_std": statistics.pstdev(losses), "losses": losses,
                                             "junk_share_seed0": junk_share}
            print(f"{method}@{rate:g}: loss {statistics.mean(losses):.4f} junk {junk_share:.2f}", file=sys.stderr)
    out["subsets"] = subsets
    out["token_budget"] = args.token_budget
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="local/smollm2")
    ap.add_argument("--api-base")
    ap.add_argument("--docs", type=int, default=240)
    ap.add_argument("--throughput-docs", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--token-budget", type=int, default=200_000)
    ap.add_argument("--out")
    a = ap.parse_args()
    result = asyncio.run(main(a))
    text_out = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text_out + "\n")
    print(text_out)
