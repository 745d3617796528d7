"""Findings written from the measured numbers, not typed in.

:func:`collect_facts` gathers the numbers the report's conclusions rest on;
each ``claim_*`` function turns them into a verdict on one of the seed's
conclusions (``supported``, ``not supported`` or ``partly``) with the evidence
in one paragraph. Change the measurements and the text changes with them.
"""

from __future__ import annotations

import math

CHANCE = 0.1
TRAINS = 0.5  # final training accuracy that counts as "trains" in 3 epochs


def _f(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"


def _sim_facts(sims):
    from propagate.report.compute import geometric_rate

    out = {}
    for label, t in sims.sim.groupby("config"):
        t = t[t["layer"] >= 1].sort_values("layer")
        th = sims.theory[(sims.theory["config"] == label) & (sims.theory["layer"] >= 1)].sort_values("layer") \
            if sims.theory is not None else None
        last = t.iloc[-1]
        g = t["grad_norm"].to_numpy(float)
        out[label] = {
            "depth": int(last["layer"]),
            "var_first": float(t["pre_var"].iloc[0]),
            "var_last": float(last["pre_var"]),
            "mean_last": float(last["post_mean"]),
            "rate": geometric_rate(t, "pre_var", first=3),
            "theory_var_last": float(th["pre_var"].iloc[-1]) if th is not None and len(th) else math.nan,
            "theory_rate": geometric_rate(th, "pre_var", first=3) if th is not None and len(th) else math.nan,
            "grad_first_over_last": float(g[0] / g[-1]) if len(g) and g[-1] > 0 else math.nan,
            # per-layer factor of the gradient norm going down, fitted over layers 3..depth
            "grad_rate": 1.0 / geometric_rate(t, "grad_norm", first=3),
            "theory_grad_rate": 1.0 / geometric_rate(th, "grad_norm", first=3) if th is not None and len(th) else math.nan,
            "dead_last": float(last["dead_frac"]) if "dead_frac" in t else math.nan,
        }
    return out


def _train_facts(summary):
    out = {}
    for _, r in summary.iterrows():
        n = int(r["epochs_done"])
        accs = [r.get(f"acc_{e}", math.nan) for e in range(1, n + 1)]
        out.setdefault(r["preset"], {})[float(r["lr"])] = {
            "acc": float(accs[-1]) if accs else math.nan,
            "best_acc": float(max(accs)) if accs else math.nan,
            "val_acc": float(r.get(f"val_acc_{n}", math.nan)) if n else math.nan,
            "train_eval_acc": float(r.get(f"train_eval_acc_{n}", math.nan)) if n else math.nan,
            "loss": float(r["loss"]),
            "status": r["status"],
        }
    return out


def collect_facts(selu, sims, summary, history, layers, lines, opts) -> dict:
    """The numbers behind the findings (JSON-ready)."""
    facts = {
        "selu": {
            "lambda": selu["lambda"],
            "alpha": selu["alpha"],
            "spectral_norm": selu.get("spectral_norm"),
            "attracting": selu.get("attracting"),
            "box_max_norm": (selu.get("stability_box") or {}).get("max_spectral_norm"),
        },
        "simulation": _sim_facts(sims),
        "training": _train_facts(summary),
        "lrs": list(opts.lrs),
        "epochs": opts.epochs,
    }
    facts["claims"] = [c(facts) for c in (claim_relu, claim_bn, claim_selu_alone, claim_selu_bn_best, claim_val_acc)]
    facts["step_size"] = step_size_note(facts)
    return facts


def _acc(facts, preset, key="acc"):
    """{lr: value} for a preset, or {} when it was not run."""
    return {lr: v[key] for lr, v in facts["training"].get(preset, {}).items()}


def _accs_text(facts, preset, key="acc"):
    d = _acc(facts, preset, key)
    return ", ".join(f"{_f(v)} at lr {lr:g}" for lr, v in d.items()) or "not run"


def _sim(facts, label):
    return facts["simulation"].get(label, {})


def step_size_note(facts) -> str:
    """One sentence on how the best result depends on the learning rate."""
    best = {}
    for preset, d in facts["training"].items():
        for lr, v in d.items():
            if not math.isfinite(best.get(lr, (math.nan,))[0]) or v["acc"] > best[lr][0]:
                best[lr] = (v["acc"], preset)
    if len(best) < 2:
        return ""
    parts = [f"at lr {lr:g} the best final training accuracy is {_f(a)} ({p})" for lr, (a, p) in sorted(best.items(), reverse=True)]
    return "Step size matters as much as the recipe: " + "; ".join(parts) + "."


def claim_relu(facts) -> dict:
    accs = _acc(facts, "relu")
    s = _sim(facts, "relu/glorot_uniform")
    he = _acc(facts, "relu-he-normal")
    ok = bool(accs) and all(a < TRAINS for a in accs.values())
    he_trains = any(a >= TRAINS for a in he.values())
    text = (
        f"Training accuracy after the last epoch: {_accs_text(facts, 'relu')}. At initialization the pre-activation "
        f"variance shrinks by a factor {_f(s.get('rate'))} per layer (theory: {_f(s.get('theory_rate'))}, "
        f"sigma_w^2 E[relu(h)^2]/q = 1/2 for glorot's sigma_w^2 = 1 on 256x256 layers) and is "
        f"{_f(s.get('var_last'))} at layer {s.get('depth')}; the gradient reaching layer 1 is "
        f"{_f(s.get('grad_first_over_last'))} times that at the top. "
    )
    text += (f"With He's initialization (sigma_w^2 = 2, the critical point) ReLU keeps its variance "
             f"(factor {_f(_sim(facts, 'relu/he_normal').get('rate'))} per layer) and reaches {_accs_text(facts, 'relu-he-normal')}: "
             + ("the failure is the initialization, not ReLU." if he_trains else
                f"the signal survives at initialization, yet {facts['epochs']} epoch(s) of this optimizer are not enough "
                "at this depth."))
    return {"claim": "Plain ReLU does not train at depth 50.", "verdict": "supported" if ok else "not supported",
            "evidence": text}


def claim_bn(facts) -> dict:
    plain, bn = _acc(facts, "relu"), _acc(facts, "relu-bn")
    gain = {lr: bn[lr] - plain.get(lr, math.nan) for lr in bn}
    helps = [g for g in gain.values() if math.isfinite(g)]
    s = _sim(facts, "relu/glorot_uniform+BN")
    verdict = "supported" if helps and max(helps) > 0.02 and max(bn.values()) < TRAINS else (
        "not supported" if helps and max(helps) <= 0.02 else "partly")
    text = (
        f"ReLU + BN reaches {_accs_text(facts, 'relu-bn')} against {_accs_text(facts, 'relu')} without BN. "
        f"BN restores the forward signal (variance {_f(s.get('var_last'))} at layer {s.get('depth')} instead of "
        f"{_f(_sim(facts, 'relu/glorot_uniform').get('var_last'))}), but the gradient now grows towards the input: "
        f"{_f(s.get('grad_first_over_last'))} times larger at layer 1 than at the top, a factor "
        f"{_f(s.get('grad_rate'))} per layer (mean-field theory with an infinite batch: "
        f"{_f(s.get('theory_grad_rate'))}), which makes the first layers' steps large and erratic."
    )
    return {"claim": "Batch normalization helps a little.", "verdict": verdict, "evidence": text}


def claim_selu_alone(facts) -> dict:
    accs = _acc(facts, "selu")
    s = _sim(facts, "selu/glorot_uniform")
    fails = {lr: a < TRAINS for lr, a in accs.items()}
    verdict = ("supported" if accs and all(fails.values()) else
               "not supported" if accs and not any(fails.values()) else "partly")
    text = (
        f"SELU with glorot_uniform (which for 256x256 layers has lecun's variance 1/256) keeps its signal at "
        f"initialization: variance {_f(s.get('var_last'))} and mean {_f(s.get('mean_last'))} at layer "
        f"{s.get('depth')} (theory {_f(s.get('theory_var_last'))}); its gradient grows mildly towards the input "
        f"(layer 1 / top {_f(s.get('grad_first_over_last'))}, {_f(s.get('grad_rate'))} per layer; theory "
        f"{_f(s.get('theory_grad_rate'))}, the square root of chi_1 at SELU's fixed point). Trained: {_accs_text(facts, 'selu')}; the SNN paper's recipe "
        f"(lecun_normal, no BN): {_accs_text(facts, 'selu-lecun-normal')}. "
    )
    lrs = sorted(accs)
    if len(lrs) > 1 and accs[lrs[0]] > accs[lrs[-1]] + 0.1:
        text += (f"The difference between learning rates is the step size: at lr {lrs[-1]:g} RMSprop's first steps "
                 f"knock the 52-layer network off its fixed point, at lr {lrs[0]:g} they do not. ")
    text += ("The seed's run 3 reported losses identical to its ReLU run (2.3014), and its listing was a copy of the "
             "ReLU code: its numbers do not describe SELU.")
    return {"claim": "SELU alone does not work.", "verdict": verdict, "evidence": text}


def claim_selu_bn_best(facts) -> dict:
    """Is SELU + BN + lecun_uniform clearly (by > 0.02) the best final training accuracy, at each learning rate?"""
    claim = "SELU + BN + lecun_uniform is clearly the best (so the SNN paper holds)."
    me = "selu-bn-lecun-uniform"
    per_lr, wins = [], []
    for lr in sorted({lr for d in facts["training"].values() for lr in d}, reverse=True):
        accs = {p: d[lr]["acc"] for p, d in facts["training"].items() if lr in d}
        if me not in accs or len(accs) < 2:
            continue
        rival, rival_acc = max(((p, a) for p, a in accs.items() if p != me), key=lambda kv: kv[1])
        wins.append(accs[me] > rival_acc + 0.02)
        per_lr.append(f"at lr {lr:g} it ends at {_f(accs[me])} against {_f(rival_acc)} for the next best ({rival}), "
                      f"test accuracy {_f(facts['training'][me][lr]['val_acc'])}")
    if not wins:
        return {"claim": claim, "verdict": "partly", "evidence": "not every preset was run"}
    verdict = "supported" if all(wins) else "not supported" if not any(wins) else "partly"
    text = ("Final training accuracy: " + "; ".join(per_lr) + ". The SNN paper's own recipe (SELU + lecun_normal, "
            f"no BN) reaches training accuracy {_accs_text(facts, 'selu-lecun-normal')} and test accuracy "
            f"{_accs_text(facts, 'selu-lecun-normal', 'val_acc')}, with no BN running statistics to go stale.")
    return {"claim": claim, "verdict": verdict, "evidence": text}


def claim_val_acc(facts) -> dict:
    """Do BN runs whose training accuracy climbs keep a near-chance test accuracy, and is BN's eval mode why?"""
    climbing, near_chance, rows = 0, 0, []
    for p in ("relu-bn", "selu-bn-random-uniform", "selu-bn-lecun-uniform"):
        for lr, v in facts["training"].get(p, {}).items():
            rows.append(f"{p} at lr {lr:g}: running train acc {_f(v['acc'])}, the same training images in eval "
                        f"mode {_f(v['train_eval_acc'])}, test {_f(v['val_acc'])}")
            if v["acc"] >= 0.2:
                climbing += 1
                near_chance += v["val_acc"] < 0.2
    if climbing == 0:
        verdict = "partly"
        head = "No BN run's training accuracy climbed above 0.2 here, so the pattern cannot be seen. "
    elif near_chance == climbing:
        verdict = "supported"
        head = f"Every BN run whose training accuracy passed 0.2 ({climbing}) has test accuracy below 0.2. "
    elif near_chance == 0:
        verdict = "not supported"
        head = f"No BN run whose training accuracy passed 0.2 ({climbing}) has test accuracy below 0.2. "
    else:
        verdict = "partly"
        head = f"{near_chance} of the {climbing} BN runs whose training accuracy passed 0.2 have test accuracy below 0.2. "
    text = (head + "The gap between train-mode and eval-mode accuracy on the *same* training images measures what "
            "inference-mode BN (running statistics, momentum 0.99) costs: " + "; ".join(rows) + ". Where eval-mode "
            "accuracy on training images is as low as the test accuracy, the near-chance val_acc is the BN running "
            "averages lagging behind 50 layers of drifting statistics, not overfitting.")
    return {"claim": "BN runs have val_acc near chance while acc climbs (train-mode vs inference-mode statistics).",
            "verdict": verdict, "evidence": text}
