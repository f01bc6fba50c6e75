"""Selection rules for ``estimator="auto"`` (issue 16, item 2): which tie band, number of held-out
points and number of folds make the Hyvärinen selection pick the candidate with the lowest true
score error?

    python benchmarks/selection_rules.py --cache benchmarks/results/.cache/selection_rules.json
                                                    # the cells below (5 sets per mixture cell, 3
                                                    # otherwise: the peers tables' sets); ~30 min
                                                    # on one core, then free from the cache
    python benchmarks/selection_rules.py --smoke    # one small cell, 1 set (tests)

Per set (cases from ``peers.make_case``: same seeds, samples and fresh points as the peers
benchmark) it records, once:

- for K in ``--folds`` (default 2 and 5): each ``auto`` candidate
  (``factory.auto_candidates``: gmm, Scott KDE, transformer) built on each training fold of
  ``selection.fold_indices`` and its per-point Hyvärinen terms at *every* held-out point of
  that fold, with the build and the terms' wall times. ``select_estimator(max_points=m)``
  scores the first ``m // K`` held-out points of each fold, so every ``max_points`` is a
  prefix of this record;
- each candidate's and each classical peer's (sklearn GMM-BIC, CV-KDE; Scott KDE is the
  ``kde`` candidate) relative score MSE at the 512 fresh points, built on all n samples
  (``peers.build_all`` and ``peers._measure``: the peers table's own numbers).

Offline, every rule (tie band b in paired standard errors, points m, folds K) is applied to
the record with ``selection.pick`` (the library's own rule); its per-set choice gives auto's
error (the chosen candidate's error on all n, exactly what ``auto`` refits). A cell (family,
d, n) passes if the mean of auto's error over its sets is at most 1.1 x the best classical
peer's mean; it is "best" if strictly below all three. Cost: the selection's wall time
(candidate builds on the folds + the terms at m points, scaled from the full record), mean
over the sets of each n.

Results are cached per set in ``--cache`` (JSON; delete it after changing an estimator) and
written to ``benchmarks/results/selection_rules.md``. Float64, torch threads 1.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import _load_cache, _measure, _save_cache, build_all, make_case  # noqa: E402

from pyro_disco._validation import checked_once  # noqa: E402
from pyro_disco.estimators.selection import (  # noqa: E402
    default_max_points,
    fold_indices,
    hyvarinen_terms,
    pick,
    select_estimator,
)
from pyro_disco.estimators.whitening import fit_whitening, quiet_outliers  # noqa: E402
from pyro_disco.factory import auto_candidates  # noqa: E402
from pyro_disco.pretrained import auto_dims  # noqa: E402

torch.set_default_dtype(torch.float64)
HERE = Path(__file__).resolve().parent / "results"
PEERS = ["sklearn GMM-BIC", "CV-KDE", "Scott KDE"]
COLUMN = {"gmm": "gmm", "kde": "Scott KDE", "transformer": "transformer"}  # candidate -> peers column
MISSES = [
    ("funnel", 2, 4096),
    ("funnel", 2, 1024),
    ("Laplace", 2, 256),
    ("Student-t3", 1, 256),
    ("Student-t3", 2, 256),
    ("Student-t3", 2, 4096),
    ("mixture", 2, 256),
]
GUARDS = [
    ("mixture", 1, 1024),
    ("mixture", 2, 1024),
    ("mixture", 3, 1024),
    ("mixture", 5, 1024),
    ("mixture", 10, 1024),
    ("Student-t3", 1, 1024),
    ("Student-t3", 5, 1024),
    ("Student-t3", 10, 1024),
    ("Laplace", 1, 4096),
    ("Laplace", 2, 1024),
    ("Laplace", 5, 1024),
    ("Laplace", 10, 1024),
    ("banana", 2, 256),
    ("banana", 2, 1024),
    ("funnel", 2, 256),
]
REPS = {"mixture": 5}  # sets per cell as in peers_mixture.md (5) and peers_other.md (3, the rest)
BANDS = [0.0, 0.25, 0.5, 1.0, 2.0]
POINTS = [512, 1024, 2048, "all", "default"]  # all: every sample; default: default_max_points(d)


def record_folds(x: torch.Tensor, folds: int) -> dict:
    """Per candidate: per fold the held-out Hyvärinen terms (all points), build and terms seconds."""
    n, d = x.shape
    builders = auto_candidates(d)
    out = {name: {"terms": [], "build": [], "score": []} for name in builders}
    basis = torch.linalg.inv(fit_whitening(x).matrix)  # as select_estimator: whitened coordinates
    for train, held in fold_indices(n, folds, 0):
        with checked_once(x[train]) as fold:
            for name, build in builders.items():
                t0 = time.perf_counter()
                try:
                    with quiet_outliers():
                        est = build(fold)
                except ValueError:
                    out[name]["failed"] = True
                    continue
                t1 = time.perf_counter()
                terms = hyvarinen_terms(est, x[held], basis)
                out[name]["terms"].append(terms.tolist())
                out[name]["build"].append(t1 - t0)
                out[name]["score"].append(time.perf_counter() - t1)
    return {name: rec for name, rec in out.items() if not rec.get("failed")}


def record_set(fam: str, d: int, n: int, r: int, folds: list[int]) -> dict:
    x, y, truth = make_case(fam, d, n, r)
    s_y, s_x, l_y = truth.score(y), truth.score(x), truth.logdensity(y)
    rec = {"cv": {}, "fresh": {}, "sec": {}}
    for k in folds:
        rec["cv"][str(k)] = record_folds(x, k)
    names = ["transformer", "gmm", *PEERS] if d in auto_dims() else ["gmm", *PEERS]
    for name, b in build_all(x, names).items():
        if isinstance(b, str):
            raise RuntimeError(f"{name} failed on {fam} d={d} n={n} set {r}: {b}")
        m = _measure(b[0], x, y, s_x, s_y, l_y, b[1])
        rec["fresh"][name], rec["sec"][name] = m["fresh"], m["sec"]
    return rec


def apply_rule(rec: dict, d: int, folds: int, points: int | str, band: float) -> tuple[str, float]:
    """The rule's choice on one recorded set of dimension ``d`` and its selection seconds."""
    values, secs = {}, 0.0
    m = default_max_points(d) if points == "default" else points
    for name, c in rec["cv"][str(folds)].items():
        held = [len(t) for t in c["terms"]]
        per_fold = max(held) if m == "all" else max(1, m // folds)
        values[name] = torch.cat([torch.tensor(t[:per_fold]) for t in c["terms"]])
        secs += sum(c["build"]) + sum(s * min(per_fold, h) / h for s, h in zip(c["score"], held))
    return pick(values, band)[0], secs


OLD_RULE = (2, 512, 1.0)  # select_estimator's defaults before this benchmark
_DEFAULTS = inspect.signature(select_estimator).parameters
NEW_RULE = (_DEFAULTS["folds"].default, "default", _DEFAULTS["tie_band"].default)  # its defaults now


def rules(folds: list[int]) -> list[tuple[int, int | str, float]]:
    return [(k, m, b) for k in folds for m in POINTS for b in BANDS]


def rule_name(rule: tuple[int, int | str, float]) -> str:
    k, m, b = rule
    m = "512-1024 (5120/d)" if m == "default" else m
    return f"K={k} / {m} / {b:g} se"


def _mean(v):
    return sum(v) / len(v)


def score_rule(cells, records: dict, rule) -> dict:
    """auto's cell means under ``rule`` (None: the oracle, best candidate per set), the cells
    within 1.1x of / strictly below the classical peers, the geometric-mean excess error over
    the best candidate per set, the picks worse than 1.5x that, and the mean cost by n."""
    errs, logs, bad, costs = {}, [], 0, {}
    for cell in cells:
        per_set = []
        for r in records[cell]:
            cand = {c: r["fresh"][COLUMN[c]] for c in r["cv"]["2"]}
            best = min(cand.values())
            if rule is None:
                e = best
            else:
                chosen, secs = apply_rule(r, cell[1], *rule)
                e = cand[chosen]
                costs.setdefault(cell[2], []).append(secs)
            per_set.append(e)
            logs.append(math.log(e / best))
            bad += e > 1.5 * best
        errs[cell] = _mean(per_set)
    peer = {c: [_mean([r["fresh"][p] for r in records[c]]) for p in PEERS] for c in cells}
    return {
        "errs": errs,
        "within": sum(errs[c] <= 1.1 * min(peer[c]) for c in cells),
        "best": sum(all(errs[c] < v for v in peer[c]) for c in cells),
        "excess": math.exp(_mean(logs)) - 1,
        "bad": bad,
        "cost": {n: _mean(v) for n, v in costs.items()},
    }


def evaluate(cells, records: dict, folds: list[int]) -> list[str]:
    sizes = sorted({n for _, _, n in cells})
    num_sets = sum(len(records[c]) for c in cells)
    scored = {rule: score_rule(cells, records, rule) for rule in rules(folds)}
    oracle = score_rule(cells, records, None)
    lines = [
        f"## Rules ({len(cells)} cells, {num_sets} sets)",
        "",
        "Rule = folds K / held-out points in all (all: every sample; 512-1024: "
        "`selection.default_max_points(d)` = 5120 // d clipped to [512, 1024]) / tie band in paired standard "
        "errors. `within 1.1x`: cells where auto's mean error <= 1.1 x the best classical peer's "
        "(sklearn GMM-BIC, CV-KDE, Scott KDE); `best`: strictly below all three; `excess`: "
        "geometric mean over sets of auto's error / the best candidate's, minus 1; `> 1.5x`: sets "
        "where auto's pick has over 1.5 x the best candidate's error. Cost: the selection's seconds "
        "(fold builds + Hyvärinen terms), mean over the sets of each n; `auto` adds one refit of "
        "the winner on all n.",
        "",
        "| rule | within 1.1x | best | excess (%) | > 1.5x | "
        + " | ".join(f"cost n={n} (s)" for n in sizes)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(sizes),
    ]
    for rule, sc in [*scored.items(), (None, oracle)]:
        tag = {OLD_RULE: " (old default)", NEW_RULE: " (**new default**)"}.get(rule, "")
        label = rule_name(rule) + tag if rule else "oracle"
        cost = " | ".join(f"{sc['cost'][n]:.1f}" if n in sc["cost"] else "-" for n in sizes)
        lines.append(
            f"| {label} | {sc['within']}/{len(cells)} | {sc['best']}/{len(cells)} | "
            f"{100 * sc['excess']:.1f} | {sc['bad']}/{num_sets} | {cost} |"
        )
    ranked = sorted(scored, key=lambda r: (-scored[r]["within"], -scored[r]["best"], scored[r]["excess"]))
    shown = [OLD_RULE, NEW_RULE] + [r for r in ranked if r not in (OLD_RULE, NEW_RULE)][:4]
    lines += [
        "",
        "## Per cell: auto's relative score MSE at the fresh points (%), mean over sets",
        "",
        "The old default, the new default and the four best other rules by (within, best, "
        "excess). ✗: above 1.1 x the best classical peer.",
        "",
        "| cell | sets | best classical peer | " + " | ".join(rule_name(r) for r in shown) + " | oracle |",
        "|---|---|---|" + "---|" * (len(shown) + 1),
    ]
    for cell in cells:
        peer = min(_mean([r["fresh"][p] for r in records[cell]]) for p in PEERS)
        vals = []
        for sc in [*(scored[r] for r in shown), oracle]:
            e = sc["errs"][cell]
            vals.append(f"{100 * e:.2f}" + ("" if e <= 1.1 * peer else " ✗"))
        lines.append(
            f"| {cell[0]} d={cell[1]} n={cell[2]} | {len(records[cell])} | {100 * peer:.2f} | "
            + " | ".join(vals)
            + " |"
        )
    lines += [
        "",
        "## Per set: each candidate's and peer's error (%) and the picks of the old default and "
        f"of {rule_name(shown[1])}",
        "",
        "| cell | set | gmm | kde | transformer | sklearn GMM-BIC | CV-KDE | old pick | new pick |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for i, r in enumerate(records[cell]):
            f = r["fresh"]
            tr = f"{100 * f['transformer']:.2f}" if "transformer" in f else "-"
            lines.append(
                f"| {cell[0]} d={cell[1]} n={cell[2]} | {i} | {100 * f['gmm']:.2f} | "
                f"{100 * f['Scott KDE']:.2f} | {tr} | {100 * f['sklearn GMM-BIC']:.2f} | "
                f"{100 * f['CV-KDE']:.2f} | {apply_rule(r, cell[1], *OLD_RULE)[0]} | "
                f"{apply_rule(r, cell[1], *shown[1])[0]} |"
            )
    return lines


def compare_peers(before: str, after: str) -> list[str]:
    """auto in two ``peers.py --cache`` files (the old rule's run and a rerun with the new
    defaults), per cell of the rerun: mean error, within 1.1x of the best classical peer, picks."""
    old, new = _load_cache(before), _load_cache(after)
    cells: dict[tuple, list[str]] = {}
    for key in new:
        fam, d, n, _ = key.split("|")
        if "auto" in new[key] and "auto" in old.get(key, {}):
            cells.setdefault((fam, int(d), int(n)), []).append(key)
    lines = [
        "## Before / after with `benchmarks/peers.py` (the real `auto` path)",
        "",
        f"Before: `{before}` (the cache behind peers_other.md / peers_mixture.md, old rule); after: "
        f"`{after}` (rerun with the new defaults). Relative score MSE at the 512 fresh points (%), "
        "mean over the sets; peer = best classical peer of the rerun. ✗: above 1.1 x peer.",
        "",
        "| cell | sets | peer | auto before | auto after | picks before | picks after "
        "| auto s before | auto s after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    within = [0, 0]
    for (fam, d, n), keys in cells.items():
        peer = min(_mean([new[k][p]["fresh"] for k in keys]) for p in PEERS)
        vals = []
        for i, c in enumerate((old, new)):
            e = _mean([c[k]["auto"]["fresh"] for k in keys])
            within[i] += e <= 1.1 * peer
            vals.append(f"{100 * e:.2f}" + ("" if e <= 1.1 * peer else " ✗"))
        picks = [", ".join(c[k]["auto"].get("choice", "?") for k in keys) for c in (old, new)]
        secs = [f"{_mean([c[k]['auto']['sec'] for k in keys]):.1f}" for c in (old, new)]
        lines.append(
            f"| {fam} d={d} n={n} | {len(keys)} | {100 * peer:.2f} | "
            + " | ".join(vals + picks + secs)
            + " |"
        )
    lines += ["", f"Within 1.1x: {within[0]}/{len(cells)} before, {within[1]}/{len(cells)} after.", ""]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="mixture d=2 n=256, 1 set, 2 folds")
    p.add_argument("--reps", type=int, default=None, help="sets per cell (default: 5 mixture, 3 others)")
    p.add_argument("--folds", type=int, nargs="+", default=[2, 5])
    p.add_argument("--extra", nargs=3, action="append", default=[], metavar=("FAMILY", "D", "N"))
    p.add_argument("--cache", default=None, help="JSON file of per-set records to reuse and extend")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--peers",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="two peers.py --cache files: add auto's before/after on the cells of AFTER",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.folds = [2]
    torch.set_num_threads(1)
    cells = [("mixture", 2, 256)] if args.smoke else MISSES + GUARDS
    cells += [(f, int(d), int(n)) for f, d, n in args.extra]
    cache = _load_cache(args.cache)
    records = {}
    t0 = time.perf_counter()
    for fam, d, n in cells:
        records[(fam, d, n)] = []
        for r in range(1 if args.smoke else args.reps or REPS.get(fam, 3)):
            key = f"{fam}|{d}|{n}|{r}"
            if key not in cache:
                t1 = time.perf_counter()
                cache[key] = record_set(fam, d, n, r, args.folds)
                _save_cache(args.cache, cache)
                print(f"{key}: {time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)
            for k in args.folds:  # a set cached without this K (an earlier, narrower run)
                if str(k) not in cache[key]["cv"]:
                    cache[key]["cv"][str(k)] = record_folds(make_case(fam, d, n, r)[0], k)
                    _save_cache(args.cache, cache)
                    print(f"{key}: added K={k}", file=sys.stderr, flush=True)
            records[(fam, d, n)].append(cache[key])
    lines = [
        "# Selection rules for `auto` (issue 16, item 2)",
        "",
        "Command: `python benchmarks/selection_rules.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
        "Cases from `benchmarks/peers.py` (same seeds: set r of a cell is the peers table's rep r). "
        "See the script's docstring for what is recorded and how a rule is scored.",
        "",
        *evaluate(cells, records, args.folds),
        *(compare_peers(*args.peers) if args.peers else []),
        "",
        f"Wall time: {time.perf_counter() - t0:.0f} s (torch threads 1; cached sets are free).",
    ]
    out = Path(args.out or HERE / "selection_rules.md")
    text = "\n".join(lines) + "\n"
    if not args.smoke or args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
