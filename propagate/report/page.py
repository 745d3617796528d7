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
                     f(100 * s["dead_last"], 1) if math.isfinite(s["dead_last"]) else "n/a"])
    return markdown_table(["configuration", "var(h^1)", "var(h^51) sim", "var(h^51) theory", "per-layer factor sim",
                           "per-layer factor theory", "mean(x^51)", "grad layer 1 / top", "dead units at 51 (%)"], rows)


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
    return {"inputs": inputs_desc, "sim_seeds": opts.sim_seeds, "simulation_table": simulation_table(facts)}


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
