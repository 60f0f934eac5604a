"""The "What we find" paragraphs of the notebooks, written from the computed numbers (markdown)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..calibration import ABOVE, NOT_SCORABLE
from ..config import REFERENCE_KINDS
from ..plots import format_p
from ..similarity import METRIC_NAMES
from .core import Study
from .pairs import Match

if TYPE_CHECKING:
    import pandas as pd

HEAD = "**What we find.** "


def per_comparison(parts: dict[str, str]) -> str:
    """One "What we find" paragraph from the findings of each comparison (name -> its text): the text itself
    when there is one comparison, else each under its name."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    return HEAD + "\n\n".join(f"**{name}.** {text.removeprefix(HEAD)}" for name, text in parts.items())


def by_comparison(study: Study, findings: Callable[..., str], *tables: pd.DataFrame) -> str:
    """``findings`` of each of the profile's comparisons, each given the rows of ``tables`` (their ``comparison``
    column) of that comparison and of its ceilings and floors; joined by :func:`per_comparison`."""
    parts = {}
    for c in study.listed:
        names = [c.name] + [r.name for r in study.references(c)]
        parts[c.name] = findings(*(t[t.comparison.isin(names)] for t in tables))
    return per_comparison(parts)


def _share(lo: float, x: float, hi: float) -> str:
    return (
        f"{(x - lo) / (hi - lo):.0%} of the way from the floor to the ceiling"
        if hi > lo
        else "the ceiling is not above the floor"
    )


def extraction_findings(extraction: pd.DataFrame, norms: pd.DataFrame, names: dict[str, str]) -> str:
    """Notebook 01: the units both models read and how each model's residual-stream norm grows with depth.
    ``extraction``: :func:`featlib.study.extraction_table`; ``norms``: :func:`featlib.study.residual_norms`."""
    lines, last, grows = [], {}, True
    for mid, rows in norms.groupby("model"):
        first, end = rows.iloc[0], rows.iloc[-1]
        last[mid] = float(end["mean norm"])
        grows &= bool(end["mean norm"] > first["mean norm"])
        lines.append(
            f"{names[mid]} ({mid}) from {first['mean norm']:,.3g} at relative depth {first.depth:.2f} to "
            f"{end['mean norm']:,.3g} at {end.depth:.2f} ({end['mean norm'] / first['mean norm']:.1f}-fold)"
        )
    units = int(extraction["eval units"].min())
    ratio = max(last.values()) / min(last.values())
    return (
        HEAD
        + f"Every model stores the same {units:,} eval units. The mean residual-stream norm "
        + ("grows with depth: " if grows else "changes with depth: ")
        + "; ".join(lines)
        + f". At the last extracted layers one model's norm is {ratio:,.1f} times the other's, so "
        "raw activations are not comparable across models: features are matched by correlation (03), which "
        "ignores scale, and their geometry is compared with scale-free metrics (04)."
    )


def sae_findings(table: pd.DataFrame, min_explained_variance: float) -> str:
    """Notebook 02: the quality of the profile's SAEs on held-out tokens, then of the ceilings' and floors'
    SAEs. ``table``: :func:`featlib.study.sae_table`."""
    prof = table[table.sae == "profile"]
    worst = prof.loc[prof.explained_variance.idxmin()]

    def span(col: str, pct: bool = True, rows: pd.DataFrame = prof) -> str:
        lo, hi = (f"{v:.0%}" if pct else f"{v:,.3g}" for v in (rows[col].min(), rows[col].max()))
        return lo if lo == hi else f"{lo}–{hi}"

    text = (
        HEAD + f"The profile's {len(prof)} SAEs explain {span('explained_variance')} of the activations' variance "
        f"on held-out tokens (required: {min_explained_variance:.0%}; lowest: model {worst.model} layer {worst.layer}), "
        f"recover {span('ce_recovered')} of the next-token loss that zero-ablating their layer costs, fire "
        f"{span('l0', pct=False)} latents per token, and leave {span('dead_fraction')} of their latents dead."
    )
    for kind, rows in table[table.sae != "profile"].groupby("sae", sort=False):
        what = (
            "of the randomly initialised models (floors)"
            if kind == "random init"
            else f"trained with {kind} (ceilings)"
        )
        text += f" The {len(rows)} SAEs {what} explain {span('explained_variance', rows=rows)}."
    return text


def atlas_findings(stats: dict[str, float], n_grouped: int, n_points: int) -> str:
    """Notebook 08: neighbourhood preservation of the paired features against random re-pairings.
    ``stats``: the atlas's ``stats["neighbourhood"]`` (:func:`featlib.atlas.neighbourhood_preservation`)."""
    if stats["p"] >= 0.05:
        verdict = "No more than random re-pairings keep: the two maps share no local geometry we can detect."
    else:
        verdict = (
            f"That is {stats['score'] / stats['null_mean']:.1f} times what random re-pairings keep: the maps share "
            + (
                "part of their local geometry, far from all of it."
                if stats["score"] < 0.5
                else "most of their local geometry."
            )
        )
    return (
        HEAD + f"Of each paired feature's {stats['k']} nearest paired neighbours in one model, {stats['score']:.1%} "
        f"have their partners among its partner's {stats['k']} nearest in the other ({stats['n']} pairs), against "
        f"{stats['null_mean']:.1%} ± {stats['null_std']:.1%} for random re-pairings ({format_p(stats['p'])}; chance "
        f"k / (n − 1) = {stats['chance']:.1%}). {verdict} {n_grouped} of the {n_points} points belong to a concept group."
    )


def matching_findings(matches: list[Match]) -> str:
    """How many pairs survive and how strongly they correlate, cross beside the ceilings and floors."""

    def line(m: Match) -> str:
        n, active = len(m.pairs), m.funnel["active_B"]
        return (
            f"{m.comparison.name}: {n} final pairs ({n / max(active, 1):.0%} of {active} active features of "
            f"side B), median best r {np.median(m.many_to_one.r):.2f}"
        )

    text = HEAD + "; ".join(line(m) for m in matches) + "."
    for c in [m for m in matches if m.comparison.kind not in REFERENCE_KINDS]:
        sides = (c.comparison.a, c.comparison.b)  # its ceilings and floors start from one of its sides
        by_kind = {c.comparison.kind: [c]} | {
            k: [m for m in matches if m.comparison.kind == k and m.comparison.a in sides] for k in REFERENCE_KINDS
        }
        if not all(by_kind.values()):
            continue
        med = {k: float(np.mean([np.median(m.many_to_one.r) for m in ms])) for k, ms in by_kind.items()}
        share = {
            k: float(np.mean([len(m.pairs) / max(m.funnel["active_B"], 1) for m in ms])) for k, ms in by_kind.items()
        }
        x, y = med[c.comparison.kind], share[c.comparison.kind]
        text += (
            f" For {c.comparison.name}, the median best r ({x:.2f}) is {_share(med['random_init'], x, med['seed'])}"
            f" (floor {med['random_init']:.2f}, ceiling {med['seed']:.2f}, each the mean over its models); the share "
            f"of features kept as pairs ({y:.0%}) is {_share(share['random_init'], y, share['seed'])}."
        )
    return text


def scale_findings(table: pd.DataFrame) -> str:
    """Per metric of one cell's calibration table: floor, cross, ceiling, the calibrated score and verdict."""
    if table.empty:
        return HEAD + "no ceiling and floor were computed for this layer pair (references.run, references.layers)."
    lines, above = [], []
    for _, r in table.iterrows():
        name = METRIC_NAMES[r.metric]
        if not np.isfinite(r["calibrated"]):
            lines.append(f"- {name}: — ({r.verdict.split(': ', 1)[-1]})")
            continue
        above += [name] if r.verdict == ABOVE else []
        lines.append(
            f"- {name}: cross {r.cross:.3f}; floor {r.floor:.3f} [{r['floor lo']:.3f}, {r['floor hi']:.3f}]; "
            f"ceiling {r.ceiling:.3f}; re-pairing null {r.null:.3f}: calibrated **{r.calibrated:.2f}** "
            f"[{r['calibrated lo']:.2f}, {r['calibrated hi']:.2f}], {r.verdict}"
        )
    m = int(table.m.iloc[0])
    return (
        HEAD + f"at {m} pairs per draw ({table.comparison.iloc[0]}), {len(above)} of {len(table)} metrics place "
        f"the cross-model score above the random-model floor"
        + (f" ({', '.join(above)})" if above else "")
        + ":\n\n"
        + "\n".join(lines)
    )


def grid_findings(grid: pd.DataFrame, diagonal: list[tuple[int, int]]) -> str:
    """Per metric over the calibrated layer grid: cells above the floor, the best cell, and whether the best
    layer pair of equal relative depth is a middle one (neither the shallowest nor the deepest)."""
    if grid.empty:
        return HEAD + "no layer pair has a ceiling and a floor (references.run, references.layers)."
    lines, middle = [], []
    for metric, t in grid.groupby("metric", sort=False):
        t = t[np.isfinite(t.calibrated)]
        if t.empty:
            lines.append(f"- {METRIC_NAMES[metric]}: not scorable in any cell")
            continue
        best = t.loc[t.calibrated.idxmax()]
        diag = t[[(a, b) in diagonal for a, b in zip(t["layer A"], t["layer B"])]].sort_values("depth A")
        where = ""
        if len(diag) >= 3:
            top = diag.calibrated.to_numpy().argmax()
            is_middle = 0 < top < len(diag) - 1
            middle += [METRIC_NAMES[metric]] if is_middle else []
            where = (
                f"; along equal relative depth the highest is at depth {diag['depth A'].iloc[top]:.2f} "
                f"({'a middle' if is_middle else 'an outer'} pair)"
            )
        lines.append(
            f"- {METRIC_NAMES[metric]}: {int((t.verdict == ABOVE).sum())} of {len(t)} calibrated cells above "
            f"the floor; highest {best.calibrated:.2f} at layers {best['layer A']:.0f}–{best['layer B']:.0f}{where}"
        )
    return (
        HEAD
        + f"middle layers are the most similar (after calibration) for {len(middle)} metric(s)"
        + (f": {', '.join(middle)}" if middle else "")
        + ".\n\n"
        + "\n".join(lines)
    )


def _side(row: pd.Series) -> str:
    """The side a ceiling's or floor's row starts from (``B8`` of ``random_init B8–B8 (random init)``)."""
    return str(row.comparison).removeprefix(f"{row.kind} ").split("–")[0]


def _floor_text(row: pd.Series, metric: str) -> str:
    """One floor of a group: its score and side, or that it is not scorable, with its side and pairs."""
    if np.isfinite(row[metric]):
        return f"floor {row[metric]:.3f} ({_side(row)})"
    n = int(row.pairs)
    return f"floor not scorable ({_side(row)}, {n} pair{'' if n == 1 else 's'})"


def _calibrated_text(row: pd.Series, metric: str) -> tuple[str, bool | None]:
    """A group's place on the calibrated scale (:func:`featlib.study.groups.calibration_columns`): its calibrated
    score with the interval and ``m``, or why it is not scorable; and whether it is above the floor there (None:
    not scorable or not computed)."""
    verdict = row.get(f"{metric} calibrated verdict")
    if not isinstance(verdict, str) or not verdict:
        return "calibrated: not computed", None
    if verdict.startswith(NOT_SCORABLE):
        return f"calibrated: {verdict}", None
    c, lo, hi = (row[f"{metric} calibrated{x}"] for x in ("", " lo", " hi"))
    return (
        f"calibrated **{c:.2f}** [{lo:.2f}, {hi:.2f}] at m = {int(row['calibration m'])} pairs per draw, {verdict}",
        verdict == ABOVE,
    )


def group_findings(groups: pd.DataFrame, metric: str = "rsa", what: str = "concept groups") -> str:
    """Concept groups whose cross-model ``metric`` beats its re-pairing null (p < 0.05) and the score of the same
    group in *every* random-model floor (one per model in ``references.models``): a group with a floor that is not
    scorable, or with no floor, is not above its floors — a floor that cannot be measured is not beaten. Each
    group is listed with its floors (a not scorable one named by its side and pairs), its mean ceiling, and its
    place on the calibrated scale where the table has it (:func:`featlib.study.groups.calibration_columns`: the
    group's pairs in the cross comparison, ceilings and floors subsampled to one m; the calibrated score with its
    2.5–97.5 % interval and verdict, or why it is not scorable)."""
    listed = ~groups.kind.isin(REFERENCE_KINDS)  # the comparison's own rows (cross or model_seed)
    cross = groups[listed & groups.scorable & np.isfinite(groups[metric])]
    floor_rows = groups[groups.kind == "random_init"]
    ceilings = groups[groups.kind == "seed"].groupby("group")[metric].mean()
    lines, above, on_scale, above_scale = [], [], [], []
    for _, r in cross.iterrows():
        fls = floor_rows[floor_rows.group == r.group]
        scored = np.isfinite(fls[metric].to_numpy(dtype=float))
        all_scored = len(fls) > 0 and bool(scored.all())
        ok = r[f"{metric} p (re-pair)"] < 0.05 and all_scored and r[metric] > float(fls[metric].max())
        above += [r.group] if ok else []
        ce = ceilings.get(r.group, np.nan)
        cal, cal_above = _calibrated_text(r, metric)
        on_scale += [r.group] if cal_above is not None else []
        above_scale += [r.group] if cal_above else []
        floors = ", ".join(_floor_text(f, metric) for _, f in fls.iterrows()) if len(fls) else "no floor computed"
        lines.append(
            f"- {r.group} ({r.pairs} pairs): cross {r[metric]:.3f} ({format_p(r[f'{metric} p (re-pair)'])}), "
            + floors
            + ", "
            + (f"mean ceiling {ce:.3f}" if np.isfinite(ce) else "ceiling not scorable")
            + (" — above its null and every floor" if ok else "")
            + f"; {cal}"
        )
    name = METRIC_NAMES[metric]
    n_all = int(listed.sum())
    scale = (
        f" On the calibrated scale (0 = random-model floor, 1 = seed ceiling; the group's pairs of every comparison "
        f"subsampled to one m), {len(on_scale)} of them are scorable"
        + (
            f", {len(above_scale)} above the floor" + (f" ({', '.join(above_scale)})" if above_scale else "")
            if on_scale
            else ""
        )
        + "."
        if "calibration m" in groups
        else ""
    )
    return (
        HEAD + f"{len(cross)} of {n_all} {what} have a scorable cross-model {name}; {len(above)} of them are above its "
        f"re-pairing null (p < 0.05) and above every random-model floor's {name} of the same group (a floor that is "
        f"not scorable is not beaten)"
        + (f": {', '.join(above)}" if above else "")
        + "."
        + scale
        + "\n\n"
        + "\n".join(lines)
    )


def interaction_findings(table: pd.DataFrame) -> str:
    """Whether the phrase groups sit alike relative to each other in both models (:func:`featlib.study.interaction_table`
    rows of the cross, seed and random-init comparisons): the cross agreement against its random-set null, the
    ceilings' and floors' agreements beside it."""
    cross = table[~table.kind.isin(REFERENCE_KINDS)]
    if cross.empty:
        return ""
    r = cross.iloc[0]
    refs = []
    for kind, what in (("seed", "seed ceilings"), ("random_init", "random-model floors")):
        rows = table[table.kind == kind]
        if len(rows):
            said = [
                f"r = {x['agreement (r)']:.2f} ({format_p(x.p)})"
                if np.isfinite(x["agreement (r)"])
                else f"not scorable ({x['not scorable']})"
                for _, x in rows.iterrows()
            ]
            refs.append(f"{what} " + ", ".join(dict.fromkeys(said)))  # one reason said once
    if not np.isfinite(r["agreement (r)"]):
        return f"Group interactions are not scorable across models: {r['not scorable']}."
    verdict = "agree beyond" if r.p < 0.05 else "do not agree beyond"
    return (
        f"How the {r.groups} phrase groups with members in both models sit relative to each other (mean cos² of the "
        f"principal angles between their subspaces): the two models' group x group matrices correlate with "
        f"r = {r['agreement (r)']:.2f}, against {r['null mean']:.2f} for random feature sets of the same sizes "
        f"(95th percentile {r['null 95th percentile']:.2f}, {format_p(r.p)}): they {verdict} their null. "
        f"The same agreement for the {'; '.join(refs) or 'ceilings and floors: not computed'}."
    )


def phrase_findings(tokens: pd.DataFrame, phrase: pd.DataFrame, interactions: pd.DataFrame, metric: str = "rsa") -> str:
    """Notebook 06's written result: single-token and phrase groups side by side (:func:`group_findings` of each),
    then the phrase groups' interactions (:func:`interaction_findings`)."""
    floors = phrase[phrase.kind == "random_init"]
    floor = ""
    if len(floors):
        n, trained = int(floors["features B"].sum()), int(floors["features A"].sum())
        floor = (
            f"\n\nThe random-model floors' SAEs have {n} member features in all phrase groups together (their trained "
            f"counterparts {trained})"
            + (
                ": selectivity for several phrases in context is not reached by token identity "
                "alone, so a phrase group's floor is empty, not scorable."
                if n == 0
                else "."
            )
        )
    return (
        group_findings(tokens, metric, "single-token groups")
        + "\n\n"
        + group_findings(phrase, metric, "phrase groups").removeprefix(HEAD)
        + floor
        + "\n\n"
        + interaction_findings(interactions)
    )


def firing_findings(firing: dict[str, float]) -> str:
    """What notebook 07's firing statistics (:func:`featlib.study.firing_summary`) say, in words: firing in
    every model about equally often is not firing on the same tokens."""
    n = int(firing["concepts that fire"])
    text = (
        HEAD + f"{n} universal concepts fire; {firing['of them with entropy > 0.9']:.0%} of them fire about equally "
        f"often in every model (firing entropy > 0.9) and {firing['with entropy < 0.1']:.0%} in one model only "
        f"(< 0.1). Equally often is not on the same tokens: the median concept fires in every model at once on "
        f"{firing['median co-fire proportion']:.1%} of the tokens where it fires at all (its co-fire proportion), "
        f"and {int(firing['that co-fire at least once'])} concepts co-fire at least once."
    )
    if np.isfinite(firing["r(log co-fires, log energy)"]):
        text += (
            f" Among those, the concepts that co-fire more carry more of the reconstruction: log co-fires and "
            f"log energy correlate with r = {firing['r(log co-fires, log energy)']:.2f} "
            f"({firing['r, top quarter by co-fires']:.2f} over the top quarter by co-fires)."
        )
    return text


def transfer_findings(table: pd.DataFrame, by_r: pd.DataFrame, chance: float) -> str:
    """Which methods transfer steering (success rate and interval, per direction) against the controls. A
    method *works* when the lower end of its interval is above the chance rate and above the success rate
    of every control of the same layer pair and direction."""
    lines, works, fails = [], set[str](), set[str]()
    for (layers, direction), g in table.groupby(["layers", "direction"], sort=False):
        controls = g[g.kind == "control"]
        bar = max(chance, float(controls["success"].max()))
        parts = []
        for _, r in g[g.kind == "method"].iterrows():
            ok = r["95% CI low"] > bar
            (works if ok else fails).add(r["steered by"])
            parts.append(
                f"{r['steered by']} {'**' if ok else ''}{r.success:.0%}{'**' if ok else ''} "
                f"[{r['95% CI low']:.0%}, {r['95% CI high']:.0%}]"
            )
        ctrl = ", ".join(f"{r['steered by']} {r.success:.0%}" for _, r in controls.iterrows())
        lines.append(
            f"- {layers} {direction} ({int(g.pairs.iloc[0])} test pairs): {'; '.join(parts)}. Controls: {ctrl}."
        )
    always, never = sorted(works - fails), sorted(fails - works)
    text = (
        HEAD + f"a transfer succeeds when the two steerings agree (Spearman of next-token lifts) more than "
        f"{1 - chance:.0%} of the agreements with other pairs' transferred directions; chance is {chance:.0%}. "
        f"A method works (bold) when its interval's lower end is above chance and above every control.\n\n"
        + "\n".join(lines)
    )
    text += (
        f"\n\nWorks everywhere tested: {', '.join(always) or 'none'}; nowhere: {', '.join(never) or 'none'}"
        + (f"; in some cells or directions only: {', '.join(sorted(works & fails))}" if works & fails else "")
        + "."
    )
    if not by_r.empty:
        bins = list(dict.fromkeys(by_r["r bin"]))
        trend = []
        for method, g in by_r.groupby("method", sort=False):
            ends = [g[(g["r bin"] == b) & (g.pairs > 0)] for b in (bins[0], bins[-1])]
            if all(len(e) for e in ends):
                lo, hi = (float(np.average(e.success, weights=e.pairs)) for e in ends)
                trend.append(f"{method} {lo:.0%} → {hi:.0%}")
        text += f" By the pair's correlation (lowest third r {bins[0]} → highest third {bins[-1]}): {'; '.join(trend)}."
    return text
