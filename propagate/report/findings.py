"""Findings written from the measured numbers, with their statistics.

:func:`collect_facts` gathers the numbers the report's conclusions rest on:
per-layer simulation summaries and, for every training run, the final
metrics of every seed with their Student t intervals
(:mod:`propagate.confidence`), each on its quantity's scale
(:func:`propagate.confidence.interval_of`: accuracies on the logit scale, so
they stay in [0, 1]; losses on the log scale, so they stay above 0; paired
differences of accuracies on the atanh scale). Each ``claim_*`` function turns them into a
verdict on one of the lecture demo's conclusions with the evidence in one
paragraph.

Verdicts come from intervals, never from fixed margins between single runs:

- "A beats B": the 95% t interval of the paired difference (same seeds) lies above 0;
  "tied" when it contains 0;
- "best": judged at each learning rate on its own, on test accuracy: a run is
  the best there when it beats every other run at that learning rate;
- "trains": the lower end of the interval of final training accuracy exceeds
  :data:`TRAINS` (and "does not train": its upper end is below it);
- "near chance": the test accuracy's excess over chance (1/classes), at the
  upper end of its interval, is less than :data:`NEAR_CHANCE_SHARE` of the
  training accuracy's mean excess over chance, and the paired train - test gap
  excludes 0.

A verdict is ``supported`` when every case decides for the claim, ``not
supported`` when every case decides against it, ``undecided`` when no case can
be decided (one seed gives no interval, or an interval straddles the level) and
``partly`` otherwise. Every verdict states N, the intervals and the test. The
intervals are not corrected for multiple comparisons.
"""

from __future__ import annotations

import math

from propagate.confidence import LEVEL, Interval, format_number, interval_of, kind_of, paired_difference

__all__ = ["TRAINS", "NEAR_CHANCE_SHARE", "VERDICTS", "collect_facts", "training_facts", "simulation_facts",
           "flagged_layers", "verdict", "sim_config", "trains", "beats", "compare", "best_at", "near_chance", "step_size_note", "claim_relu", "claim_bn",
           "claim_selu_alone", "claim_selu_bn_best", "claim_val_acc", "CLAIMS"]

#: Final training accuracy (fraction) whose interval decides "trains" (lower end above)
#: or "does not train" (upper end below) after the report's few epochs.
TRAINS = 0.5
#: "Near chance": test accuracy recovers less than this share of the training accuracy's gain over chance.
NEAR_CHANCE_SHARE = 0.5
VERDICTS = ("supported", "not supported", "partly", "undecided")
#: The per-seed metrics of a run that the findings use (columns of the training history).
METRICS = ("acc", "val_acc", "train_eval_acc", "loss")

_f = format_number  # short local name for the many numbers in the prose


# --------------------------------------------------------------------------- #
# Facts: tables -> JSON-ready numbers
# --------------------------------------------------------------------------- #


def simulation_facts(sims) -> dict:
    """Per configuration of the simulation: variances, rates and gradient factors (JSON-ready).

    Keyed by the ``config`` label for reading; each entry also carries the
    configuration fields (``activation``, ``init``, ``normalization``,
    ``residual``) from the table's columns, which is what :func:`sim_config` looks up.
    """
    from propagate.report.compute import geometric_rate
    from propagate.report.style import config_fields

    out = {}
    known = None if "activation" in sims.sim else _seed_config_fields()
    for label, t in sims.sim.groupby("config", sort=False):
        fields = config_fields(t) if known is None else known.get(label, {})
        flags = flagged_layers(t)
        t = t[t["layer"] >= 1].sort_values("layer")
        th = sims.theory[(sims.theory["config"] == label) & (sims.theory["layer"] >= 1)].sort_values("layer") \
            if sims.theory is not None else None
        has_th = th is not None and len(th) > 0
        last = t.iloc[-1]
        g = t["grad_norm"].to_numpy(float)
        out[label] = {
            **fields,
            "depth": int(last["layer"]),
            "var_first": float(t["pre_var"].iloc[0]),
            "var_last": float(last["pre_var"]),
            "mean_last": float(last["post_mean"]),
            "rate": geometric_rate(t, "pre_var", first=3),
            "theory_var_last": float(th["pre_var"].iloc[-1]) if has_th else math.nan,
            "theory_rate": geometric_rate(th, "pre_var", first=3) if has_th else math.nan,
            "grad_first_over_last": float(g[0] / g[-1]) if len(g) and g[-1] > 0 else math.nan,
            # per-layer factor of the gradient norm going down, fitted over layers 3..depth
            "grad_rate": 1.0 / geometric_rate(t, "grad_norm", first=3),
            "theory_grad_rate": 1.0 / geometric_rate(th, "grad_norm", first=3) if has_th else math.nan,
            "dead_last": float(last["dead_frac"]) if "dead_frac" in t else math.nan,
            "grad_first": float(g[0]) if len(g) else math.nan,
            "theory_grad_first": _theory_grad_first(th) if has_th else math.nan,
            **flags,
        }
    return out


def flagged_layers(table) -> dict:
    """How many layers of a per-layer table are flagged, and in which statistics.

    A layer is flagged (``disagree``, :func:`propagate.stats.compare_with_theory`) when a
    measured statistic differs from mean-field theory by more than 4 standard errors
    across networks plus the finite-width allowance. Returns ``flagged`` (layers with
    any flag, the count of the table's ``disagree`` column), ``flagged_in``
    (``{statistic: layers}``), ``flagged_from``/``flagged_to`` (the first and last
    flagged layer, None without flags) and ``judged`` (False without standard errors: one network).
    """
    if "disagree" not in table:
        return {"flagged": 0, "flagged_in": {}, "judged": False, "flagged_from": None, "flagged_to": None}
    counts: dict = {}
    for f in table["disagree_in"].fillna(""):
        for stat in filter(None, str(f).split(",")):
            counts[stat] = counts.get(stat, 0) + 1
    where = table.loc[table["disagree"].astype(bool), "layer"]
    return {"flagged": int(len(where)), "flagged_in": counts,
            "judged": bool(table["judged"].astype(bool).any()) if "judged" in table else True,
            "flagged_from": int(where.min()) if len(where) else None, "flagged_to": int(where.max()) if len(where) else None}


def _theory_grad_first(th) -> float:
    """Theory's gradient norm at layer 1 as the flag compares it: with the signal-direction term where there is one."""
    row = th.iloc[0]
    sig = row.get("grad_norm_signal", math.nan)
    return float(math.hypot(row["grad_norm"], sig)) if math.isfinite(sig) else float(row["grad_norm"])


def _seed_config_fields() -> dict:
    """Transitional, for simulation tables without configuration columns: the fields of the
    report's simulated configurations, keyed by the label their spec gives (built from the
    fields, never parsed from a label)."""
    from propagate.report.compute import SIM_CONFIGS
    from propagate.spec import NetworkSpec

    return {NetworkSpec.seed(a, i, bn, out_features=None).label():
            {"activation": a, "init": i, "normalization": "batchnorm" if bn else "none", "residual": 0.0}
            for bn in (False, True) for a, i in SIM_CONFIGS}


def _final_per_seed(h):
    """Each seed's row at its last epoch."""
    return h.sort_values("epoch").groupby("seed", sort=True).tail(1).sort_values("seed")


def training_facts(history, summary=None, seed: int = 0) -> dict:
    """``{preset: {lr: run facts}}`` from the per-seed training history.

    ``history`` has one row per (run, seed, epoch) with ``preset``, ``lr``,
    ``epoch`` and the :data:`METRICS` columns; a history without a ``seed``
    column is one seed, ``seed``. Each run's facts hold its ``seeds``, the
    last ``epoch``, per-seed final values (``per_seed``) and, per metric, the
    t interval of the mean over seeds (:meth:`Interval.to_dict`).
    """
    out: dict = {}
    if history is None or len(history) == 0:
        return out
    if "seed" not in history:
        history = history.assign(seed=seed)
    status = {}
    if summary is not None and len(summary) and "status" in summary:
        for (p, lr), s in summary.groupby(["preset", "lr"], sort=False):
            status[(p, float(lr))] = ", ".join(dict.fromkeys(str(v) for v in s["status"]))
    for (preset, lr), h in history.groupby(["preset", "lr"], sort=False):
        last = _final_per_seed(h)
        seeds = [int(s) for s in last["seed"]]
        per_seed = {m: [float(v) for v in last[m]] if m in last else [math.nan] * len(seeds) for m in METRICS}
        entry = {"seeds": seeds, "epoch": int(last["epoch"].max()), "per_seed": per_seed,
                 "status": status.get((preset, float(lr)), "")}
        for m in METRICS:
            entry[m] = interval_of(m, per_seed[m]).to_dict()
        out.setdefault(preset, {})[float(lr)] = entry
    return out


def collect_facts(selu, sims, summary, history, layers, lines, opts, classes: int = 10) -> dict:
    """The numbers behind the findings (JSON-ready), and the claims judged on them.

    ``history`` is the per-seed training history (one row per run, seed and
    epoch); ``classes`` fixes chance accuracy ``1/classes``.
    """
    facts = {
        "selu": {
            "lambda": selu["lambda"],
            "alpha": selu["alpha"],
            "spectral_norm": selu.get("spectral_norm"),
            "attracting": selu.get("attracting"),
            "box_max_norm": (selu.get("stability_box") or {}).get("max_spectral_norm"),
        },
        "simulation": simulation_facts(sims),
        "training": training_facts(history, summary, getattr(opts, "seed", 0)),
        "lrs": list(opts.lrs),
        "epochs": opts.epochs,
        "chance": 1.0 / classes,
        "level": LEVEL,
    }
    facts["claims"] = [c(facts) for c in CLAIMS]
    facts["step_size"] = step_size_note(facts)
    return facts


# --------------------------------------------------------------------------- #
# Tests on the facts
# --------------------------------------------------------------------------- #


def verdict(outcomes) -> str:
    """Combine per-case outcomes (True: for the claim, False: against, None: undecided)."""
    outcomes = list(outcomes)
    decided = [o for o in outcomes if o is not None]
    if not decided:
        return "undecided"
    if len(decided) == len(outcomes):
        if all(decided):
            return "supported"
        if not any(decided):
            return "not supported"
    return "partly"


def _interval(run: dict, metric: str = "acc") -> Interval:
    return Interval(**run[metric])


def _by_seed(run: dict, metric: str) -> dict:
    return dict(zip(run["seeds"], run["per_seed"][metric]))


def trains(run: dict, level: float = TRAINS) -> bool | None:
    """True when the interval of final training accuracy lies above ``level``, False when below, else None."""
    iv = _interval(run, "acc")
    if not iv.has_interval:
        return None
    return True if iv.low > level else False if iv.high < level else None


def beats(a: dict, b: dict, metric: str = "acc") -> tuple[bool | None, Interval]:
    """Does run ``a`` beat run ``b`` on ``metric``? Paired over their common seeds.

    Returns ``(outcome, interval of mean(a - b))``: True when the interval lies
    above 0, False when it contains 0 or lies below, None without an interval.
    """
    iv = paired_difference(_by_seed(a, metric), _by_seed(b, metric), kind=kind_of(metric))
    return (None if not iv.has_interval else iv.low > 0), iv


def near_chance(run: dict, chance: float) -> tuple[bool | None, Interval, Interval]:
    """Is the test accuracy near chance while the training accuracy is not? (see the module docstring)

    Returns ``(outcome, val_acc interval, interval of the paired gap acc - val_acc)``.
    """
    val = _interval(run, "val_acc")
    gap = paired_difference(_by_seed(run, "acc"), _by_seed(run, "val_acc"), kind="proportion")
    if not (val.has_interval and gap.has_interval):
        return None, val, gap
    acc_excess = _interval(run, "acc").mean - chance
    near = val.high - chance < NEAR_CHANCE_SHARE * acc_excess
    return bool(near and gap.low > 0), val, gap


# --------------------------------------------------------------------------- #
# Prose helpers
# --------------------------------------------------------------------------- #


def _runs(facts, preset) -> dict:
    """{lr: run facts} for a preset, or {} when it was not run."""
    return facts["training"].get(preset, {})


def _accs_text(facts, preset, key="acc") -> str:
    d = _runs(facts, preset)
    return ", ".join(f"{_interval(v, key).describe()} at lr {lr:g}" for lr, v in d.items()) or "not run"


def sim_config(facts, activation, init, normalization="none", residual=0.0) -> dict:
    """The simulation facts of one configuration, found by its fields ({} when not simulated)."""
    for s in facts["simulation"].values():
        if (s.get("activation"), s.get("init"), s.get("normalization", "none"), float(s.get("residual", 0.0))) == \
                (activation, init, normalization, float(residual)):
            return s
    return {}


def _test_note(facts) -> str:
    return f"({100 * facts.get('level', LEVEL):g}% Student t intervals over seeds)"


def _trains_test() -> str:
    return (f"Test: a run trains when the lower end of its final training accuracy's interval exceeds {TRAINS:g}, "
            f"and does not when the upper end is below {TRAINS:g}.")


def _fails(run) -> bool | None:
    t = trains(run)
    return None if t is None else not t


# --------------------------------------------------------------------------- #
# The claims
# --------------------------------------------------------------------------- #


def step_size_note(facts) -> str:
    """One sentence on how the best mean final training accuracy depends on the learning rate."""
    best: dict = {}
    for preset, d in facts["training"].items():
        for lr, v in d.items():
            m = _interval(v).mean
            if math.isfinite(m) and (lr not in best or m > _interval(best[lr][1]).mean):
                best[lr] = (preset, v)
    if len(best) < 2:
        return ""
    parts = [f"at lr {lr:g} the best final training accuracy is {_interval(v).describe()} ({p})"
             for lr, (p, v) in sorted(best.items(), reverse=True)]
    return "Step size matters as much as the recipe: " + "; ".join(parts) + "."


def claim_relu(facts) -> dict:
    runs = _runs(facts, "relu")
    s = sim_config(facts, "relu", "glorot_uniform")
    he_runs = _runs(facts, "relu-he-normal")
    he = [trains(v) for v in he_runs.values()]
    text = (
        f"Final training accuracy {_test_note(facts)}: {_accs_text(facts, 'relu')}. At initialization the "
        f"pre-activation variance shrinks by a factor {_f(s.get('rate'))} per layer (theory: {_f(s.get('theory_rate'))}, "
        f"sigma_w^2 E[relu(h)^2]/q = 1/2 for glorot's sigma_w^2 = 1 on 256x256 layers) and is "
        f"{_f(s.get('var_last'))} at layer {s.get('depth')}; the gradient reaching layer 1 is "
        f"{_f(s.get('grad_first_over_last'))} times that at the top. "
    )
    text += (f"With He's initialization (sigma_w^2 = 2, the critical point) ReLU keeps its variance "
             f"(factor {_f(sim_config(facts, 'relu', 'he_normal').get('rate'))} per layer) and reaches "
             f"{_accs_text(facts, 'relu-he-normal')}: ")
    if any(t is True for t in he):
        text += "the failure is the initialization, not ReLU. "
    elif he and all(t is False for t in he):
        text += (f"the signal survives at initialization, yet {facts['epochs']} epoch(s) of this optimizer are not "
                 "enough at this depth. ")
    else:
        text += "whether it trains cannot be decided from these seeds. "
    text += _trains_test()
    return {"claim": "Plain ReLU does not train at depth 50.",
            "verdict": verdict(_fails(v) for v in runs.values()), "evidence": text}


def claim_bn(facts) -> dict:
    """BN "helps a little": relu-bn beats relu (paired) at some learning rate, yet does not train."""
    plain, bn = _runs(facts, "relu"), _runs(facts, "relu-bn")
    gains = {lr: beats(v, plain[lr]) for lr, v in bn.items() if lr in plain}
    helps = [o for o, _ in gains.values()]
    bn_trains = [trains(v) for v in bn.values()]
    if not helps or all(h is None for h in helps):
        verdict_ = "undecided"
    elif any(h is True for h in helps):
        verdict_ = "supported" if all(t is False for t in bn_trains) else "partly"
    elif all(h is False for h in helps):
        verdict_ = "not supported"
    else:
        verdict_ = "partly"
    s = sim_config(facts, "relu", "glorot_uniform", "batchnorm")
    gain_text = "; ".join(f"at lr {lr:g} the paired gain in final training accuracy (relu-bn - relu, same seeds) is "
                          f"{iv.describe()}" for lr, (_, iv) in gains.items()) or "no paired runs"
    text = (
        f"ReLU + BN reaches {_accs_text(facts, 'relu-bn')} against {_accs_text(facts, 'relu')} without BN; "
        f"{gain_text}. Test: BN helps where that interval lies above 0, and helps only a little where relu-bn "
        f"itself does not train (upper end of its interval below {TRAINS:g}). "
        f"BN restores the forward signal (variance {_f(s.get('var_last'))} at layer {s.get('depth')} instead of "
        f"{_f(sim_config(facts, 'relu', 'glorot_uniform').get('var_last'))}), but the gradient now grows towards the input: "
        f"{_f(s.get('grad_first_over_last'))} times larger at layer 1 than at the top, a factor "
        f"{_f(s.get('grad_rate'))} per layer (mean-field theory with an infinite batch: "
        f"{_f(s.get('theory_grad_rate'))}), which makes the first layers' steps large and erratic."
    )
    return {"claim": "Batch normalization helps a little.", "verdict": verdict_, "evidence": text}


def claim_selu_alone(facts) -> dict:
    runs = _runs(facts, "selu")
    s = sim_config(facts, "selu", "glorot_uniform")
    text = (
        f"SELU with glorot_uniform (which for 256x256 layers has lecun's variance 1/256) keeps its signal at "
        f"initialization: variance {_f(s.get('var_last'))} and mean {_f(s.get('mean_last'))} at layer "
        f"{s.get('depth')} (theory {_f(s.get('theory_var_last'))}); its gradient grows mildly towards the input "
        f"(layer 1 / top {_f(s.get('grad_first_over_last'))}, {_f(s.get('grad_rate'))} per layer; theory "
        f"{_f(s.get('theory_grad_rate'))}, the square root of chi_1 at SELU's fixed point). Trained "
        f"{_test_note(facts)}: {_accs_text(facts, 'selu')}; the SNN paper's recipe (lecun_normal, no BN): "
        f"{_accs_text(facts, 'selu-lecun-normal')}. "
    )
    lrs = sorted(runs)
    if len(lrs) > 1:
        small_wins, iv = beats(runs[lrs[0]], runs[lrs[-1]])
        if small_wins:
            text += (f"The difference between learning rates is the step size (lr {lrs[0]:g} - lr {lrs[-1]:g}, "
                     f"paired over seeds: {iv.describe()}): at lr {lrs[-1]:g} RMSprop's first steps knock the "
                     f"network of depth 51 off its fixed point, at lr {lrs[0]:g} they do not. ")
    text += _trains_test() + (" The lecture demo's run 3 reported losses identical to its ReLU run (2.3014), and its listing "
                              "was a copy of the ReLU code: its numbers do not describe SELU.")
    return {"claim": "SELU alone does not work.", "verdict": verdict(_fails(v) for v in runs.values()),
            "evidence": text}


def compare(a: dict, b: dict, metric: str = "val_acc") -> tuple[str, Interval]:
    """Run ``a`` against run ``b`` on ``metric``, paired over their common seeds.

    Returns ``(outcome, interval of mean(a - b))`` with outcome ``"ahead"`` (the
    interval lies above 0), ``"behind"`` (below 0), ``"tied"`` (it contains 0:
    tied within the interval) or ``"undecided"`` (no interval: fewer than 2 pairs).
    """
    _, iv = beats(a, b, metric)
    if not iv.has_interval:
        return "undecided", iv
    return ("ahead" if iv.low > 0 else "behind" if iv.high < 0 else "tied"), iv


def best_at(runs: dict, me: str, metric: str = "val_acc") -> tuple[bool | None, dict]:
    """Is ``runs[me]`` the best of ``runs`` (``{preset: run facts}``, one learning rate) on ``metric``?

    Returns ``(outcome, {rival: (compare outcome, paired interval)})``: True when it
    is ahead of every rival, False when any rival is tied with it or ahead of it
    (a tie within the interval is not "the best"), None otherwise (some comparison
    undecided, none against).
    """
    tests = {p: compare(runs[me], r, metric) for p, r in runs.items() if p != me}
    outs = {o for o, _ in tests.values()}
    if outs & {"tied", "behind"}:
        return False, tests
    return (None if "undecided" in outs else True), tests


def _best_text(lr, runs: dict, me: str, tests: dict) -> str:
    """One learning rate's evidence: its test accuracy, the rivals it trails, ties and leads, and the top run."""
    def group(kind, verb):
        ps = [p for p, (o, _) in tests.items() if o == kind]
        return f"{verb} {', '.join(f'{p} (paired difference {tests[p][1].describe()})' for p in ps)}" if ps else ""

    top = max(runs, key=lambda p: _finite(_interval(runs[p], "val_acc").mean))
    ahead = [p for p, (o, _) in tests.items() if o == "ahead"]
    closest = min(ahead, key=lambda p: _closeness(tests[p][1])) if ahead else None
    parts = [group("behind", "behind"), group("tied", "tied within the interval with"),
             group("undecided", "undecided against"),
             f"ahead of {len(ahead)} other run(s) (closest: {closest}, paired difference "
             f"{tests[closest][1].describe()})" if closest else ""]
    return (f"at lr {lr:g} it reaches test accuracy {_interval(runs[me], 'val_acc').describe()} and training "
            f"accuracy {_interval(runs[me]).describe()}: " + "; ".join(p for p in parts if p)
            + f"; the highest mean test accuracy at this lr is {top}'s, "
              f"{_interval(runs[top], 'val_acc').describe()}")


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def claim_selu_bn_best(facts) -> dict:
    """Is SELU + BN + lecun_uniform the best preset? Judged at each learning rate on its own, on test accuracy:
    the best where the paired difference (same seeds) to every other preset lies above 0; a tie (an interval
    that contains 0) is stated and is not "the best"."""
    claim = "SELU + BN + lecun_uniform is clearly the best (so the SNN paper holds)."
    me = "selu-bn-lecun-uniform"
    per_lr, outcomes = [], []
    for lr in sorted({lr for d in facts["training"].values() for lr in d}, reverse=True):
        runs = {p: d[lr] for p, d in facts["training"].items() if lr in d}
        if me not in runs or len(runs) < 2:
            continue
        outcome, tests = best_at(runs, me)
        outcomes.append(outcome)
        per_lr.append(_best_text(lr, runs, me, tests))
    if not outcomes:
        return {"claim": claim, "verdict": "undecided", "evidence": "not every preset was run"}
    text = (f"Judged at each learning rate on its own, on test accuracy {_test_note(facts)}: " + "; ".join(per_lr)
            + ". Test: it is the best at a learning rate where the paired difference in test accuracy to every other "
            "preset there (same seeds) lies above 0; where that interval contains 0 the two are tied within the "
            "interval, which is not \"clearly the best\". The write-up read training accuracy; a best model is "
            "one that does well on images it was not trained on.")
    return {"claim": claim, "verdict": verdict(outcomes), "evidence": text}


def _closeness(diff: Interval) -> float:
    """How close a rival comes (smaller: closer): the lower end of the paired difference, else its mean."""
    value = diff.low if diff.has_interval else diff.mean
    return value if math.isfinite(value) else math.inf


BN_PRESETS = ("relu-bn", "selu-bn-random-uniform", "selu-bn-lecun-uniform")


def claim_val_acc(facts) -> dict:
    """Do BN runs whose training accuracy climbs keep a near-chance test accuracy, and is BN's eval mode why?"""
    chance = facts.get("chance", 0.1)
    outcomes, rows = [], []
    for p in BN_PRESETS:
        for lr, v in _runs(facts, p).items():
            near, val, gap = near_chance(v, chance)
            row = (f"{p} at lr {lr:g}: running train acc {_interval(v).describe()}, the same training images in "
                   f"eval mode {_interval(v, 'train_eval_acc').describe()}, test {val.describe()}")
            if trains(v):
                outcomes.append(near)
                row += f", train - test gap (paired) {gap.describe()}"
            rows.append(row)
    level = f"{TRAINS:g}"
    test = (f"Test: a run climbs when the lower end of its training accuracy's interval exceeds {level}; its test "
            f"accuracy is near chance ({_f(chance)}) when the upper end of its interval is above chance by less than "
            f"{NEAR_CHANCE_SHARE:g} of the training accuracy's excess over chance and the paired train - test gap "
            f"excludes 0. ")
    n_near = sum(o is True for o in outcomes)
    if not outcomes:
        one_seed = any(_interval(v).n < 2 for p in BN_PRESETS for v in _runs(facts, p).values())
        head = (f"No BN run's training accuracy climbed above {level} by its interval"
                + (" (a run with one seed has no interval)" if one_seed else "") + ", so the pattern cannot be seen. ")
    else:
        head = f"{n_near} of the {len(outcomes)} BN runs whose training accuracy climbed have test accuracy near chance"
        undecided = sum(o is None for o in outcomes)
        head += f" ({undecided} undecided). " if undecided else ". "
    text = (head + test + "The gap between train-mode and eval-mode accuracy on the *same* training images measures "
            "what inference-mode BN (running statistics, momentum 0.99) costs: " + "; ".join(rows) + ". Where "
            "eval-mode accuracy on training images is as low as the test accuracy, the near-chance val_acc is the BN "
            "running averages lagging behind 50 layers of drifting statistics, not overfitting.")
    return {"claim": "BN runs have val_acc near chance while acc climbs (train-mode vs inference-mode statistics).",
            "verdict": verdict(outcomes) if outcomes else "undecided", "evidence": text}


CLAIMS = (claim_relu, claim_bn, claim_selu_alone, claim_selu_bn_best, claim_val_acc)
