"""Turning rounds into one Markdown table per scenario (printed, and kept for the README)."""

import statistics

from load import RoundResult

JUGGLER = "juggler"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}×"


def _conns(samples: list[int]) -> str:
    if not samples:
        return "–"
    low, high = min(samples), max(samples)
    return str(low) if low == high else f"{low}–{high}"


def load_table(title: str, targets, rounds: dict[str, list[RoundResult]]) -> str:
    """rounds: target name → its results, one per round."""
    medians = {name: statistics.median(r.rps for r in results) for name, results in rounds.items() if results}
    ours = medians.get(JUGGLER)
    lines = [
        f"### {title}",
        "",
        "| target | req/s (median) | p50 ms | p99 ms | errors | non-2xx | backend conns | Juggler ÷ target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for target in targets:
        results = rounds.get(target.name)
        label = f"{target.letter} {target.name}"
        if target.skipped or not results:
            lines.append(f"| {label} | skipped | | | | | | |")
            notes.append(f"{target.name}: {target.skipped or 'no result'}")
            continue
        p50 = statistics.median(r.p50_ms for r in results)
        p99 = statistics.median(r.p99_ms for r in results)
        samples = [s for r in results for s in r.backend_conns]
        ratio = "—" if target.name == JUGGLER else _ratio(ours, medians[target.name])
        lines.append(
            f"| {label} | {medians[target.name]:,.0f} | {p50:.2f} | {p99:.2f} | "
            f"{sum(r.errors for r in results)} | {sum(r.non_2xx for r in results)} | {_conns(samples)} | {ratio} |"
        )
        notes += sorted({f"{target.name}: {r.problem}" for r in results if r.problem})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else []))


def idle_table(title: str, targets, results: dict) -> str:
    """results: target name → IdleResult."""
    ours = results.get(JUGGLER)
    lines = [
        f"### {title}",
        "",
        "| target | idle conns held | RSS before MiB | RSS after MiB | KiB per idle conn | backend conns "
        "| Juggler ÷ target (KiB/conn) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for target in targets:
        result = results.get(target.name)
        label = f"{target.letter} {target.name}"
        if target.skipped or result is None:
            lines.append(f"| {label} | skipped | | | | | |")
            notes.append(f"{target.name}: {target.skipped or 'no result'}")
            continue
        ratio = "—" if target.name == JUGGLER or ours is None else _ratio(ours.kib_per_conn, result.kib_per_conn)
        backend = "–" if result.backend_conns is None else str(result.backend_conns)
        lines.append(
            f"| {label} | {result.held} of {result.opened} | {result.rss_before_kib / 1024:.1f} | "
            f"{result.rss_after_kib / 1024:.1f} | {result.kib_per_conn:.2f} | {backend} | {ratio} |"
        )
        if result.problem:
            notes.append(f"{target.name}: {result.problem}")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else []))
