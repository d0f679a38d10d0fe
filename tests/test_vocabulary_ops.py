"""The vocabulary's edit operations, bounds and diffs, and the metrics over tags."""

from __future__ import annotations

import pytest

from tagsmith.evaluators.vocab_metrics import TagMetrics, agreement, entropy, tag_metrics
from tagsmith.core.vocabulary import (Bounds, Descriptor, Edit, Facet, Vocabulary, apply_edits, change_rate, diff,
                                 normalise, slug)

B = Bounds(max_facets=3, max_per_facet=4, max_total=7)


def vocab() -> Vocabulary:
    return Vocabulary(facets=[
        Facet(name="genre", definition="kind", descriptors=[Descriptor(name="comedy"), Descriptor(name="drama"),
                                                            Descriptor(name="funny")]),
        Facet(name="mood", definition="feel", descriptors=[Descriptor(name="dark"), Descriptor(name="light")])])


def test_slug():
    assert slug(" Film Noir!! ") == "film-noir" and slug("Children's") == "children-s"


def test_each_operation_applies():
    r = apply_edits(vocab(), [
        Edit(op="add", name="Action", facet="genre", definition="fights"),
        Edit(op="merge", sources=["comedy", "funny"], name="comedy", definition="meant to amuse"),
        Edit(op="rename", name="light", new_name="cheerful"),
        Edit(op="move", name="dark", facet="genre"),
        Edit(op="remove", name="drama"),
        Edit(op="add_facet", name="era", definition="when"),
        Edit(op="add", name="classic", facet="era"),
    ], B)
    assert not r.rejected, r.rejected
    v = r.vocabulary
    assert [d.name for d in v.facet("genre").descriptors] == ["comedy", "action", "dark"]
    assert next(d for f in v.facets for d in f.descriptors if d.name == "comedy").definition == "meant to amuse"
    assert [d.name for d in v.facet("mood").descriptors] == ["cheerful"]
    assert r.renames == {"funny": "comedy", "light": "cheerful"}
    assert v.facet("era").descriptors[0].name == "classic"
    assert diff(vocab(), v) == {"added": ["action", "cheerful", "classic"], "removed": ["drama", "funny", "light"],
                                "moved": ["dark"]}
    assert change_rate(vocab(), v) == pytest.approx(7 / 5)


def test_split_replaces_in_place():
    r = apply_edits(vocab(), [Edit(op="split", name="drama", into=[Descriptor(name="crime-drama"),
                                                                   Descriptor(name="war-drama")])], B)
    assert [d.name for d in r.vocabulary.facet("genre").descriptors] == ["comedy", "crime-drama", "war-drama", "funny"]


@pytest.mark.parametrize("edit,why", [
    (Edit(op="add", name="comedy", facet="genre"), "already exists"),
    (Edit(op="add", name="x", facet="nope"), "no facet"),
    (Edit(op="add", name="name", facet="genre"), "not a usable name"),
    (Edit(op="add", name="1606", facet="genre"), "not a usable name"),
    (Edit(op="remove", name="ghost"), "no descriptor"),
    (Edit(op="merge", sources=["comedy"], name="c"), "at least two"),
    (Edit(op="split", name="drama", into=[Descriptor(name="a")]), "at least two parts"),
    (Edit(op="move", name="dark", facet="mood"), "already in that facet"),
    (Edit(op="rename", name="dark", new_name="comedy"), "already exists"),
])
def test_invalid_edits_are_rejected_with_reason(edit, why):
    r = apply_edits(vocab(), [edit], B)
    assert not r.applied and why in r.rejected[0][1]
    assert r.vocabulary == vocab()


def test_bounds_hold_and_good_edits_still_apply():
    edits = [Edit(op="add", name=f"g{i}", facet="genre") for i in range(3)] + [Edit(op="add", name="x", facet="mood")]
    r = apply_edits(vocab(), edits, B)
    assert [e.name for e in r.applied] == ["g0", "x"]  # genre holds 4 at most; 7 in all
    assert r.vocabulary.size() == 7 and len(r.rejected) == 2
    assert "exceed 4" in r.rejected[0][1]


def test_normalise_bounds_dedups_and_drops_reserved():
    raw = Vocabulary(facets=[Facet(name="Genre", descriptors=[Descriptor(name=n) for n in
                                                             ["Comedy", "comedy", "Name", "a", "b", "c", "d"]]),
                             Facet(name="facet", descriptors=[Descriptor(name="z")]),
                             Facet(name="mood", descriptors=[Descriptor(name="e"), Descriptor(name="f"),
                                                             Descriptor(name="g"), Descriptor(name="h")])])
    v = normalise(raw, B)
    assert [f.name for f in v.facets] == ["genre", "mood"]
    assert [d.name for d in v.facet("genre").descriptors] == ["comedy", "a", "b", "c"]
    assert v.size() == 7


def test_normalise_drops_names_without_a_letter():
    """SmolLM2 drafted a facet "1606" holding "207", "531", "83" (ids copied from items)."""
    raw = Vocabulary(facets=[Facet(name="1606", descriptors=[Descriptor(name=n) for n in ["207", "531"]]),
                             Facet(name="era", descriptors=[Descriptor(name=n) for n in ["83", "1950s", "3-d"]])])
    v = normalise(raw, B)
    assert [f.name for f in v.facets] == ["era"]
    assert v.names() == ["1950s", "3-d"]


def test_metrics_hand_computed():
    v = vocab()
    tags = {"1": ["comedy", "dark"], "2": ["comedy", "dark"], "3": ["comedy", "dark"], "4": []}
    m = tag_metrics(v, tags)
    assert m["coverage"] == 0.75 and m["descriptors_per_item"] == 1.5
    assert m["coverage_per_facet"] == {"genre": 0.75, "mood": 0.75}
    assert m["unused_descriptors"] == ["drama", "funny", "light"]
    assert m["redundant_pair_share"] == 1.0  # comedy and dark always co-occur
    h, hn = entropy([3, 3, 0, 0, 0])
    assert h == pytest.approx(1.0) and hn == pytest.approx(1 / 2.321928, rel=1e-4)
    assert tag_metrics(v, {"a": ["comedy"], "b": ["dark"]})["redundant_pair_share"] == 0.0
    # accumulated one item at a time, as for a million items: the same numbers
    acc = TagMetrics(v)
    for names in tags.values():
        acc.add(names)
    assert acc.result() == m
    assert agreement({"1": [["a", "b"], ["a"]], "2": [["c"], ["c"]]}) == pytest.approx((0.5 + 1.0) / 2)
    assert agreement({"1": [["a"]]}) is None
