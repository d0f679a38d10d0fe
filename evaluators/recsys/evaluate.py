"""Models x tag sources x seeds on one split -> results JSON and a markdown table.

Models (``MODELS``): ``pop`` (most popular, reads no tags), ``term`` (BM25 retrieval over
descriptors), ``generative`` (TIGER-style, codes from descriptors), ``ranker`` (SASRec
with descriptor embeddings), ``ranker-id`` (SASRec on item IDs only, the baseline the tags
must beat), ``critique`` (the tag ranker's scores re-ranked by "not X" / "more Y").
Validation NDCG@10 selects (early stopping, the term model's recency decay); test
metrics are reported, as mean ± std over seeds.

    >>> from tagsmith.evaluators.recsys.data import Interactions, leave_one_out
    >>> log = Interactions(users=[u for u in "abcdef" for _ in range(5)], items=list("vwxyz") * 6,
    ...                    timestamps=list(range(30)))
    >>> split = leave_one_out(log, core=1)
    >>> colours = TagSet("colours", {"v": ["red"], "w": ["red"], "x": ["blue"], "y": ["blue"], "z": ["red"]})
    >>> report = run_grid(split, {"colours": lambda seed: colours}, ["term", "pop"], seeds=[0],
    ...                   opts=Options(progress=False))
    >>> sorted((r["model"], r["tags"]) for r in report["summary"])
    [('pop', '-'), ('term', 'colours')]
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagsmith.evaluators.recsys import critique as critique_mod
from tagsmith.evaluators.recsys.data import Split
from tagsmith.evaluators.recsys.generative import GenerativeConfig, train_generative
from tagsmith.evaluators.recsys.metrics import KS, SELECTION_METRIC
from tagsmith.evaluators.recsys.popularity import Popularity
from tagsmith.evaluators.recsys.ranker import RankerConfig, train_ranker
from tagsmith.evaluators.recsys.tags import TagSet, encode
from tagsmith.evaluators.recsys.term import DECAY_GRID, SCORING, TermRetriever
from tagsmith.evaluators.recsys.train import evaluate, seed_everything
from tagsmith.evaluators.recsys.trie import build_codes

from tagsmith.evaluators.recsys import MODELS, TAG_FREE  # noqa: E402 - light names, kept beside the models
NO_TAGS = "-"
THREADS = 1


@dataclass
class Options:
    ranker: RankerConfig = field(default_factory=RankerConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    term_scoring: str = SCORING
    decay_grid: tuple[float, ...] = DECAY_GRID
    epochs: int | None = None      # overrides both trained models' epoch cap
    progress: bool = True

    def ranker_config(self, use_tags: bool) -> RankerConfig:
        c = RankerConfig(**{**self.ranker.to_dict(), "use_tags": use_tags})
        if self.epochs is not None:
            c.epochs = self.epochs
        return c

    def generative_config(self) -> GenerativeConfig:
        c = GenerativeConfig(**self.generative.to_dict())
        if self.epochs is not None:
            c.epochs = self.epochs
        return c

    def to_dict(self) -> dict:
        return {"ranker": self.ranker.to_dict(), "generative": self.generative.to_dict(),
                "term_scoring": self.term_scoring, "decay_grid": list(self.decay_grid), "epochs": self.epochs}


def _timed_eval(score, split: Split) -> tuple[dict, dict, float]:
    """Validation and test metrics, and the seconds the test pass took (all users)."""
    val = evaluate(score, split, "val")
    t0 = time.perf_counter()
    test = evaluate(score, split, "test")
    return val, test, round(time.perf_counter() - t0, 3)


def _r(d: dict) -> dict:
    return {k: round(v, 5) for k, v in d.items()}


def run_one(model: str, split: Split, tags: TagSet | None, seed: int, opts: Options,
            cache: dict | None = None) -> dict:
    """One model on one tag source with one seed -> a result row."""
    cache = {} if cache is None else cache
    seed_everything(seed)
    name = tags.name if tags is not None and model not in TAG_FREE else NO_TAGS
    vocab, item_desc = encode(tags, split.item_ids) if tags is not None else ([], [[] for _ in split.item_ids])
    row: dict = {"model": model, "tags": name, "seed": seed}
    label = f"{model}/{name}/s{seed}"
    t0, cpu0 = time.perf_counter(), time.process_time()
    if model == "pop":
        pop = Popularity(split.n_items, split.train)
        row["val"], row["test"], row["test_eval_s"] = _timed_eval(pop.score, split)
        row["fit"] = {"train_s": 0.0}
    elif model == "term":
        grid = {}
        best = None
        for decay in opts.decay_grid:  # no training: the recency decay is the only choice, made on validation
            r = TermRetriever(split.n_items, item_desc, len(vocab), scoring=opts.term_scoring, decay=decay)
            grid[decay] = evaluate(r.score, split, "val")
            if best is None or grid[decay][SELECTION_METRIC] > grid[best][SELECTION_METRIC]:
                best = decay
        r = TermRetriever(split.n_items, item_desc, len(vocab), scoring=opts.term_scoring, decay=best)
        row["val"], row["test"], row["test_eval_s"] = _timed_eval(r.score, split)
        row["fit"] = {"train_s": 0.0, "scoring": opts.term_scoring, "decay": best,
                      "val_grid": {str(k): round(v[SELECTION_METRIC], 5) for k, v in grid.items()}}
    elif model == "generative":
        sids = None
        if tags is not None and tags.semantic_ids is not None:
            sids = [tags.semantic_ids.get(i, []) for i in split.item_ids]
        codes = build_codes([tags.get(i) if tags else [] for i in split.item_ids],
                            levels=opts.generative.levels, semantic_ids=sids)
        m, info = train_generative(split, codes, opts.generative_config(), seed=seed, progress=opts.progress,
                                   desc=label)
        row["val"], row["test"], row["test_eval_s"] = _timed_eval(m.score, split)
        row["fit"] = info
    elif model in ("ranker", "ranker-id", "critique"):
        use_tags = model != "ranker-id"
        key = ("ranker", name if use_tags else NO_TAGS, seed)
        if key not in cache:
            m, info = train_ranker(split, item_desc if use_tags else [], len(vocab) if use_tags else 0,
                                   opts.ranker_config(use_tags), seed=seed, progress=opts.progress,
                                   desc=f"{'ranker' if use_tags else 'ranker-id'}/{name}/s{seed}")
            cache[key] = (m, info)
        m, info = cache[key]
        row["val"], row["test"], row["test_eval_s"] = _timed_eval(m.score, split)
        row["fit"] = info
        if model == "critique":
            users = list(range(split.n_users))
            hist = [split.history(u, "test") for u in users]
            scores = torch.cat([m.score(hist[s:s + 256]) for s in range(0, len(hist), 256)])
            row["critique"] = critique_mod.evaluate_critiques(
                scores, split.test, [split.full_history(u, "test") for u in users], item_desc, seed=seed)
    else:
        raise ValueError(f"unknown model {model!r} (one of {', '.join(MODELS)})")
    row["val"], row["test"] = _r(row["val"]), _r(row["test"])
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    row["cpu_s"] = round(time.process_time() - cpu0, 2)
    return row


def run_grid(split: Split, sources: dict[str, Callable[[int], TagSet]], models: list[str], seeds: list[int],
             opts: Options | None = None, log=None, jobs: int = 1, threads: int = THREADS) -> dict:
    """Every model on every tag source for every seed. ``sources`` maps a name to a
    function seed -> TagSet (random tags are redrawn per seed; others ignore the seed).

    ``jobs`` > 1 runs (seed, tag source) tasks in that many processes of ``threads``
    threads each: on a 2-core machine two 1-thread processes beat one 2-thread process
    (these models are too small for intra-op parallelism to pay). Rows come out in the
    same order, with the same numbers, either way."""
    opts = opts or Options()
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)} (one of {', '.join(MODELS)})")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    tag_stats: dict = {}
    tasks: list[tuple[int, TagSet | None, list[str]]] = []   # (seed, tags, models); tags None: tag-free models
    for seed in seeds:
        free = [m for m in models if m in TAG_FREE]
        if free:
            tasks.append((seed, None, free))
        for src, make in sources.items():
            tags = make(seed)
            tags.name = src  # the row label is the name asked for ('random', a run id), not the set's own
            tag_stats.setdefault(src, tags.stats(split.item_ids))
            dependent = [m for m in models if m not in TAG_FREE]
            if dependent:
                tasks.append((seed, tags, dependent))
    results: list[list[dict] | None] = [None] * len(tasks)
    if jobs <= 1:
        for n, (seed, tags, ms) in enumerate(tasks):
            results[n] = _run_task(split, tags, ms, seed, opts, threads, log)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        quiet = Options(**{**opts.__dict__, "progress": False})  # several bars at once would garble stderr
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_task, split, tags, ms, seed, quiet, threads, None): n
                       for n, (seed, tags, ms) in enumerate(tasks)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                for row in results[futures[fut]]:
                    _log(log, row)
    rows = [row for rs in results for row in rs or []]
    return {"dataset": {"name": split.name, **split.stats}, "protocol": PROTOCOL, "options": opts.to_dict(),
            "seeds": list(seeds), "tag_sources": tag_stats, "results": rows, "summary": summarise(rows),
            "environment": {"torch": torch.__version__, "threads": threads, "jobs": max(1, jobs),
                            "python": platform.python_version(), "machine": platform.machine()},
            "total_s": round(time.perf_counter() - started, 1),
            "total_cpu_s": round(sum(r["cpu_s"] for r in rows), 1)}


def _run_task(split: Split, tags: TagSet | None, models: list[str], seed: int, opts: Options, threads: int,
              log) -> list[dict]:
    """The models of one (seed, tag source): they share a cache (critique reuses the ranker)."""
    torch.set_num_threads(threads)
    cache: dict = {}
    rows = []
    for model in models:
        rows.append(run_one(model, split, tags, seed, opts, cache))
        _log(log, rows[-1])
    return rows


def _log(log, row: dict) -> None:
    if log is not None:
        log(f"{row['model']:<10} {row['tags']:<14} seed {row['seed']}: test NDCG@10 {row['test']['NDCG@10']:.4f} "
            f"Recall@10 {row['test']['Recall@10']:.4f} ({row['wall_s']:.0f}s)")


PROTOCOL = {
    "split": "leave-one-out after 5-core filtering: last item test, second-to-last validation, rest training",
    "ranking": "full ranking over all items; the user's earlier items are excluded except the target",
    "ties": "broken at random, metrics taken in expectation",
    "selection": "early stopping and hyper-parameter choice on validation NDCG@10; test reported",
    "metrics": [f"Recall@{k}" for k in KS] + [f"NDCG@{k}" for k in KS],
}


def _mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 5),
            "std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std (sample std over seeds) per (model, tags)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["tags"]), []).append(r)
    out = []
    for (model, tags), rs in groups.items():
        s = {"model": model, "tags": tags, "seeds": [r["seed"] for r in rs],
             "val": {k: _mean_std([r["val"][k] for r in rs]) for k in rs[0]["val"]},
             "test": {k: _mean_std([r["test"][k] for r in rs]) for k in rs[0]["test"]},
             "epochs": _mean_std([r["fit"].get("epochs", 0) for r in rs]),
             "sec_per_epoch": _mean_std([r["fit"].get("sec_per_epoch", 0.0) for r in rs]),
             "test_eval_s": _mean_std([r["test_eval_s"] for r in rs]),
             "wall_s": _mean_std([r["wall_s"] for r in rs]),
             "cpu_s": _mean_std([r.get("cpu_s", 0.0) for r in rs])}
        if all("critique" in r for r in rs):
            s["critique"] = _summarise_critique([r["critique"] for r in rs])
        out.append(s)
    return out


def _summarise_critique(cs: list[dict]) -> dict:
    out = {}
    for kind in ("more", "not"):
        entries = [c[kind] for c in cs if c[kind].get("users")]
        if not entries:
            continue
        e: dict = {"users": _mean_std([x["users"] for x in entries])}
        for key in entries[0]:
            if key == "users":
                continue
            if isinstance(entries[0][key], dict):
                e[key] = {k: _mean_std([x[key][k] for x in entries]) for k in entries[0][key]}
            else:
                e[key] = _mean_std([x[key] for x in entries])
        out[kind] = e
    return out


# ------------------------------------------------------------------------------ output

def _pm(s: dict, digits: int = 4) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def to_markdown(report: dict) -> str:
    ds = report["dataset"]
    summary = report["summary"]
    seeds = report["seeds"]
    lines = []
    title = "MovieLens-100k" if ds["name"] == "movielens" else ds["name"]
    lines.append(f"# Downstream recommendation on {title}\n")
    for cmd in report.get("commands", []):
        lines.append(f"    {cmd}\n")
    lines.append(f"Data: {ds['users']} users, {ds['items']} items, {ds['interactions']:,} interactions after "
                 f"{ds['core']}-core filtering; leave-one-out (last item test, second-to-last validation); "
                 f"histories up to {ds['max_history']} items. Full ranking over all items, each user's earlier "
                 f"items excluded except the target; ties broken at random in expectation. Early stopping and "
                 f"choices on validation NDCG@10; **test** metrics below, mean ± sample std over seeds "
                 f"{', '.join(map(str, seeds))}.\n")
    metrics = [f"Recall@{k}" for k in KS] + [f"NDCG@{k}" for k in KS]
    lines.append("| model | tags | " + " | ".join(metrics) + " | epochs | s/epoch | test eval s | CPU s/run |")
    lines.append("|---|---|" + "---|" * (len(metrics) + 4))
    for s in summary:
        if s["model"] == "critique":
            continue  # its ranking metrics are the tag ranker's; its own table is below
        cells = [_pm(s["test"][m]) for m in metrics]
        ep = f"{s['epochs']['mean']:.1f}" if s["epochs"]["mean"] else "-"
        spe = f"{s['sec_per_epoch']['mean']:.2f}" if s["sec_per_epoch"]["mean"] else "-"
        lines.append(f"| {s['model']} | {s['tags']} | " + " | ".join(cells) +
                     f" | {ep} | {spe} | {s['test_eval_s']['mean']:.2f} | {s['cpu_s']['mean']:.0f} |")
    # pivot: NDCG@10 by model x tag source
    tag_names = [t for t in dict.fromkeys(s["tags"] for s in summary) if t != NO_TAGS]
    models = [m for m in dict.fromkeys(s["model"] for s in summary) if m != "critique"]
    if tag_names:
        lines.append(f"\nTest NDCG@10, model × tag source (tag-free models in the '{NO_TAGS}' column):\n")
        cols = tag_names + ([NO_TAGS] if any(s["tags"] == NO_TAGS for s in summary) else [])
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        idx = {(s["model"], s["tags"]): s for s in summary}
        for m in models:
            cells = [_pm(idx[(m, t)]["test"]["NDCG@10"]) if (m, t) in idx else "" for t in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    crit = [s for s in summary if "critique" in s]
    if crit:
        strengths = next(iter(r["critique"]["strengths"] for r in report["results"] if "critique" in r))
        names = list(strengths)
        lines.append("\nCritiques on the tag ranker's test ranking (top-10). \"more Y\": Y a tag of the held-out "
                     "item; \"not X\": X the tag most shown in the top-10 that the held-out item lacks. Honour = "
                     "share of the top-10 with Y / without X. Re-ranking shifts the critiqued items' scores by "
                     + ", ".join(f"{n}: {v} σ" for n, v in strengths.items()) + " (σ: the user's score std; "
                     "inf = hard filter).\n")
        head = ["tags", "critique", "users", "honour before"] + [f"honour {n}" for n in names] + \
               ["NDCG@10 before"] + [f"NDCG@10 {n}" for n in names]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for s in crit:
            for kind in ("more", "not"):
                c = s["critique"].get(kind)
                if not c:
                    continue
                cells = [s["tags"], f"{kind} {'Y' if kind == 'more' else 'X'}", f"{c['users']['mean']:.0f}",
                         _pm(c["honour_before"], 3)] + [_pm(c[n]["honour_after"], 3) for n in names] + \
                        [_pm(c["ndcg@10_before"])] + [_pm(c[n]["ndcg@10_after"]) for n in names]
                lines.append("| " + " | ".join(cells) + " |")
    if report.get("tag_sources"):
        lines.append("\nTag sources over the split's items:\n")
        lines.append("| tags | coverage | distinct descriptors | descriptors per item | distinct sequences |")
        lines.append("|---|---|---|---|---|")
        for name, st in report["tag_sources"].items():
            lines.append(f"| {name} | {st['coverage']:.3f} | {st['distinct_descriptors']} | "
                         f"{st['descriptors_per_item']:.2f} | {st['distinct_sequences']} |")
    o = report["options"]
    rc, gc = o["ranker"], o["generative"]
    lines.append("\nSettings: "
                 f"ranker d={rc['d_model']}, {rc['layers']} layers, {rc['heads']} heads, dropout {rc['dropout']}, "
                 f"{'full softmax' if rc['loss'] == 'softmax' and not rc['negatives'] else rc['loss']}, "
                 f"lr {rc['lr']}, batch {rc['batch']}, ≤{o['epochs'] or rc['epochs']} epochs, patience "
                 f"{rc['patience']}; generative d={gc['d_model']}, {gc['layers']}-layer causal transformer over item "
                 f"codes + feed-forward code decoder, {gc['levels']} descriptor levels + collision suffix, beam "
                 f"{gc['beam']} (validation during training: {gc['select_beam']}), lr {gc['lr']}, batch "
                 f"{gc['batch']}, ≤{o['epochs'] or gc['epochs']} epochs, patience {gc['patience']}; term "
                 f"{o['term_scoring']}, recency decay from {o['decay_grid']} on validation. "
                 f"torch {report['environment']['torch']}, {report['environment'].get('jobs', 1)} process(es) × "
                 f"{report['environment']['threads']} thread(s). "
                 f"Total {report['total_s'] / 60:.1f} min wall, {report.get('total_cpu_s', 0) / 60:.1f} min CPU "
                 f"(model rows; the machine may be shared, so CPU time is the better measure of compute).")
    defined = [f"- {name}: {SOURCE_NOTES[name.split(':')[0]]}" for name in report.get("tag_sources", {})
               if name.split(":")[0] in SOURCE_NOTES]
    if defined:
        lines.append("\nTag sources:\n" + "\n".join(defined))
    for note in report.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


SOURCE_NOTES = {
    "genres": "the MovieLens genres (ml-100k.item `class`, in file order; 'unknown' dropped)",
    "random": "random tags with the cardinality of the genres (or of SPEC for random:SPEC): every item keeps its "
              "number of tags and every tag its number of items, shuffled; redrawn for each seed",
    "tfidf": "the top-3 title words per movie by TF-IDF over the catalogue, stop-words and words found in a "
             "single title removed (a word in one title links no two items)",
    "none": "no tags",
}


def merge(old: dict, new: dict) -> dict:
    """Add ``new``'s rows to ``old``'s, replacing rows of the same (model, tags, seed)."""
    if old.get("dataset", {}).get("name") != new["dataset"]["name"] or \
            old.get("dataset", {}).get("interactions") != new["dataset"]["interactions"]:
        raise ValueError("cannot merge results of different datasets")
    keys = {(r["model"], r["tags"], r["seed"]) for r in new["results"]}
    rows = [r for r in old["results"] if (r["model"], r["tags"], r["seed"]) not in keys] + new["results"]
    out = {**new, "results": rows, "summary": summarise(rows),
           "tag_sources": {**old.get("tag_sources", {}), **new["tag_sources"]},
           "seeds": sorted({r["seed"] for r in rows}),
           "commands": old.get("commands", []) + new.get("commands", []),
           "notes": list(dict.fromkeys(old.get("notes", []) + new.get("notes", []))),
           "total_s": round(old.get("total_s", 0) + new["total_s"], 1),
           "total_cpu_s": round(old.get("total_cpu_s", 0) + new.get("total_cpu_s", 0), 1)}
    return out


def write(report: dict, out: str | Path, merge_existing: bool = False) -> tuple[Path, Path]:
    """Write recsys_<dataset>.json and .md under ``out``; with ``merge_existing`` the rows
    of an earlier report there are kept unless recomputed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"recsys_{report['dataset']['name']}"
    jpath, mpath = out / f"{stem}.json", out / f"{stem}.md"
    if merge_existing and jpath.is_file():
        report = merge(json.loads(jpath.read_text()), report)
    jpath.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    mpath.write_text(to_markdown(report))
    return jpath, mpath


def _json_default(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return str(x)


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
