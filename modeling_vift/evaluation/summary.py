"""The summary printed at the end of a run (Markdown): the headline score, the breakdown, and the bad input."""

from __future__ import annotations


def _pct(value):  # a fraction, as in scores.json and the sweep (the name is historical)
    return f"{value:.4f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_summary(benchmark, scores, report, stats):
    """A Markdown summary of one benchmark run (scores as fractions in [0, 1], as in scores.json)."""
    parts = [f"## {benchmark}: {stats.get('num_samples', 0)} samples evaluated, {stats.get('num_skipped', 0)} skipped "
             f"(of {stats.get('num_records', 0)} records)"]
    if benchmark == "open_ended":
        parts.append(f"{scores['num_answers']} answers written to answers.jsonl for external judging.")
    elif benchmark == "demon":
        parts.append(_table(["metric", "value"], [["overall (mean of categories)", _pct(scores["overall"])]]))
        parts.append(_table(
            ["category", "tasks", "samples", "score"],
            [[c, v["n_tasks"], v["n"], _pct(v["score"])] for c, v in scores["per_category"].items()],
        ))
        parts.append(_table(
            ["task", "category", "metric", "samples", "score"],
            [[t, v["category"], v["metric"], v["n"], _pct(v["score"])] for t, v in scores["per_task"].items()],
        ))
    else:
        parts.append(_table(["metric", "value"], [["accuracy", _pct(scores["accuracy"])], ["correct / total", f"{scores['correct']} / {scores['total']}"]]))
        if scores.get("per_group"):
            parts.append(_table(["group", "samples", "accuracy"], [[g, v["n"], _pct(v["score"])] for g, v in scores["per_group"].items()]))
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(report["skipped_counts"].items())) or "none"
    parts.append(_table(["bad input", "count"], [
        ["skipped records", f"{len(report['skipped'])} ({skipped})"],
        ["generation errors (scored 0)", len(report["generation_errors"])],
        ["empty predictions (scored 0)", len(report["empty_predictions"])],
        ["unparsed predictions (scored 0)", len(report["unparsed_predictions"])],
    ] + ([["invalid question/answer types (scored 0)", len(report["invalid_samples"])]] if report.get("invalid_samples") else [])))
    parts.append(
        f"Generated {stats.get('pending', 0)}, resumed {stats.get('resumed', 0)} from earlier runs, "
        f"{stats.get('num_processes', 1)} process(es), {stats.get('seconds', 0):.1f} s. Details: report.json."
    )
    return "\n\n".join(parts)


__all__ = ["format_summary"]
