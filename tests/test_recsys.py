"""Downstream recommendation: data protocol, tag sources, metrics, models and critiques on
tiny synthetic data where the answer is known. All fast (CPU, seconds)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from tagsmith.core.errors import ConfigError, InputError
from tagsmith.evaluators.recsys import critique, metrics, tags as tagmod
from tagsmith.evaluators.recsys.data import Interactions, k_core, leave_one_out, load_interactions
from tagsmith.evaluators.recsys.evaluate import Options, run_grid, run_one, to_markdown
from tagsmith.evaluators.recsys.generative import GenerativeConfig, TIGER
from tagsmith.evaluators.recsys.ranker import RankerConfig
from tagsmith.evaluators.recsys.term import TermRetriever
from tagsmith.evaluators.recsys.trie import Trie, beam_search, build_codes


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ synthetic worlds

def group_world(groups: int = 12, size: int = 8, users: int = 150, length: int = 6, ordered: bool = True,
                seed: int = 0):
    """Items 0..G*S-1, group g = items g*S..g*S+S-1. Each user stays in one group and walks
    its items in a fixed cycle from a random start (``ordered``) or in random order. An
    item's tag names its group, which is also the group of the item that follows it: the
    last item's tag says where the target is. Each item is seen by few users, so an ID
    model has little to learn from."""
    rng = random.Random(seed)
    users_, items_, ts = [], [], []
    for u in range(users):
        g = rng.randrange(groups)
        if ordered:
            start = rng.randrange(size)
            seq = [(start + t) % size for t in range(length)]
        else:
            seq = rng.sample(range(size), k=min(size, length))
        for t, j in enumerate(seq):
            users_.append(f"u{u}")
            items_.append(str(g * size + j))
            ts.append(float(t))
    log = Interactions(users_, items_, ts, name="groups")
    informative = tagmod.TagSet("group", {str(i): [f"g{i // size}"] for i in range(groups * size)})
    return log, informative


# ------------------------------------------------------------------ data protocol

def test_k_core_iterates_until_stable():
    # k=2: items y, z have one interaction each -> dropped; then user b has one left -> dropped
    log = Interactions(list("aaabb"), list("xyxxz"), [1, 2, 3, 4, 5])
    assert k_core(log, 2) == [0, 2]
    # a chain where each removal triggers the next: u3 goes, then c, then u2, then b, u1, a
    log = Interactions(["u1", "u1", "u2", "u2", "u3"], ["a", "b", "b", "c", "c"], list(range(5)))
    assert k_core(log, 2) == []


def test_leave_one_out_orders_by_time_with_stable_ties():
    # user u: timestamps with a tie (3, 3): file order decides; v has 3 items; w has 2 -> dropped
    log = Interactions(users=["u", "u", "u", "u", "u", "v", "v", "v", "w", "w"],
                       items=["a", "b", "c", "d", "e", "a", "b", "c", "a", "b"],
                       timestamps=[5, 1, 3, 3, 9, 1, 2, 3, 1, 2])
    split = leave_one_out(log, core=1, max_history=2)
    ids = split.item_ids
    by_user = dict(zip(split.user_ids, range(split.n_users)))
    assert set(by_user) == {"u", "v"}
    u = by_user["u"]
    assert [ids[i] for i in split.train[u]] == ["b", "c", "d"]       # 1, 3, 3 (c before d: file order)
    assert ids[split.val[u]] == "a" and ids[split.test[u]] == "e"
    assert [ids[i] for i in split.history(u, "test")] == ["d", "a"]  # capped at 2, val item included
    assert [ids[i] for i in split.full_history(u, "test")] == ["b", "c", "d", "a"]
    v = by_user["v"]
    assert [ids[i] for i in split.train[v]] == ["a"] and ids[split.val[v]] == "b" and ids[split.test[v]] == "c"


def test_leave_one_out_five_core_on_a_hand_built_log():
    # 6 users x the same 5 items; user x has 4 items, one of them 'rare', which 4 others also have
    users, items = [], []
    for u in range(6):
        for i in range(5):
            users.append(f"u{u}")
            items.append(f"i{i}")
    users += ["x"] * 4
    items += ["i0", "i1", "i2", "rare"]
    users += ["u0", "u1", "u2", "u3"]
    items += ["rare"] * 4
    log = Interactions(users, items, list(range(len(users))))
    split = leave_one_out(log, core=5)
    # pass 1: x (4) goes, 'rare' still has 5; pass 2: 'rare' is down to 4 and goes
    assert sorted(split.user_ids) == [f"u{u}" for u in range(6)]
    assert sorted(split.item_ids) == [f"i{i}" for i in range(5)]
    assert split.stats["interactions"] == 30


def test_interactions_file_formats_and_bad_lines(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,timestamp\nu1,a,1\nu1,b,2020-01-02T00:00:00\n")
    log = load_interactions(p)
    assert log.users == ["u1", "u1"] and log.items == ["a", "b"] and log.timestamps[1] > 1e9
    p.write_text("user,item,timestamp\nu1,a,1\nu1,b,yesterday\n")
    with pytest.raises(InputError, match=r"log\.csv:3: timestamp"):
        load_interactions(p)
    p.write_text("user,item,timestamp\nu1,a,1\nu1,b\n")
    with pytest.raises(InputError, match=r"log\.csv:3: expected 3 fields, got 2"):
        load_interactions(p)
    q = tmp_path / "log.jsonl"
    q.write_text('{"user_id": 1, "item_id": "a", "time": 3}\n{"user_id": 1, "item_id": "b"}\n')
    with pytest.raises(InputError, match=r"log\.jsonl:2: missing time"):
        load_interactions(q)
    q.write_text('{"user_id": 1, "item_id": "a", "time": 3}\nnot json\n')
    with pytest.raises(InputError, match=r"log\.jsonl:2: malformed JSON"):
        load_interactions(q)
    r = tmp_path / "log.tsv"
    r.write_text("who\titem\tts\nu\ta\t1\n")
    with pytest.raises(InputError, match=r"log\.tsv:1: no user column"):
        load_interactions(r)


# ------------------------------------------------------------------ tag sources

def test_tag_files_and_bad_lines(tmp_path):
    j = tmp_path / "t.jsonl"
    j.write_text('{"id": 1, "descriptors": ["a", "b", "a"]}\n{"id": "2", "descriptors": "c|d"}\n')
    t = tagmod.from_file(j)
    assert t.get("1") == ["a", "b"] and t.get("2") == ["c", "d"] and t.get("9") == []
    c = tmp_path / "t.csv"
    c.write_text('id,descriptors\n1,"[""x"", ""y""]"\n2,z|w\n3,\n')
    t = tagmod.from_file(c)
    assert t.get("1") == ["x", "y"] and t.get("2") == ["z", "w"] and t.get("3") == []
    j.write_text('{"id": 1, "descriptors": ["a"]}\n{"id": 2}\n')
    with pytest.raises(InputError, match=r"t\.jsonl:2: no 'descriptors'"):
        tagmod.from_file(j)
    c.write_text('id,descriptors\n1,"[""x"", \n')
    with pytest.raises(InputError, match=r"t\.csv:\d+"):
        tagmod.from_file(c)


def test_tags_from_a_store_run(store):
    run = store.create_run("tag", config={})
    store.put_records(run.id, "tag", [("1", {"descriptors": ["comedy", "family"], "semantic_id": ["comedy", ""],
                                             "by_facet": {}, "status": "ok"})])
    t = tagmod.from_run(store.url.removeprefix("sqlite:///"), run.id)  # a run of an earlier version
    assert t.get("1") == ["comedy", "family"] and t.semantic_ids == {"1": ["comedy", ""]}
    now = store.create_run("tag", config={})  # today's: the tags are the results of the run's items
    store.load_work(now.id, "item", [("2", {"text": "Up"})], cursor={"file": 0, "records": 1, "exhausted": True})
    store.transact(store.work_write(now.id, "item", [("2", {"descriptors": ["family"], "semantic_id": ["x"]})],
                                    [], {}))
    assert tagmod.from_run(store.url.removeprefix("sqlite:///"), now.id).get("2") == ["family"]
    empty = store.create_run("vocab", config={})
    with pytest.raises(ConfigError, match="no item tags"):
        tagmod.from_run(store.url.removeprefix("sqlite:///"), empty.id)


def test_random_tags_keep_cardinality():
    base = tagmod.TagSet("b", {str(i): [f"d{(i * 7 + j) % 11}" for j in range(i % 4)] for i in range(60)})
    for seed in range(5):
        r = tagmod.random_like(base, seed=seed)
        assert r.counts() == base.counts()
        assert r.vocabulary() == base.vocabulary()
        assert all(len(set(v)) == len(v) for v in r.descriptors.values())
    assert tagmod.random_like(base, 0).descriptors != tagmod.random_like(base, 1).descriptors


def test_tfidf_keywords():
    t = tagmod.tfidf_keywords({"1": "Star Wars", "2": "Star Trek: The Movie", "3": "Trek Home", "4": "The Home"})
    assert t.get("1") == ["star"] and t.get("2") == ["star", "trek"] and t.get("4") == ["home"]
    assert tagmod.tfidf_keywords({"1": "Alpha", "2": "Beta"}, min_df=1).get("1") == ["alpha"]


# ------------------------------------------------------------------ metrics

def test_metrics_match_hand_computed_values():
    s = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    m = metrics.ranking_metrics(s, [3], [[]], ks=(1, 2, 3))       # 0.9 and 0.5 above: rank 3 (1-based)
    assert (m["Recall@2"], m["Recall@3"]) == (0.0, 1.0)
    assert m["NDCG@3"] == pytest.approx(1 / math.log2(4))
    m = metrics.ranking_metrics(s, [3], [[0]], ks=(2,))            # exclude item 0: rank 2
    assert m["Recall@2"] == 1.0 and m["NDCG@2"] == pytest.approx(1 / math.log2(3))
    # ties: target tied with 2 others, 1 above -> rank 2, 3 or 4 (1-based), a third each
    m = metrics.ranking_metrics(torch.tensor([[0.2, 0.2, 0.2, 0.9, 0.0]]), [0], [[]], ks=(1, 3, 5))
    assert m["Recall@1"] == 0.0 and m["Recall@3"] == pytest.approx(2 / 3) and m["Recall@5"] == 1.0
    assert m["NDCG@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    # a target never scored (-inf, e.g. not reached by the beam) ties with the other unreached items only
    s = torch.tensor([[0.0, -math.inf, -math.inf, 1.0, -math.inf]])
    m = metrics.ranking_metrics(s, [1], [[4]], ks=(2, 3, 4))       # 2 above, tied with item 2 -> rank 3 or 4
    assert m["Recall@2"] == 0.0 and m["Recall@3"] == pytest.approx(0.5) and m["Recall@4"] == 1.0
    # mean over users, and the excluded items never count, even if the target repeats one
    s = torch.tensor([[1.0, 0.0, 0.5], [0.1, 0.2, 0.3]])
    m = metrics.ranking_metrics(s, [1, 2], [[0, 1], [2]], ks=(1,))
    assert m["Recall@1"] == pytest.approx(0.5)   # user 0: item 2 above; user 1: the repeated target counts


# ------------------------------------------------------------------ constrained decoding

def _random_codes(rng: random.Random, n_items: int, levels: int):
    vocab = [f"t{j}" for j in range(rng.randint(1, 4))]
    descs = [rng.sample(vocab, k=rng.randint(0, len(vocab))) for _ in range(n_items)]
    return build_codes(descs, levels=levels)


def test_constrained_beam_search_never_emits_an_invalid_item():
    rng = random.Random(0)
    for case in range(60):
        n_items, levels = rng.randint(1, 12), rng.randint(1, 3)
        codes = _random_codes(rng, n_items, levels)
        valid = {tuple(c) for c in codes.codes.tolist()}
        assert len(valid) == n_items                                     # collision suffixes make codes unique
        trie = Trie(codes)
        gen = torch.Generator().manual_seed(case)
        adversarial = case % 2 == 1

        def step(rows, prefix, level, gen=gen, adversarial=adversarial, size=codes.sizes):
            logits = torch.randn(len(rows), size[level], generator=gen) * 5
            if adversarial:  # one token strongly preferred everywhere, valid there or not
                logits[:, -1] += 100
            return logits

        for beam in (1, 2, n_items, n_items + 3):
            items, scores = beam_search(step, trie, batch=3, beam=beam)
            assert items.shape == (3, beam)
            for row, srow in zip(items.tolist(), scores.tolist()):
                got = [i for i in row if i >= 0]
                assert all(0 <= i < n_items for i in got)
                assert len(got) == len(set(got)) == min(beam, n_items)   # unique items, as many as possible
                finite = [s for s in srow if s > -math.inf]
                assert finite == sorted(finite, reverse=True) and len(finite) == len(got)


def test_beam_scores_are_exact_log_probabilities_over_valid_items():
    codes = build_codes([["a", "x"], ["a", "y"], ["b"], ["a", "x"]], levels=2)
    trie = Trie(codes)
    torch.manual_seed(0)
    tables = [torch.randn(16, s) for s in codes.sizes]

    def step(rows, prefix, level):
        key = (prefix.sum(1) * 3 + level) % 16 if prefix.shape[1] else torch.full((len(rows),), level)
        return tables[level][key]

    items, scores = beam_search(step, trie, batch=1, beam=4)
    got = dict(zip(items[0].tolist(), scores[0].tolist()))
    total = 0.0
    for item, code in enumerate(codes.codes.tolist()):   # brute force: product of masked softmaxes
        lp = 0.0
        for level in range(len(code)):
            prefix = torch.tensor([code[:level]])
            logits = step(torch.zeros(1, dtype=torch.long), prefix, level)[0]
            ok = trie.child[level][_node(trie, code[:level])] >= 0
            lp += float(torch.log_softmax(logits.masked_fill(~ok, -math.inf), 0)[code[level]])
        assert got[item] == pytest.approx(lp, abs=1e-5)
        total += math.exp(lp)
    assert total == pytest.approx(1.0, abs=1e-5)


def _node(trie: Trie, prefix: list[int]) -> int:
    node = 0
    for level, tok in enumerate(prefix):
        node = int(trie.child[level][node, tok])
    return node


def test_generative_model_only_returns_catalogue_items():
    rng = random.Random(1)
    codes = _random_codes(rng, 30, 2)
    torch.manual_seed(0)
    model = TIGER(codes, max_len=5, config=GenerativeConfig(d_model=16, beam=8)).eval()
    hists = [[rng.randrange(30) for _ in range(rng.randint(1, 7))] for _ in range(20)]
    items, _ = model.generate(hists)
    assert ((items >= 0) & (items < 30)).all()
    assert all(len(set(r)) == len(r) for r in items.tolist())


# ------------------------------------------------------------------ tags that know the answer win

def test_term_retrieval_with_informative_tags_beats_random_tags():
    from tagsmith.evaluators.recsys.train import evaluate

    log, informative = group_world(groups=8, size=6, users=60, length=5)
    split = leave_one_out(log, core=1)
    results = {}
    for name, t in (("informative", informative), ("random", tagmod.random_like(informative, seed=0))):
        vocab, desc = tagmod.encode(t, split.item_ids)
        r = TermRetriever(split.n_items, desc, len(vocab), decay=0.5)
        results[name] = evaluate(r.score, split, "test")
    # 4 of the group's 6 items seen: the target is one of the 2 left, which lead the ranking
    assert results["informative"]["Recall@5"] == 1.0
    assert results["informative"]["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert results["random"]["Recall@10"] < 0.5


def test_sequential_models_learn_more_from_informative_tags():
    log, informative = group_world(ordered=False)
    split = leave_one_out(log, core=1, max_history=8)
    opts = Options(progress=False, ranker=RankerConfig(d_model=32, epochs=6, patience=6, batch=32, dropout=0.1),
                   generative=GenerativeConfig(d_model=32, epochs=6, patience=6, batch=32, beam=20, levels=1,
                                               dropout=0.1))
    got = {}
    for name, t in (("informative", informative), ("random", tagmod.random_like(informative, seed=0))):
        t.name = name
        for model in ("ranker", "generative"):
            got[(model, name)] = run_one(model, split, t, 0, opts)["test"]["NDCG@10"]
    # with the group tag the target is one of <= 7 unseen group-mates; by chance it is 1 of ~90
    assert got[("ranker", "informative")] > got[("ranker", "random")] + 0.1
    assert got[("generative", "informative")] > got[("generative", "random")] + 0.1


# ------------------------------------------------------------------ critiques

def test_critique_rerank_and_honour_rate():
    # items 0..5, descriptors a=0, b=1, y=2; the held-out item 3 has y
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    item_desc = [[0], [0], [1], [2], [2], []]
    out = critique.evaluate_critiques(scores, [3], [[]], item_desc, k=2,
                                      strengths={"soft": 1.0, "strong": 3.0, "hard": math.inf})
    more, not_ = out["more"], out["not"]
    # "more y": top-2 [0, 1] has no y; soft (1 sd = 1.71) is not enough; 3 sd and hard lift 3 and 4 to the top
    assert more["users"] == 1 and more["honour_before"] == 0.0 and more["ndcg@2_before"] == 0.0
    assert more["soft"]["honour_after"] == 0.0
    assert more["strong"] == {"honour_after": 1.0, "ndcg@2_after": 1.0}
    assert more["hard"] == {"honour_after": 1.0, "ndcg@2_after": 1.0}
    # "not a": a is the most shown descriptor the held-out item lacks; demoting it shows [2, 3]
    assert not_["honour_before"] == 0.0
    assert not_["hard"]["honour_after"] == 1.0
    assert not_["hard"]["ndcg@2_after"] == pytest.approx(round(1 / math.log2(3), 5))


def test_critique_skips_users_without_a_consistent_critique():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    out = critique.evaluate_critiques(scores, [2], [[]], [[0], [0], []], k=2)
    assert out["more"] == {"users": 0}                      # the held-out item has no tags
    assert out["not"]["users"] == 1


# ------------------------------------------------------------------ grid, report and CLI

def test_grid_report_and_markdown():
    log, informative = group_world(groups=8, size=6, users=30, length=5)
    split = leave_one_out(log, core=1)
    report = run_grid(split, {"next": lambda seed: informative,
                              "random": lambda seed: tagmod.random_like(informative, seed)},
                      ["pop", "term"], seeds=[0, 1], opts=Options(progress=False))
    rows = {(s["model"], s["tags"]): s for s in report["summary"]}
    assert set(rows) == {("pop", "-"), ("term", "next"), ("term", "random")}
    assert rows[("term", "next")]["test"]["Recall@10"]["mean"] == 1.0
    assert rows[("term", "random")]["test"]["NDCG@10"]["n"] == 2
    md = to_markdown({**report, "commands": ["tagsmith recsys eval --tags x"]})
    assert "tagsmith recsys eval --tags x" in md and "| term | next |" in md
    json.dumps(report)


def test_cli_recsys_eval(tmp_path, monkeypatch, capsys):
    from tagsmith import cli

    log, informative = group_world(groups=8, size=6, users=20, length=5)
    data = tmp_path / "log.jsonl"
    data.write_text("".join(json.dumps({"user": u, "item": i, "timestamp": t}) + "\n"
                            for u, i, t in zip(log.users, log.items, log.timestamps)))
    tags = tmp_path / "tags.csv"
    tags.write_text("id,descriptors\n" + "".join(f"{k},{'|'.join(v)}\n" for k, v in informative.descriptors.items()))
    out = tmp_path / "out"
    rc = cli.main(["recsys", "eval", "--data", str(data), "--tags", f"{tags},random:{tags}", "--model", "term,pop",
                   "--seeds", "2", "--core", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "recsys_log.json").read_text())
    assert {(s["model"], s["tags"]) for s in report["summary"]} == {("pop", "-"), ("term", str(tags)),
                                                                  ("term", f"random:{tags}")}
    assert (out / "recsys_log.md").read_text().startswith("# Downstream recommendation on log")
    # bad input: one line naming the file and line, exit code 2
    data.write_text('{"user": "u", "item": "a", "timestamp": 1}\n{"user": "u"}\n')
    rc = cli.main(["recsys", "eval", "--data", str(data), "--tags", str(tags), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "log.jsonl:2: missing item, timestamp" in err
    rc = cli.main(["recsys", "eval", "--model", "nope", "--no-progress"])
    assert rc == 2 and "unknown nope" in capsys.readouterr().err
    rc = cli.main(["recsys", "eval", "--tags", "typo", "--db", str(tmp_path / "none.db"), "--no-progress"])
    assert rc == 2 and "no store at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()


def test_cli_recsys_eval_on_a_tagging_run(tmp_path, monkeypatch, store, db_path):
    from tagsmith import cli

    log, informative = group_world(groups=8, size=6, users=20, length=5)
    data = tmp_path / "log.csv"
    data.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in
                                                       zip(log.users, log.items, log.timestamps)))
    run = store.create_run("tag", config={})
    store.put_records(run.id, "tag", [(k, {"descriptors": v, "semantic_id": v[:1], "by_facet": {}})
                                      for k, v in informative.descriptors.items()])
    out = tmp_path / "out"
    rc = cli.main(["recsys", "eval", "--data", str(data), "--tags", run.id, "--db", db_path, "--model", "term",
                   "--seeds", "1", "--core", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "recsys_log.json").read_text())
    assert report["summary"][0]["tags"] == run.id and report["summary"][0]["test"]["Recall@5"]["mean"] == 1.0


def test_parallel_jobs_give_the_same_rows():
    log, informative = group_world(groups=6, size=5, users=30, length=5)
    split = leave_one_out(log, core=1)
    sources = {"group": lambda seed: informative, "random": lambda seed: tagmod.random_like(informative, seed)}
    opts = Options(progress=False, ranker=RankerConfig(d_model=16, epochs=2, patience=2, batch=16))
    one = run_grid(split, sources, ["pop", "ranker"], seeds=[0], opts=opts)
    two = run_grid(split, sources, ["pop", "ranker"], seeds=[0], opts=opts, jobs=2)   # 3 tasks, 2 processes
    assert [(r["model"], r["tags"], r["seed"], r["test"]) for r in one["results"]] == \
           [(r["model"], r["tags"], r["seed"], r["test"]) for r in two["results"]]


@pytest.mark.parametrize("loss,negatives", [("softmax", 0), ("softmax", 5), ("bce", 0)])
def test_ranker_losses_train(loss, negatives):
    from tagsmith.evaluators.recsys.ranker import SASRec
    from tagsmith.evaluators.recsys.train import training_windows

    log, informative = group_world(groups=4, size=5, users=20, length=5)
    split = leave_one_out(log, core=1)
    vocab, desc = tagmod.encode(informative, split.item_ids)
    torch.manual_seed(0)
    model = SASRec(split.n_items, desc, len(vocab), split.max_history,
                   RankerConfig(d_model=16, loss=loss, negatives=negatives))
    seqs, tgts = training_windows(split, split.max_history)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        value = model.loss(seqs, tgts)
        opt.zero_grad()
        value.backward()
        opt.step()
        first = value.item() if first is None else first
    assert math.isfinite(value.item()) and value.item() < first


def test_interactions_and_tag_files_share_the_item_reader(tmp_path):
    """One reader stack (core.records) for items, interactions and tag files: gzip, a
    spreadsheet's BOM and Parquet read everywhere; a bad byte is FILE:LINE everywhere."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tagsmith.core.records import load_items

    g = tmp_path / "log.csv.gz"
    g.write_bytes(gzip.compress("\ufeffuser,item,timestamp\nu1,a,1\nu1,b,2\n".encode()))
    log = load_interactions(g)
    assert log.users == ["u1", "u1"] and log.items == ["a", "b"] and log.name == "log"
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["x", "y"], "ts": [5, 6]}), tmp_path / "log.parquet")
    assert load_interactions(tmp_path / "log.parquet").items == ["x", "y"]
    bad = b"id,descriptors\n1,a|b\n2,\xff\xfe\n"
    for name, read in (("t.csv", tagmod.from_file), ("items.csv", lambda p: load_items(p, text_field="descriptors")),
                       ("i.csv", load_interactions)):
        p = tmp_path / name
        p.write_bytes(bad if name != "i.csv" else b"user,item,timestamp\nu,a,1\nu,\xff,2\n")
        with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}:3: invalid UTF-8 at byte offset"):
            read(str(p))
