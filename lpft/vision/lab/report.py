"""The lab's table, regime labels, the LP-FT criterion, and the figure, from the runs' ``records.jsonl`` alone.

Per setting (one runs directory per pretraining tag), every method is read through :mod:`lpft.vision.table`:
learning rate chosen by mean ID-val accuracy over seeds, mean +- 1.645 std / sqrt(n) over seeds. On top:

* the **regime** of a setting, from LP vs FT on the OOD split: *poor features* when FT's interval lies above
  LP's, *good features* when LP's lies above FT's, *border* when they overlap (docs/lab.md, "Reading the table");
* the **criterion** of the lab (issue 10): over >= 5 seeds, LP-FT's OOD interval above FT's, LP-FT's OOD mean at
  least LP's, and LP-FT's ID accuracy within one point of FT's (or above it);
* every learning rate's mean OOD accuracy without selection, and per-seed LP-FT - FT differences, so a reader
  sees whether the conclusion hangs on the learning-rate choice;
* the figure: OOD accuracy vs pretraining budget per method (the vision twin of the theory's OOD error vs eps,
  docs/theory.md), OOD accuracy vs the pool's typeset share, and feature distortion (ID vs OOD) for FT and LP-FT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lpft.vision.lab.backbone import config_from_tag
from lpft.vision.tablefmt import Agg, aggregate

__all__ = ["MethodResult", "SettingResult", "criterion", "format_report", "lab_figure", "read_setting", "regime",
           "setting_summary"]

LABELS = {"lp": "LP", "ft": "FT", "lpft": "LP-FT", "wiseft": "WiSE-FT α=0.5"}
SPLITS = ("id_test", "typeset", "corrupted")


@dataclass
class MethodResult:
    """One method of one setting at its selected learning rate."""

    method: str
    lr: float | None
    per_seed: dict[str, dict[int, float]]  #: split -> seed -> accuracy
    per_lr: dict[float, dict[str, Agg]] = field(default_factory=dict)  #: lr -> split -> aggregate (no selection)
    distortion: dict[str, Agg] = field(default_factory=dict)  #: split -> mean squared feature change

    def agg(self, split: str) -> Agg | None:
        v = self.per_seed.get(split)
        return aggregate(list(v.values())) if v else None


@dataclass
class SettingResult:
    """Every method of one pretraining setting."""

    tag: str
    steps: int
    share: float | None  #: None for the random initialisation (no pool)
    methods: dict[str, MethodResult]

    @property
    def seeds(self) -> int:
        return min((len(m.per_seed.get("typeset", {})) for m in self.methods.values()), default=0)


def read_setting(setting_dir: str | Path, tag: str) -> SettingResult:
    """Read one setting's runs (``setting_dir/<run_id>/records.jsonl``).

    Raises:
        FileNotFoundError: no records under ``setting_dir``.
    """
    from lpft.vision.table import build_series, final_records, load_records, per_seed, select_lr

    records = load_records(setting_dir)
    groups = build_series(records)
    cfg = config_from_tag(tag, 0)
    out = SettingResult(tag, cfg.steps, None if cfg.steps == 0 else cfg.typeset_share, {})
    for group in groups.values():
        for s in group:
            if s.bn_stats is not None or s.method not in LABELS or s.options or s.soup_variant:
                continue  # the lab runs plain methods; anything else under the directory is not part of it
            lr, _ = select_lr(s)
            alpha = 0.5 if s.method == "wiseft" else None
            res = MethodResult(s.method, lr, {sp: per_seed(s, lr, alpha, sp, []) for sp in SPLITS})
            for other in s.lrs:
                res.per_lr[other] = {sp: aggregate(list(v.values())) for sp in SPLITS
                                     if (v := per_seed(s, other, alpha, sp, []))}
            out.methods[s.method] = res
    dist: dict[str, dict[str, dict[int, float]]] = {}  # method -> split -> seed -> value
    for r in final_records(records, "feature_sq_change"):
        m = out.methods.get(r["method"])
        if m is not None and r["method"] in ("ft", "lpft") and r.get("lr") == m.lr:
            dist.setdefault(r["method"], {}).setdefault(r["eval_split"], {})[r["seed"]] = r["value"]
    for name, per_split in dist.items():
        out.methods[name].distortion = {sp: aggregate(list(v.values())) for sp, v in per_split.items()}
    return out


def _bounds(a: Agg) -> tuple[float, float]:
    return a.mean - (a.ci or 0.0), a.mean + (a.ci or 0.0)


def regime(res: SettingResult, split: str = "typeset") -> str:
    """``"good"`` (LP's OOD interval above FT's), ``"poor"`` (FT's above LP's) or ``"border"`` (overlap)."""
    lp, ft = (res.methods[m].agg(split) if m in res.methods else None for m in ("lp", "ft"))
    if lp is None or ft is None:
        return "unknown"
    if _bounds(lp)[0] > _bounds(ft)[1]:
        return "good"
    if _bounds(ft)[0] > _bounds(lp)[1]:
        return "poor"
    return "border"


def _paired(res: SettingResult, a: str, b: str, split: str) -> list[float]:
    """Per-seed differences ``a - b`` on ``split`` (seeds both methods have, in seed order)."""
    va, vb = res.methods[a].per_seed.get(split, {}), res.methods[b].per_seed.get(split, {})
    return [va[k] - vb[k] for k in sorted(va) if k in vb]


def criterion(res: SettingResult, split: str = "typeset", min_seeds: int = 5) -> dict[str, Any]:
    """The lab's criterion for making a setting the offline default (see the module docstring).

    Returns:
        ``{"holds": bool, "checks": {name: bool}, "numbers": {...}}``.
    """
    need = ("lp", "ft", "lpft")
    if any(m not in res.methods for m in need):
        return {"holds": False, "checks": {"methods": False}, "numbers": {}}
    lp, ft, lpft = (res.methods[m].agg(split) for m in need)
    ft_id, lpft_id = res.methods["ft"].agg("id_test"), res.methods["lpft"].agg("id_test")
    checks = {
        f"seeds >= {min_seeds}": res.seeds >= min_seeds,
        "LP-FT OOD interval above FT's": _bounds(lpft)[0] > _bounds(ft)[1],
        "LP-FT OOD mean >= LP's": lpft.mean >= lp.mean,
        "LP-FT ID >= FT ID - 1 point": lpft_id.mean >= ft_id.mean - 0.01,
    }
    wins, lp_gap = _paired(res, "lpft", "ft", split), _paired(res, "lp", "ft", split)
    numbers = {"split": split, "LP": lp.mean, "FT": ft.mean, "LP-FT": lpft.mean, "FT ID": ft_id.mean,
               "LP-FT ID": lpft_id.mean, "LP-FT - FT per seed": wins, "LP - FT per seed": lp_gap,
               "LP-FT - LP per seed": _paired(res, "lpft", "lp", split),
               "LP-FT wins": sum(w > 0 for w in wins), "seeds": len(wins)}
    return {"holds": all(checks.values()), "checks": checks, "numbers": numbers}


def _agg_dict(a: Agg | None) -> dict | None:
    return None if a is None else {"mean": a.mean, "ci": a.ci, "n": a.n}


def setting_summary(res: SettingResult) -> dict[str, Any]:
    """One setting as JSON-ready numbers: regime, criterion, and every method's aggregates, per-lr OOD and
    feature distortion."""
    return {
        "tag": res.tag, "steps": res.steps, "typeset_share": res.share, "seeds": res.seeds, "regime": regime(res),
        "criterion": criterion(res),
        "methods": {m: {"lr": r.lr, **{sp: _agg_dict(r.agg(sp)) for sp in SPLITS},
                        "per_lr_typeset": {f"{lr:g}": _agg_dict(d.get("typeset")) for lr, d in sorted(r.per_lr.items())
                                           if lr is not None},
                        "feature_sq_change": {sp: _agg_dict(a) for sp, a in r.distortion.items()}}
                    for m, r in res.methods.items()},
    }


def _pct(a: Agg | None) -> str:
    if a is None:
        return "-"
    return f"{100 * a.mean:.1f} ± {100 * a.ci:.1f}" if a.ci is not None else f"{100 * a.mean:.1f}"


def format_report(results: Sequence[SettingResult]) -> str:
    """The lab table (markdown): every setting x method, its regime, the criterion, and per-learning-rate OOD."""
    lines = ["| setting | SimCLR steps | typeset share | method | lr | ID test | typeset (OOD) | corrupted (OOD) |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        share = "-" if res.share is None else f"{res.share:g}"
        for m in ("lp", "ft", "lpft", "wiseft"):
            if m not in res.methods:
                continue
            r = res.methods[m]
            lr = "" if r.lr is None else f"{r.lr:g}"
            lines.append(f"| {res.tag} | {res.steps} | {share} | {LABELS[m]} | {lr} | {_pct(r.agg('id_test'))} | "
                         f"{_pct(r.agg('typeset'))} | {_pct(r.agg('corrupted'))} |")
    lines += ["", "Mean ± 1.645 std/sqrt(n) over seeds (each seed re-runs pretraining, head init and data order); "
              "learning rates chosen by mean ID-val accuracy over seeds; accuracy in %.", ""]
    lines += ["| setting | seeds | regime (typeset) | LP - FT typeset | LP-FT - FT typeset (wins) | criterion |",
              "|---|---|---|---|---|---|"]
    for res in results:
        c = criterion(res)
        n = c["numbers"]
        gap = (f"{100 * (n['LP'] - n['FT']):+.1f}" if n else "-")
        lpft_gap = (f"{100 * (n['LP-FT'] - n['FT']):+.1f} ({n['LP-FT wins']}/{n['seeds']})" if n else "-")
        failed = [k for k, ok in c["checks"].items() if not ok]
        verdict = "holds" if c["holds"] else "fails: " + "; ".join(failed)
        lines.append(f"| {res.tag} | {res.seeds} | {regime(res)} | {gap} | {lpft_gap} | {verdict} |")
    lines += ["", "Typeset OOD accuracy at every learning rate (no selection), mean over seeds:", "",
              "| setting | method | lr: typeset accuracy |", "|---|---|---|"]
    for res in results:
        for m in ("ft", "lpft"):
            if m in res.methods:
                cells = ", ".join(f"{lr:g}: {100 * d['typeset'].mean:.1f}" for lr, d in
                                  sorted(res.methods[m].per_lr.items()) if "typeset" in d)
                lines.append(f"| {res.tag} | {LABELS[m]} | {cells} |")
    return "\n".join(lines) + "\n"


def _dodge(ax, slot: float, points: float = 4.0) -> None:
    """Shift the last errorbar drawn on ``ax`` by ``slot * points`` typographic points to the right, so that series
    at the same x stay apart on any axis scale (the data limits were taken before the shift)."""
    from matplotlib.transforms import ScaledTranslation

    shifted = ax.transData + ScaledTranslation(slot * points / 72.0, 0.0, ax.figure.dpi_scale_trans)
    line, caps, bars = ax.containers[-1].lines
    for artist in [line, *caps, *bars]:
        if artist is not None:
            artist.set_transform(shifted)


def _budget_axis(ax, steps: list[int]) -> None:
    """Pretraining steps on a symmetric-log axis (0 = random init shown), ticks at the measured budgets."""
    positive = [s for s in steps if s > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()


def lab_figure(results: Sequence[SettingResult], stem: str | Path, *, share: float, full_budget: int) -> list[Path]:
    """Write ``<stem>.png`` / ``.pdf``: OOD vs budget, OOD vs typeset share, feature distortion vs budget."""
    from matplotlib.figure import Figure

    from lpft.vision.plot import COLORS, save_figure

    budget = sorted([r for r in results if r.share is None or r.share == share], key=lambda r: r.steps)
    pool = sorted([r for r in results if r.steps == full_budget and r.share is not None], key=lambda r: r.share)
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_b, ax_p, ax_d = fig.subplots(1, 3)
    for ax, rows, xkey, xlabel in ((ax_b, budget, "steps", "SimCLR pretraining steps (typeset share "
                                    f"{share:g}; 0 = random init)"),
                                   (ax_p, pool, "share", f"typeset share of the pool ({full_budget} steps)")):
        for j, m in enumerate(("lp", "ft", "lpft", "wiseft")):
            pts = [(getattr(r, xkey), r.methods[m].agg("typeset")) for r in rows if m in r.methods]
            pts = [(x, a) for x, a in pts if a is not None]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ax.errorbar(xs, [100 * a.mean for _, a in pts], yerr=[100 * (a.ci or 0.0) for _, a in pts],
                        marker="o", capsize=3, color=COLORS[m], label=LABELS[m])
            _dodge(ax, j - 1.5)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("typeset (OOD) accuracy, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    steps = sorted({r.steps for r in budget})
    _budget_axis(ax_b, steps)
    if pool:
        ax_p.set_xticks([r.share for r in pool], [f"{r.share:g}" for r in pool])
    ax_b.set_title("OOD accuracy vs feature quality (cf. OOD error vs eps)", fontsize=9)
    ax_p.set_title("OOD accuracy vs pool composition", fontsize=9)
    for i, (m, style) in enumerate((("ft", "-"), ("lpft", "--"))):
        for k, (split, marker) in enumerate((("id_test", "o"), ("typeset", "s"))):
            pts = [(r.steps, r.methods[m].distortion.get(split)) for r in budget if m in r.methods]
            pts = [(x, a) for x, a in pts if a is not None]
            if pts:
                ax_d.errorbar([x for x, _ in pts], [a.mean for _, a in pts], yerr=[a.ci or 0.0 for _, a in pts],
                              color=COLORS[m], linestyle=style, marker=marker, capsize=3,
                              label=f"{LABELS[m]}, {'ID' if split == 'id_test' else 'OOD (typeset)'}")
                _dodge(ax_d, 2 * i + k - 1.5)
    if ax_d.lines:
        ax_d.set_yscale("log")
        _budget_axis(ax_d, steps)
        ax_d.legend(fontsize=7)
    ax_d.set_xlabel("SimCLR pretraining steps", fontsize=8)
    ax_d.set_ylabel("mean squared feature change")
    ax_d.set_title("feature distortion: ID vs OOD", fontsize=9)
    ax_d.grid(alpha=0.3)
    fig.suptitle("digits lab: handwritten (ID) -> typeset (OOD), digits_simclr backbone")
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, stem)

