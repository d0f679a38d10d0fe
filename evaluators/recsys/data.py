"""Interactions for the downstream protocol: load, order by time, k-core, leave-one-out.

The protocol of TIGER / P5 / ActionPiece: every interaction is an implicit positive,
each user's items are ordered by time (ties keep the file's order), users and items with
fewer than 5 interactions are dropped until none is left (5-core), and each user's last
item is the test target, the second-to-last the validation target, the rest training.

    >>> log = Interactions(users=["u"] * 6, items=list("abcdef"), timestamps=[1, 2, 3, 4, 6, 5])
    >>> split = leave_one_out(log, core=1)
    >>> [split.item_ids[i] for i in split.train[0]], split.item_ids[split.val[0]], split.item_ids[split.test[0]]
    (['a', 'b', 'c', 'd'], 'f', 'e')

Interaction files (``load_interactions(path)``): CSV, TSV, JSONL or Parquet (gzip too) with
a user, an item and a timestamp column (``user``/``user_id``, ``item``/``item_id``,
``timestamp``/``time``/``ts``; a timestamp is a number or an ISO date), read by the same
reader as items (``core.records``). A bad line raises InputError naming the file and the
line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tagsmith.core.datasets import movielens_dir
from tagsmith.core.errors import InputError
from tagsmith.core.records import checked, detect_format, read_records

CORE = 5          # users and items kept need at least this many interactions
MAX_HISTORY = 20  # the models see at most this many most recent items

USER_COLUMNS = ("user", "user_id", "userId", "reviewerID")
ITEM_COLUMNS = ("item", "item_id", "itemId", "movieId", "asin", "parent_asin")
TIME_COLUMNS = ("timestamp", "time", "ts", "unixReviewTime")


@dataclass
class Interactions:
    """Parallel lists, one entry per interaction, in file order."""

    users: list[str]
    items: list[str]
    timestamps: list[float]
    name: str = "interactions"

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Split:
    """A leave-one-out split. Items are indexed 0..n_items-1 (``item_ids[i]`` is the
    original id); ``train[u]`` is user u's chronological training sequence, ``val[u]`` and
    ``test[u]`` the held-out items."""

    item_ids: list[str]
    user_ids: list[str]
    train: list[list[int]]
    val: list[int]
    test: list[int]
    max_history: int = MAX_HISTORY
    name: str = "interactions"
    stats: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def full_history(self, user: int, stage: str) -> list[int]:
        """Everything the user did before the target of ``stage`` ('val' or 'test')."""
        if stage == "val":
            return self.train[user]
        if stage == "test":
            return self.train[user] + [self.val[user]]
        raise ValueError(f"stage must be 'val' or 'test', not {stage!r}")

    def history(self, user: int, stage: str) -> list[int]:
        """The model's input: the last ``max_history`` items before the target."""
        return self.full_history(user, stage)[-self.max_history:]

    def targets(self, stage: str) -> list[int]:
        return self.val if stage == "val" else self.test


# ------------------------------------------------------------------------------ loading

def movielens_interactions() -> Interactions:
    """MovieLens-100k ratings (ml-100k.inter in the recbole wheel), every rating a positive."""
    log = _read(movielens_dir() / "ml-100k.inter", "tsv")
    log.name = "movielens"
    return log


_SUFFIX_FORMATS = {".inter": "tsv", ".txt": "tsv"}  # recbole's atomic files are TSV


def load_interactions(path: str | Path) -> Interactions:
    """A CSV/TSV/JSONL/Parquet interactions file, gzip too (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    log = _read(p, _SUFFIX_FORMATS.get(p.suffix.lower()))
    if not len(log):
        raise InputError(f"{p}: no interactions")
    log.name = p.name.split(".")[0]
    return log


def _pick(columns: list[str], names: tuple[str, ...], path: Path, what: str, where: str) -> str:
    for n in names:
        if n in columns:
            return n
    raise InputError(f"{path}:{where}: no {what} column (expected one of {', '.join(names)}; found "
                     f"{', '.join(columns)})")


def _timestamp(value, path: Path, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InputError(f"{path}:{where}: timestamp {text[:40]!r} is neither a number nor an ISO date") from None


def _read(path: Path, fmt: str | None) -> Interactions:
    """Interactions through the project's one reader (core.records): the same FILE:LINE
    errors as items. Column names may carry recbole's type suffix ('user_id:token')."""
    kind = detect_format(str(path), fmt)
    users, items, times = [], [], []
    keys: tuple[str, str, str] | None = None
    for where, rec in checked(str(path), read_records(str(path), kind)):
        rec = {str(k).split(":", 1)[0].strip(): v for k, v in rec.items()}
        if keys is None:  # the first record fixes the column names (a header is line 1)
            cols, at = list(rec), "1" if kind in ("csv", "tsv") else where
            keys = (_pick(cols, USER_COLUMNS, path, "user", at), _pick(cols, ITEM_COLUMNS, path, "item", at),
                    _pick(cols, TIME_COLUMNS, path, "timestamp", at))
        missing = [k for k in keys if rec.get(k) is None or not str(rec[k]).strip()]
        if missing:
            raise InputError(f"{path}:{where}: missing {', '.join(missing)}")
        users.append(str(rec[keys[0]]).strip())
        items.append(str(rec[keys[1]]).strip())
        times.append(_timestamp(rec[keys[2]], path, where))
    return Interactions(users, items, times)


# ------------------------------------------------------------------------------ protocol

def k_core(log: Interactions, k: int = CORE) -> list[int]:
    """Indices of the interactions kept when users and items with fewer than k interactions
    are dropped, repeatedly, until every remaining user and item has at least k (dropping
    an item can push a user under k and vice versa).

        users a,a,a,b,b; items x,y,x,x,z; k=2 -> y and z go, then b has one left -> [0, 2]
    """
    keep = list(range(len(log)))
    while True:
        uc = Counter(log.users[i] for i in keep)
        ic = Counter(log.items[i] for i in keep)
        kept = [i for i in keep if uc[log.users[i]] >= k and ic[log.items[i]] >= k]
        if len(kept) == len(keep):
            return kept
        keep = kept


def leave_one_out(log: Interactions, core: int = CORE, max_history: int = MAX_HISTORY) -> Split:
    """k-core, then per user: order by time (stable, so ties keep the file's order), last
    item test, second-to-last validation, the rest training. Users left with fewer than 3
    interactions (possible only when core < 3) are dropped: they have nothing to train on."""
    keep = k_core(log, core) if core > 1 else list(range(len(log)))
    by_user: dict[str, list[int]] = {}
    for i in keep:
        by_user.setdefault(log.users[i], []).append(i)
    item_index: dict[str, int] = {}
    item_ids: list[str] = []
    user_ids, train, val, test = [], [], [], []
    # items are numbered in order of first appearance in the file: deterministic, data-independent of seeds
    for i in keep:
        if log.items[i] not in item_index:
            item_index[log.items[i]] = len(item_ids)
            item_ids.append(log.items[i])
    for user, rows in by_user.items():
        if len(rows) < 3:
            continue
        rows = sorted(rows, key=lambda r: log.timestamps[r])  # sorted() is stable: ties by file order
        seq = [item_index[log.items[r]] for r in rows]
        user_ids.append(user)
        train.append(seq[:-2])
        val.append(seq[-2])
        test.append(seq[-1])
    if not user_ids:
        raise InputError(f"{log.name}: no user has enough interactions after {core}-core filtering")
    n_inter = sum(len(t) + 2 for t in train)
    stats = {"users": len(user_ids), "items": len(item_ids), "interactions": n_inter,
             "raw_interactions": len(log), "core": core, "max_history": max_history,
             "density": round(n_inter / (len(user_ids) * len(item_ids)), 5),
             "mean_sequence_length": round(n_inter / len(user_ids), 2)}
    return Split(item_ids, user_ids, train, val, test, max_history=max_history, name=log.name, stats=stats)


def load_split(source: str = "movielens", core: int = CORE, max_history: int = MAX_HISTORY) -> Split:
    """'movielens' (the bundled MovieLens-100k) or an interactions file -> a Split."""
    log = movielens_interactions() if source == "movielens" else load_interactions(source)
    return leave_one_out(log, core=core, max_history=max_history)
