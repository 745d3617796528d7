"""The report's README.md: a short paper written around the figures and numbers.

The prose is the template ``propagate/templates/report_page.md``; the
functions here compute what goes into its ``<<slots>>``, one section at a time.
"""

from __future__ import annotations

import math

from propagate.confidence import format_number
from propagate.templates import render as render_template


def markdown_table(header, rows) -> str:
    """A GitHub markdown table from a header and rows of cells (``str()`` of each cell)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def simulation_table(facts) -> str:
    """Section 2's table: per configuration, variance, per-layer factors, mean, gradient ratio, dead units."""
    f = format_number
    rows = []
    for label, s in facts["simulation"].items():
        rows.append([f"`{label}`", f(s["var_first"]), f(s["var_last"]), f(s["theory_var_last"]), f(s["rate"]),
                     f(s["theory_rate"]), f(s["mean_last"]), f(s["grad_first_over_last"]),
                     f(100 * s["dead_last"], 1) if math.isfinite(s["dead_last"]) else "n/a", _flag_cell(s)])
    return markdown_table(["configuration", "var(h^1)", "var(h^51) sim", "var(h^51) theory", "per-layer factor sim",
                           "per-layer factor theory", "mean(x^51)", "grad layer 1 / top", "dead units at 51 (%)",
                           "layers flagged (statistic: layers)"], rows)


def _flag_cell(s) -> str:
    if not s.get("judged", True):
        return "not judged"
    inside = ", ".join(f"{k}: {v}" for k, v in s.get("flagged_in", {}).items())
    return f"{s.get('flagged', 0)}" + (f" ({inside})" if inside else "")


FLAG_TEST = ("a layer is flagged (column `disagree` of [`data/simulation_layers.csv`](data/simulation_layers.csv)) "
             "when a statistic measured there differs from mean-field theory by more than 4 standard errors across "
             "networks plus the finite-width allowance: at that layer the simulation does not confirm the theory")


#: Flagged layers of a configuration up to which its flags are called isolated (chance hits of a test run on
#: about 50 layers x 8 statistics).
ISOLATED = 2


def flag_note(facts) -> str:
    """Section 2's paragraph on the table's flagged layers: how many, where, and what the flags mean."""
    sims = facts["simulation"]
    if not any(s.get("judged", True) for s in sims.values()):
        return "With one network per configuration there is no standard error, so no layer is judged against theory."
    flagged = {label: s for label, s in sims.items() if s.get("flagged", 0)}
    head = f"Last column: {FLAG_TEST}. "
    if not flagged:
        return head + "No layer is flagged."
    text = head + (f"{len(flagged)} of the {len(sims)} configurations have flagged layers "
                   f"({sum(s['flagged'] for s in flagged.values())} layers in all). ")
    grad_bn = {label: s for label, s in flagged.items()
               if s.get("normalization") == "batchnorm" and s["flagged_in"].get("grad_norm", 0) > 1}
    if grad_bn:
        above = all(s["grad_first"] > s["theory_grad_first"] for s in grad_bn.values())
        text += (f"With BN the flagged statistic is the gradient norm, measured {'above' if above else 'away from'} "
                 "theory towards the input ("
                 + "; ".join(f"`{label}`: {s['flagged_in']['grad_norm']} layers, layer-1 gradient "
                             f"{format_number(s['grad_first'])} measured against {format_number(s['theory_grad_first'])}"
                             for label, s in grad_bn.items())
                 + "). The theory's BatchNorm is the infinite-batch limit (each unit's batch variance replaced by its "
                 "expectation, the inputs of a batch uncorrelated after it); the simulated networks normalize over "
                 "the finite batch of their inputs, and the small per-layer difference compounds over the 50 layers "
                 "of the backward pass. For these configurations the gradient lines of section 3 are therefore an "
                 "approximation that this test rejects, not a prediction within the error bars (Yang et al. 2019, "
                 "\"A mean field theory of batch normalization\", treat the finite batch). ")
    rest = [label for label in flagged if label not in grad_bn]
    many = [label for label in rest if flagged[label]["flagged"] > ISOLATED]
    few = [label for label in rest if flagged[label]["flagged"] <= ISOLATED]
    if many:
        text += ("Flagged elsewhere: " + "; ".join(
            f"`{label}`: {flagged[label]['flagged']} layers between layer {flagged[label]['flagged_from']} and "
            f"{flagged[label]['flagged_to']} (" + ", ".join(f"{k}: {v}" for k, v in flagged[label]["flagged_in"].items())
            + ")" for label in many)
            + ": there simulation and theory differ by more than the test allows, which this report does not "
              "explain further. ")
    if few:
        text += ("Isolated flags (" + ", ".join(f"`{label}`: {flagged[label]['flagged']}" for label in few)
                 + f" layer(s), at most {ISOLATED}) are what a 4-standard-error test run on every layer and statistic "
                   "can give by chance.")
    return text.strip()


def grad_flag_note(facts) -> str:
    """Section 3's sentence on the gradient norm's flagged layers (the same count as section 2's table)."""
    sims = facts["simulation"]
    n = {label: s.get("flagged_in", {}).get("grad_norm", 0) for label, s in sims.items()}
    if not any(n.values()):
        return "No layer's gradient norm is flagged against theory."
    where = ", ".join(f"`{label}` {k}" for label, k in n.items() if k)
    return (f"The gradient norm is flagged against theory at {sum(n.values())} layers ({where}; see the note under "
            "section 2's table for what a flag means and why BN's gradients miss the infinite-batch theory).")


def _header_values(opts, dataset, summary, timings, elapsed) -> dict:
    """Title line and the build note: mode, machine, time per step, training time."""
    train_s = float(summary["seconds"].sum()) if "seconds" in summary else math.nan
    return {
        "dataset": dataset.name,
        "mode": "`--quick`: reduced sizes, for tests and first looks" if opts.quick else "full version",
        "machine_note": " on " + opts.machine if opts.machine else "",
        "minutes": f"{elapsed / 60:.1f}",
        "timings": ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        "train_note": (f"The training runs' optimization steps took {train_s:.0f} s in all when they ran (a run "
                       f"finished earlier is resumed from the work folder, not repeated)."),
    }


def _verdict_values(facts) -> dict:
    """The one-line verdicts at the top, the step-size sentence and the detailed findings of section 6."""
    claims = facts["claims"]
    return {
        "verdicts": "\n".join(f"- **{c['claim']}** {c['verdict'].capitalize()}." for c in claims),
        "details": "\n\n".join(f"**{c['claim']}** *{c['verdict'].capitalize()}.* {c['evidence']}" for c in claims),
        "step_size": facts.get("step_size", ""),
    }


def _selu_values(facts) -> dict:
    """Section 1's table of SELU's solved constants and stability."""
    s = facts["selu"]

    def six(key):
        return format_number(float(s[key]), 6) if s[key] else "n/a"

    return {"lambda": s["lambda"], "alpha": s["alpha"], "spectral_norm": six("spectral_norm"),
            "attracting": s["attracting"], "box_max_norm": six("box_max_norm")}


def _simulation_values(opts, facts, inputs_desc) -> dict:
    """Section 2: what was simulated, and its table."""
    return {"inputs": inputs_desc, "sim_seeds": opts.sim_seeds, "simulation_table": simulation_table(facts),
            "flag_note": flag_note(facts), "grad_flag_note": grad_flag_note(facts)}


def _training_values(opts, dataset, summary, train_ds, drift_runs) -> dict:
    """Section 5: the training setup, curves per learning rate, the summary table, the drifting runs."""
    from propagate.reproduce import summary_markdown

    return {
        "epochs": opts.epochs,
        "seeds": opts.seeds,
        "n_train": len(train_ds.y_train),
        "n_test": len(dataset.y_test),
        "lrs": ", ".join(f"{lr:g}" for lr in opts.lrs),
        "curves": "\n\n".join(f"![training curves at lr {lr:g}](figures/training_curves_lr{lr:g}.png)"
                              for lr in opts.lrs),
        "training_table": summary_markdown(summary, opts.epochs),
        "drift_runs": ", ".join(drift_runs),
    }


def render(opts, dataset, facts, summary, timings, elapsed, inputs_desc, train_ds, drift_runs, sections: str = "") -> str:
    """The report's README.md text.

    ``opts``: the effective ``ReportOptions``; ``dataset``: the loaded dataset
    (``name``, ``y_test``); ``facts``: :func:`propagate.report.findings.collect_facts`;
    ``summary``: the training summary table; ``timings``: seconds per build
    step; ``elapsed``: seconds in all; ``inputs_desc``: what the simulation was
    fed; ``train_ds``: the training data used (``y_train``); ``drift_runs``:
    run labels of the drift figure; ``sections``: the markdown of the extra
    sections (``propagate.report.SECTIONS``), placed after the findings.
    """
    values = {**_header_values(opts, dataset, summary, timings, elapsed), **_verdict_values(facts),
              **_selu_values(facts), **_simulation_values(opts, facts, inputs_desc),
              **_training_values(opts, dataset, summary, train_ds, drift_runs),
              "sections": (sections.strip() + "\n\n") if sections.strip() else ""}
    return render_template("report_page.md", values)
