"""Downstream recommendation: judge a descriptor vocabulary by what it does for recommenders.

One file per concept:

- ``data``      interactions (MovieLens-100k or a CSV/TSV/JSONL file), 5-core, leave-one-out
- ``tags``      item -> ordered descriptor sequence (a tagsmith run, a file, genres, random, TF-IDF)
- ``metrics``   Recall@K / NDCG@K over the full item set (ties broken at random, in expectation)
- ``term``      term-based retrieval (BM25 / TF-IDF over recency-weighted profiles; no training)
- ``trie``      semantic-ID codes with collision suffixes and trie-constrained beam search
- ``generative`` TIGER-style generative retrieval over descriptor codes
- ``ranker``    SASRec-style sequential ranker, item IDs + mean descriptor embeddings
- ``critique``  "not X" / "more Y" re-ranking and how often the new top-k honours it
- ``popularity`` the most-popular floor
- ``train``     the shared loop: epochs, progress bar, early stopping on validation NDCG@10
- ``evaluate``  models x tag sources x seeds -> JSON and a markdown table

    >>> from tagsmith.evaluators.recsys import data, evaluate, tags
    >>> split = data.load_split("movielens")                  # 943 users, 1,349 items after 5-core
    >>> report = evaluate.run_grid(split, {"genres": lambda seed: tags.movielens_genres()}, ["term"], seeds=[0])
    >>> report["summary"][0]["test"]["NDCG@10"]["mean"]     # doctest: +SKIP
    0.0185
"""

# The model names, here rather than in ``evaluate`` (which loads torch): the CLI lists them
# in its help text.
MODELS = ("pop", "term", "generative", "ranker", "ranker-id", "critique")
TAG_FREE = ("pop", "ranker-id")   # one row per seed, whatever the tag sources
