"""Multi-token concept groups (featlib.phrases): occurrences, rules, selectivity against sklearn's AUROC, planted
multi-token concepts recovered, one tokenizer and two tokenizers giving the same groups, group interactions
against their null, and the written result."""

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from featlib import config, phrases
from featlib.study import findings

P = config.Phrases(rule="last", n_controls=4, min_auroc=0.75, max_features=8, n_shuffles=100, alpha=0.05,
                   min_occurrences=5, seed=0)
FILLER = ("the people of our nation will work for a better future and we must act now because the world is watching "
          "and history will judge what we do here today in this great hall of democracy").split()
PLANTED = {"us": ["united states"], "court": ["supreme court", "high court"]}


def unitize(texts, split):
    """UnitText with one unit per piece of ``split(word)`` for every word (each unit keeps the word's leading space)."""
    spans, out = [], []
    for r, text in enumerate(texts):
        for m in re.finditer(r" ?\S+", text):
            pieces, start = split(m.group(0)), m.start()
            for piece in pieces:
                spans.append((r, start, start + len(piece)))
                start += len(piece)
        out.append(text)
    return phrases.UnitText(out, np.array(spans, dtype=np.int64))


def words(word):
    return [word]


def halves(word):
    """Another tokenizer: long words not in a phrase cut in two; the phrases' words stay whole."""
    keep = {" united", " states", " supreme", " court", " high", " nations"}
    if len(word) > 6 and word.lower() not in keep:
        return [word[: len(word) // 2], word[len(word) // 2:]]
    return [word]


def corpus(seed=0, rows=60):
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(rows):
        seq = list(rng.choice(FILLER, 30))
        for phrase in ("united states", "supreme court", "united nations", "high court"):
            if rng.random() < 0.5:
                seq.insert(int(rng.integers(0, len(seq))), phrase.title() if rng.random() < 0.5 else phrase)
        texts.append(" " + " ".join(seq))
    return texts


def planted_codes(ut, seed=0, d=20):
    """Feature 3 fires at the last unit of every "united states", feature 5 at the last unit of every court phrase
    (both "supreme court" and "high court": a concept, not a token), feature 7 at every unit starting "United"
    (a token feature, in "united nations" too), the rest at random; all also fire at random 2 % of the units."""
    rng = np.random.default_rng(seed)
    n = len(ut.spans)
    codes = rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.02)
    for name, feature in (("us", 3), ("court", 5)):
        for units in phrases.find_occurrences(ut, PLANTED[name]).units:
            codes[units[-1], feature] = 2.0 + rng.random()
    for u, (r, s, e) in enumerate(ut.spans):
        if ut.texts[r][s:e].strip().lower() == "united":
            codes[u, 7] = 2.0 + rng.random()
    return sp.csr_array(codes)


def test_default_groups_are_data_with_sources_and_enough_phrases():
    import yaml

    raw = yaml.safe_load(phrases.PHRASE_GROUPS.read_text())["groups"]
    assert all(entry["source"].strip() for entry in raw.values())
    groups = phrases.resolve_groups("default")
    assert sum(len(p) for p in groups.values()) >= 150
    assert sum(len(p.split()) > 1 or "-" in p for ph in groups.values() for p in ph) >= 100
    from featlib.subspaces import CONCEPT_GROUPS
    assert list(groups)[:8] == list(CONCEPT_GROUPS), "the single-token groups carry over, in order"
    with pytest.raises(ValueError, match="has no phrases"):
        phrases.resolve_groups({"empty": ["  "]})


def test_occurrences_longest_first_case_and_whitespace_whole_words():
    ut = unitize([" New York City and new  york, NEW\nYORK. newyorker yorkshire new yorkers"], words)
    occ = phrases.find_occurrences(ut, ["new york", "new york city"])
    assert occ.phrase.tolist() == [1, 0, 0]  # "New York City" once, then two "new york"; no match inside words
    assert [len(u) for u in occ.units] == [3, 2, 2]
    text, spans = ut.texts[0], ut.spans
    assert [text[spans[u[0], 1]:spans[u[-1], 2]].strip() for u in occ.units] == ["New York City", "new  york,", "NEW\nYORK."]


def test_controls_avoid_every_occurrence_and_match_lengths():
    ut = unitize(corpus(), words)
    occ = phrases.find_occurrences(ut, ["supreme court", "united states"])
    ctrl = phrases.control_windows(ut, occ, 3, seed=1)
    assert len(ctrl) == 3 * len(occ)
    assert [len(w) for w in ctrl] == [len(u) for u in occ.units for _ in range(3)]
    assert not np.isin(np.concatenate(ctrl), occ.covered).any()
    assert all(len(set(ut.spans[w, 0])) == 1 and (np.diff(w) == 1).all() for w in ctrl)
    assert all((a == b).all() for a, b in zip(ctrl, phrases.control_windows(ut, occ, 3, seed=1)))


def test_rules_on_a_known_window():
    codes = sp.csr_array(np.array([[0, 1.0], [2.0, 0], [4.0, 3.0], [0, 0]]))
    windows = [np.array([0, 1, 2]), np.array([3])]
    assert phrases.span_codes(codes, windows, "last").toarray().tolist() == [[4, 3], [0, 0]]
    assert phrases.span_codes(codes, windows, "max").toarray().tolist() == [[4, 3], [0, 0]]
    assert np.allclose(phrases.span_codes(codes, windows, "mean").toarray(), [[2, 4 / 3], [0, 0]])
    with pytest.raises(ValueError, match="allowed: last, max, mean"):
        phrases.span_codes(codes, windows, "first")


def test_selectivity_is_sklearns_auroc():
    rng = np.random.default_rng(0)
    on = rng.exponential(1.0, (40, 6)) * (rng.random((40, 6)) < 0.5)
    off = rng.exponential(0.7, (90, 6)) * (rng.random((90, 6)) < 0.4)
    auroc, null = phrases.selectivity(sp.csr_array(on), sp.csr_array(off), 50, seed=0)
    labels = np.r_[np.ones(40), np.zeros(90)]
    for f in range(6):
        assert auroc[f] == pytest.approx(roc_auc_score(labels, np.r_[on[:, f], off[:, f]]))
    assert null.shape == (50,) and (null >= 0).all() and (null <= 1).all()


@pytest.mark.parametrize("rule", ["last", "max", "mean"])
def test_planted_multi_token_concepts_are_recovered(rule):
    ut = unitize(corpus(), words)
    codes = planted_codes(ut)
    us = phrases.members(codes, ut, PLANTED["us"], P.model_copy(update={"rule": rule}))
    court = phrases.members(codes, ut, PLANTED["court"], P.model_copy(update={"rule": rule}))
    assert us.occurrences >= 20 and court.phrases_found == 2
    assert 3 in us.features and 5 in court.features and 3 not in court.features
    noise = set(range(20)) - {3, 5, 7}
    assert not noise & set(us.features.tolist()) and not noise & set(court.features.tolist())
    # the token feature of "United" is read only by rules that look inside the phrase
    assert (7 in us.features) == (rule != "last")
    assert us.features[0] == 3 if rule == "last" else True


def test_a_group_that_is_no_concept_has_no_members():
    ut = unitize(corpus(), words)
    none = phrases.members(planted_codes(ut), ut, ["people", "world"], P)
    assert none.occurrences > 20 and len(none.features) == 0 and 0.5 <= none.threshold < 0.75
    rare = phrases.members(planted_codes(ut), ut, ["no such phrase"], P)
    assert rare.occurrences == 0 and not len(rare.features) and np.isnan(rare.threshold)


def test_one_tokenizer_and_two_tokenizers_give_the_same_groups():
    """The same text cut by one tokenizer (a unit per word) and by another that splits other words but not the
    phrases' words: the phrases cover the same text, the planted features fire at the same phrase ends, and the
    groups' members are the same (the controls differ: they are drawn among other units)."""
    texts = corpus(seed=3)
    one, two = unitize(texts, words), unitize(texts, halves)
    assert len(two.spans) > len(one.spans)
    for name, group in PLANTED.items():
        o1, o2 = phrases.find_occurrences(one, group), phrases.find_occurrences(two, group)
        assert o1.phrase.tolist() == o2.phrase.tolist()
        ends = [[ut.spans[u[-1], 2] for u in o.units] for ut, o in ((one, o1), (two, o2))]
        assert ends[0] == ends[1]
        m1 = phrases.members(planted_codes(one, seed=4), one, group, P)
        m2 = phrases.members(planted_codes(two, seed=4), two, group, P)
        assert m1.features.tolist() == m2.features.tolist() and len(m1.features)


def test_interactions_agree_when_planted_and_not_for_unrelated_dictionaries():
    rng = np.random.default_rng(0)
    d_model, d_sae = 24, 200
    groups = [np.arange(i * 6, i * 6 + 6) for i in range(6)]

    def dictionary(seed):
        r = np.random.default_rng(seed)
        D = r.standard_normal((d_sae, d_model))
        base = r.standard_normal((3, d_model))  # groups 0-2 share one small subspace, 3-5 are random
        for g in groups[:3]:
            D[g] = r.standard_normal((6, 3)) @ base + 0.1 * r.standard_normal((6, d_model))
        return D
    rotation = np.linalg.qr(rng.standard_normal((d_model, d_model)))[0]
    a, b = dictionary(1), dictionary(1) @ rotation
    names = [f"g{i}" for i in range(6)]
    pool = np.arange(d_sae)
    planted = phrases.interaction_agreement(a, b, names, groups, groups, pool, pool, 100, seed=0)
    assert planted.agreement > 0.95 and planted.p < 0.05 and planted.reason == ""
    assert np.allclose(np.diag(planted.a), 1) and planted.a.shape == (6, 6)
    unrelated = phrases.interaction_agreement(a, dictionary(2), names, groups, [np.arange(100 + i * 6, 106 + i * 6) for i in range(6)],
                                              pool, pool, 100, seed=0)
    assert unrelated.p > 0.05
    few = phrases.interaction_agreement(a, b, names, groups[:2] + [np.zeros(0, int)] * 4, groups, pool, pool, 10, 0)
    assert np.isnan(few.agreement) and np.isnan(few.p) and "needs at least 3" in few.reason


def test_findings_place_groups_between_floor_and_ceiling_and_judge_interactions():
    rows = []
    for kind, comp, score in (("cross", "cross A1–B1", 0.5), ("seed", "seed A1–A1 (seed 1)", 0.8),
                              ("random_init", "random_init A1–A1 (random init)", 0.2)):
        rows.append({"kind": kind, "comparison": comp, "group": "Places", "pairs": 12, "scorable": True,
                     "rsa": score, "rsa p (re-pair)": 0.01})
    text = findings.group_findings(pd.DataFrame(rows), "rsa", "phrase groups")
    assert "1 of 1 phrase groups have a scorable cross-model RSA; 1 of them are above" in text
    assert "floor 0.200 (A1), mean ceiling 0.800 — above its null and every floor" in text
    assert "of the way from floor to ceiling" not in text  # only the calibrated scale places a group (test_findings)
    inter = pd.DataFrame([{"kind": "cross", "groups": 5, "agreement (r)": 0.7, "null mean": 0.2, "null 95th percentile": 0.5,
                           "p": 0.01, "not scorable": ""},
                          {"kind": "random_init", "groups": 0, "agreement (r)": np.nan, "null mean": np.nan,
                           "null 95th percentile": np.nan, "p": np.nan, "not scorable": "0 groups have members"}])
    text = findings.interaction_findings(inter)
    assert "r = 0.70" in text and "they agree beyond their null" in text and "not scorable (0 groups have members)" in text
    assert "do not agree" in findings.interaction_findings(inter.assign(p=0.3))


def test_interaction_matrix_is_the_mean_squared_cosine_of_scipys_principal_angles():
    from scipy.linalg import subspace_angles

    rng = np.random.default_rng(1)
    dec = rng.standard_normal((30, 12))
    dec[5] = dec[0] + dec[1]  # a member in the span of others: rank below its count
    groups = [np.arange(0, 6), np.arange(6, 9), np.arange(9, 19), np.zeros(0, int)]
    m = phrases.interaction_matrix(dec, groups)
    for i in range(3):
        for j in range(3):
            ref = np.mean(np.cos(subspace_angles(dec[groups[i]].T, dec[groups[j]].T)) ** 2)
            assert m[i, j] == pytest.approx(ref)
    assert np.isnan(m[3]).all() and np.isnan(m[:, 3]).all()
