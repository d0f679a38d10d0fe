"""Training and evaluation speed of the downstream recommenders on MovieLens-100k.

    python benchmarks/recsys_speed.py [--epochs 2] [--threads 1] [--tags genres]

Prints JSON: per model, seconds (wall and CPU) per training epoch and for one full test
evaluation (943 users ranked against all 1,349 items; the generative model runs its
beam search). Epochs are timed without early stopping; validation after each epoch is
reported separately ("cpu_s_per_epoch_with_val" covers both). Wall time on a shared machine varies: the CPU seconds are the
steadier figure."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from tagsmith.evaluators.recsys import tags as tagmod
from tagsmith.evaluators.recsys.data import load_split
from tagsmith.evaluators.recsys.generative import GenerativeConfig, train_generative
from tagsmith.evaluators.recsys.popularity import Popularity
from tagsmith.evaluators.recsys.ranker import RankerConfig, train_ranker
from tagsmith.evaluators.recsys.term import TermRetriever
from tagsmith.evaluators.recsys.train import evaluate
from tagsmith.evaluators.recsys.trie import build_codes


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - w, 3), round(time.process_time() - c, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tags", default="genres")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split, load_s, _ = timed(lambda: load_split("movielens"))
    tags = tagmod.resolve(args.tags)
    vocab, desc = tagmod.encode(tags, split.item_ids)
    out: dict = {"dataset": split.stats, "load_s": load_s, "threads": args.threads, "epochs_timed": args.epochs,
                 "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
                 "load_average": [round(x, 2) for x in os.getloadavg()], "models": {}}

    pop = Popularity(split.n_items, split.train)
    _, w, c = timed(lambda: evaluate(pop.score, split, "test"))
    out["models"]["pop"] = {"test_eval_s": w, "test_eval_cpu_s": c}

    term = TermRetriever(split.n_items, desc, len(vocab))
    _, w, c = timed(lambda: evaluate(term.score, split, "test"))
    out["models"]["term"] = {"test_eval_s": w, "test_eval_cpu_s": c}

    for name, use_tags in (("ranker", True), ("ranker-id", False)):
        cfg = RankerConfig(epochs=args.epochs, patience=args.epochs + 1, use_tags=use_tags)
        (model, info), w, c = timed(lambda: train_ranker(split, desc if use_tags else [], len(vocab) if use_tags else 0,
                                                         cfg, progress=False))
        _, ew, ec = timed(lambda: evaluate(model.score, split, "test"))
        out["models"][name] = {"sec_per_epoch": info["sec_per_epoch"],
                               "val_eval_s_per_epoch": round(info["val_eval_s"] / args.epochs, 3),
                               "cpu_s_per_epoch_with_val": round(c / args.epochs, 3),
                               "test_eval_s": ew, "test_eval_cpu_s": ec}

    codes = build_codes([tags.get(i) for i in split.item_ids], levels=GenerativeConfig().levels)
    cfg = GenerativeConfig(epochs=args.epochs, patience=args.epochs + 1)
    (model, info), w, c = timed(lambda: train_generative(split, codes, cfg, progress=False))
    _, ew, ec = timed(lambda: evaluate(model.score, split, "test"))
    out["models"]["generative"] = {"sec_per_epoch": info["sec_per_epoch"],
                                   "val_eval_s_per_epoch": round(info["val_eval_s"] / args.epochs, 3),
                                   "cpu_s_per_epoch_with_val": round(c / args.epochs, 3),
                                   "val_beam": cfg.select_beam, "test_beam": cfg.beam,
                                   "test_eval_s": ew, "test_eval_cpu_s": ec, "codes": info["codes"]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
