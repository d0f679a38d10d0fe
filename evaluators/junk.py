"""Evaluation material for data-quality scoring: real text, synthetic junk, ROC AUC, and a
tiny language model to compare training subsets at equal token budgets.

A scorer (Ask-LLM, a classifier, density) is judged two ways here:

1. Detection: mix known junk into clean text (``inject_junk``) and measure how well the
   scores separate the two (``roc_auc``).
2. Usefulness: train the same tiny model on each selected subset for the same number of
   tokens (``train_eval_lm``) and compare held-out loss on clean text.

    >>> clean = ["The council approved the new budget on Tuesday after a long debate about "
    ...          "road repairs, school funding and the future of the public library, which "
    ...          "had faced closure for two years. Residents welcomed the decision."] * 4
    >>> data = inject_junk(clean, rate=0.5, seed=0)
    >>> len(data), sum(label for _, label in data)           # 4 clean + 4 junk
    (8, 4)
    >>> sorted(ex.kind for ex in data if ex.label)
    ['boilerplate', 'keyboard_mash', 'repetition', 'shuffled']
    >>> roc_auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    1.0
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tagsmith.core.errors import ConfigError

__all__ = ["JUNK_KINDS", "Example", "inject_junk", "roc_auc", "clean_corpus", "train_eval_lm"]

JUNK_KINDS = ("boilerplate", "repetition", "shuffled", "keyboard_mash", "fragment")


class Example(tuple):
    """A ``(text, label)`` pair (label 0 clean, 1 junk) that also carries ``kind``: "clean"
    or one of ``JUNK_KINDS``.

    It is a real 2-tuple, so ``for text, label in inject_junk(...)`` works as the
    signature promises, and ``ex.kind`` says which generator made a junk item.

        >>> ex = Example("asdf jkl", 1, "keyboard_mash")
        >>> text, label = ex
        >>> (text, label, ex.kind, ex == ("asdf jkl", 1))
        ('asdf jkl', 1, 'keyboard_mash', True)
    """

    def __new__(cls, text: str, label: int, kind: str = "clean") -> "Example":
        self = super().__new__(cls, (text, label))
        self.kind = kind
        return self

    def __getnewargs__(self):  # so copy and pickle rebuild the kind too
        return (self[0], self[1], self.kind)

    @property
    def text(self) -> str:
        return self[0]

    @property
    def label(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Example(text={self[0][:40]!r}, label={self[1]}, kind={self.kind!r})"


# -- junk generators -------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

_SITES = ["NewsDaily", "ShopRight", "MyPortal", "TravelHub", "CityLink", "Bargain Barn", "TechZone"]
_BOILERPLATE = [
    "We use cookies to improve your experience on our site. By continuing to browse you agree to our use of cookies.",
    "This website uses cookies. Accept all | Reject all | Cookie settings",
    "Home | About Us | Products | Blog | Careers | Contact | Sitemap",
    "Skip to main content. Menu. Search. Sign in. Register. My account.",
    "Copyright © {year} {site}. All rights reserved.",
    "Privacy Policy | Terms of Use | Accessibility | Do Not Sell My Personal Information",
    "Subscribe to our newsletter to get the latest deals delivered to your inbox.",
    "Follow us on Facebook, Twitter, Instagram and YouTube.",
    "Click here to learn more. Read more » Share this article: Email Print Tweet",
    "{site} is a registered trademark of {site} Ltd. Company number {num}.",
    "JavaScript is disabled in your browser. Please enable JavaScript to view this page.",
    "Page {page} of {pages} « Previous | Next »",
    "Loading... Please wait. If you are not redirected automatically, click here.",
    "Add to cart. Free shipping on orders over $50. Returns accepted within 30 days.",
]
_KEYBOARD_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm", "1234567890", "qwertyasdfgh", "jkl;'", "uiop[]"]


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _boilerplate(rng: random.Random, _source: str) -> str:
    parts = rng.sample(_BOILERPLATE, rng.randint(3, 6))
    fill = {"year": rng.randint(2005, 2025), "site": rng.choice(_SITES), "num": rng.randint(10**6, 10**7),
            "page": rng.randint(1, 9), "pages": rng.randint(10, 40)}
    return " ".join(p.format(**fill) for p in parts)


def _repetition(rng: random.Random, source: str) -> str:
    sentence = rng.choice(_sentences(source) or [source])
    return " ".join([sentence] * rng.randint(5, 12))


def _shuffled(rng: random.Random, source: str) -> str:
    words = source.split()
    rng.shuffle(words)
    return " ".join(words)


def _keyboard_mash(rng: random.Random, _source: str) -> str:
    words = []
    for _ in range(rng.randint(30, 80)):
        row = rng.choice(_KEYBOARD_ROWS)
        start = rng.randrange(len(row))
        # Runs along a keyboard row plus random hits: what a hand mashing keys produces.
        word = "".join(row[(start + i) % len(row)] if rng.random() < 0.6 else rng.choice(row)
                       for i in range(rng.randint(2, 12)))
        words.append(word.upper() if rng.random() < 0.05 else word)
    return " ".join(words)


def _fragment(rng: random.Random, source: str) -> str:
    words = source.split()
    n = rng.randint(3, 8)
    if len(words) <= n:
        return " ".join(words)
    # From the middle: the start of a text reads like a headline, the middle like a cut.
    start = rng.randint(len(words) // 4, max(len(words) // 4, len(words) - n - len(words) // 4))
    return " ".join(words[start:start + n])


_GENERATORS = {"boilerplate": _boilerplate, "repetition": _repetition, "shuffled": _shuffled,
               "keyboard_mash": _keyboard_mash, "fragment": _fragment}


def inject_junk(texts: Sequence[str], rate: float, seed: int = 0) -> list[Example]:
    """The clean ``texts`` (label 0) plus generated junk (label 1), shuffled together.

    ``rate`` is the junk share of the returned list: ``n_junk = round(rate * n / (1 - rate))``,
    so 100 clean texts at ``rate=0.2`` give 25 junk items (20% of 125). The five kinds of
    ``JUNK_KINDS`` are dealt round-robin (counts differ by at most one); repetition,
    shuffled and fragment items are made from randomly chosen clean texts, so their
    vocabulary matches the clean data and only their form is wrong. The result is shuffled
    so that junk is not all at the end (an order-biased selector would look good otherwise).
    Every element is an ``Example``: ``(text, label)`` with ``.kind``.

        >>> out = inject_junk(["one clean text. It has two sentences."] * 8, rate=0.2, seed=1)
        >>> len(out), sum(ex.label for ex in out), sorted(ex.kind for ex in out if ex.label)
        (10, 2, ['boilerplate', 'repetition'])
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    texts = [t for t in texts]
    rng = random.Random(seed)
    out = [Example(t, 0, "clean") for t in texts]
    n_junk = math.floor(rate * len(texts) / (1 - rate) + 0.5)
    if n_junk and not texts:
        raise ValueError("junk is made from the clean texts; got none")
    for i in range(n_junk):
        kind = JUNK_KINDS[i % len(JUNK_KINDS)]
        out.append(Example(_GENERATORS[kind](rng, rng.choice(texts)), 1, kind))
    rng.shuffle(out)
    return out


# -- ROC AUC ---------------------------------------------------------------------------------

def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # Start index of each run of equal values, and each run's length.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    lengths = np.diff(np.r_[starts, len(xs)])
    mean_rank = starts + (lengths + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the chance that a random positive (label 1) scores higher
    than a random negative (label 0), ties counting half (the Mann-Whitney U statistic
    divided by n_pos * n_neg).

    Positive means label 1; with junk labelled 1 and a quality score where higher is
    better, pass ``-score`` (or ``1 - labels``) to measure junk detection.

        >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])      # 3 of 4 pairs in order
        0.75
        >>> roc_auc([0.5, 0.5, 0.5], [0, 1, 1])               # all ties
        0.5
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; drop or impute them first")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes among the labels")
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# -- clean text ------------------------------------------------------------------------------

GENSIM_HINT = "pip install --no-deps gensim"
_LEE_FILES = ("lee_background.cor", "lee.cor")


def clean_corpus(limit: int | None = None, min_words: int = 30) -> list[str]:
    """Real English paragraphs that need no network: the Lee news corpus (Lee, Pincombe &
    Welsh 2005; Australian news, ~350 paragraphs of 45-620 words) shipped in gensim's test
    data. Paragraphs under ``min_words`` words and duplicates are dropped; order is the
    files' order; ``limit`` keeps the first n.

    The files are found with ``importlib.util.find_spec`` and read directly: importing
    gensim takes seconds and needs scipy. ``pip install --no-deps gensim`` is enough.

        >>> paras = clean_corpus(limit=5)
        >>> len(paras), all(len(p.split()) >= 30 for p in paras)
        (5, True)
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"clean_corpus needs gensim's bundled test corpora: {GENSIM_HINT}")
    data = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    out: list[str] = []
    seen: set[str] = set()
    for name in _LEE_FILES:
        path = data / name
        if not path.is_file():
            raise ConfigError(f"{path} is missing from the gensim install; reinstall with {GENSIM_HINT}")
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            para = " ".join(line.split())  # the files use one paragraph per line; tidy spaces
            if len(para.split()) >= min_words and para not in seen:
                seen.add(para)
                out.append(para)
                if limit is not None and len(out) >= limit:
                    return out
    return out


# -- a tiny language model -------------------------------------------------------------------

_SEPARATOR = b"\n\n"


def _byte_stream(texts: Sequence[str], n_tokens: int, rng: np.random.Generator | None) -> np.ndarray:
    """``n_tokens`` bytes of the texts joined by blank lines, cycling through them (in a
    fresh random order each pass when ``rng`` is given) until the count is reached."""
    docs = [t.encode("utf-8") + _SEPARATOR for t in texts if t]
    if not docs:
        raise ValueError("no non-empty texts")
    chunks: list[bytes] = []
    have = 0
    while have < n_tokens:
        order = rng.permutation(len(docs)) if rng is not None else range(len(docs))
        for i in order:
            chunks.append(docs[i])
            have += len(docs[i])
            if have >= n_tokens:
                break
        if rng is None:
            break  # held-out text is read once, never cycled
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)[:n_tokens].astype(np.int64)


def _rows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (next byte) as rows of ``seq_len``; the last row is padded with
    target -100, which cross_entropy ignores, so every real target counts exactly once."""
    inputs, targets = stream[:-1], stream[1:]
    n_rows = math.ceil(len(targets) / seq_len)
    x = np.zeros(n_rows * seq_len, dtype=np.int64)
    y = np.full(n_rows * seq_len, -100, dtype=np.int64)
    x[:len(inputs)], y[:len(targets)] = inputs, targets
    return x.reshape(n_rows, seq_len), y.reshape(n_rows, seq_len)


def train_eval_lm(train_texts: Sequence[str], heldout_texts: Sequence[str], *, token_budget: int,
                  seed: int = 0, seq_len: int = 32, batch_size: int = 16, embed_dim: int = 64,
                  layers: int = 2, heads: int = 4, lr: float = 1e-2,
                  max_heldout_tokens: int = 50_000, num_threads: int | None = 1) -> dict:
    """Train a tiny byte-level transformer on ``train_texts`` for exactly ``token_budget``
    predicted bytes, then measure its loss on ``heldout_texts``.

    Every subset gets the same number of training tokens (a small subset is cycled, in a
    fresh order each pass; a large one is cut), so selection methods are compared at equal
    compute, as in the paper. Tokens are UTF-8 bytes (vocabulary 256: no tokenizer to fit,
    nothing unknown). Model: a causal pre-LayerNorm transformer, ``layers`` blocks of width
    ``embed_dim`` with ``heads`` heads and a 4x MLP, learned positions, context ``seq_len``
    (135k parameters at the defaults). AdamW with a 5% warm-up and a cosine decay to 10%
    of ``lr``, gradient clipping at 1.

    Why this shape: a 2-layer GRU (hidden 128) was tried first; its time loop is
    sequential, and it took 84 s for 200k tokens (on a loaded machine) where this model
    takes 4-9 s. Short windows and small batches (512 tokens a step) buy many updates per
    token, which is what a 200k-token budget needs: held-out loss 2.23 nats/byte after 200k
    bytes of news text, against 2.43 with 64-byte windows (8 a batch) and 2.38 with 32x32
    batches at the same budget.

    Returns ``heldout_loss`` (mean nats per held-out byte; ``/ math.log(2)`` for bits per
    byte), ``heldout_tokens``, ``train_loss`` (mean over the last 10% of steps),
    ``train_tokens`` (== token_budget), ``steps``, ``train_s``, ``eval_s``, ``wall_s``.

    Torch's global state is left as found: the RNG is forked (``seed`` fixes the
    initialisation and the data order without touching the caller's RNG) and the thread
    count is restored on return. ``num_threads`` defaults to 1: the model is too small for
    intra-op parallelism to pay, and on a busy 2-core machine two OpenMP threads spin
    against each other (a 200k-token run took 155 s with 2 threads and 9.5 s with 1 under
    load; identical losses). ``None`` keeps torch's current setting. Measured on 2 CPU
    cores: a 200k-token budget trains in ~4-8 s (391 steps), and 50k held-out bytes are
    scored in ~1 s.

        >>> texts = clean_corpus(limit=40)
        >>> r = train_eval_lm(texts[:30], texts[30:], token_budget=8192, seed=0)
        >>> r["train_tokens"], r["heldout_loss"] < math.log(256)    # better than uniform
        (8192, True)
    """
    import torch
    import torch.nn.functional as F

    if token_budget < 1:
        raise ValueError("token_budget must be at least 1")
    if embed_dim % heads:
        raise ValueError("embed_dim must be divisible by heads")
    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            # budget + 1 bytes give exactly budget (input, next byte) pairs.
            x, y = _rows(_byte_stream(train_texts, token_budget + 1, rng), seq_len)
            order = rng.permutation(len(x))
            x, y = torch.from_numpy(x[order]), torch.from_numpy(y[order])

            model = _tiny_transformer(embed_dim, layers, heads, seq_len)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            steps = math.ceil(len(x) / batch_size)
            warmup = max(1, steps // 20)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))
            losses: list[float] = []
            model.train()
            for s in range(steps):
                xb, yb = x[s * batch_size:(s + 1) * batch_size], y[s * batch_size:(s + 1) * batch_size]
                loss = F.cross_entropy(model(xb).reshape(-1, 256), yb.reshape(-1), ignore_index=-100)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
            train_s = time.perf_counter() - start

            hx, hy = _rows(_byte_stream(heldout_texts, max_heldout_tokens + 1, None), seq_len)
            hx, hy = torch.from_numpy(hx), torch.from_numpy(hy)
            total, count = 0.0, int((hy != -100).sum())
            if count == 0:
                raise ValueError("held-out texts give no target bytes")
            model.eval()
            eval_batch = 16 * batch_size  # no gradients to keep: bigger batches are fine
            with torch.inference_mode():
                for s in range(0, len(hx), eval_batch):
                    logits = model(hx[s:s + eval_batch])
                    total += F.cross_entropy(logits.reshape(-1, 256), hy[s:s + eval_batch].reshape(-1),
                                             ignore_index=-100, reduction="sum").item()
    finally:
        torch.set_num_threads(old_threads)
    wall = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]
    return {"heldout_loss": total / count, "heldout_tokens": count, "train_loss": sum(tail) / len(tail),
            "train_tokens": int((y != -100).sum()), "steps": steps, "train_s": train_s,
            "eval_s": wall - train_s, "wall_s": wall}


def _tiny_transformer(dim: int, layers: int, heads: int, context: int):
    """A causal byte-level transformer returning (B, T, 256) logits. Built in a function
    so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp(self.ln2(x))

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.pos = nn.Embedding(256, dim), nn.Embedding(context, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, 256)

        def forward(self, ids):
            x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    return TinyLM()
