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


def per_cpu_s(results: list[RoundResult]) -> float | None:
    """Median over the rounds of requests per CPU-second of the target."""
    values = [r.per_cpu_s for r in results if r.per_cpu_s]
    return statistics.median(values) if values else None


def rss_mib(results: list[RoundResult]) -> float | None:
    values = [r.rss_kib for r in results if r.rss_kib]
    return statistics.median(values) / 1024 if values else None


def _number(value: float | None, fmt: str = ",.0f") -> str:
    return "–" if value is None else format(value, fmt)


def load_table(title: str, targets, rounds: dict[str, list[RoundResult]]) -> str:
    """rounds: target name → its results, one per round."""
    medians = {name: statistics.median(r.rps for r in results) for name, results in rounds.items() if results}
    cpu = {name: per_cpu_s(results) for name, results in rounds.items() if results}
    ours = medians.get(JUGGLER)
    lines = [
        f"### {title}",
        "",
        "| target | req/s (median) | p50 ms | p99 ms | req per CPU-s | RSS MiB | errors | non-2xx | backend conns "
        "| Juggler ÷ target (req/s) | Juggler ÷ target (req per CPU-s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for target in targets:
        results = rounds.get(target.name)
        label = f"{target.letter} {target.name}"
        if target.skipped or not results:
            lines.append(f"| {label} | skipped | | | | | | | | | |")
            notes.append(f"{target.name}: {target.skipped or 'no result'}")
            continue
        p50 = statistics.median(r.p50_ms for r in results)
        p99 = statistics.median(r.p99_ms for r in results)
        samples = [s for r in results for s in r.backend_conns]
        ratio = "—" if target.name == JUGGLER else _ratio(ours, medians[target.name])
        cpu_ratio = "—" if target.name == JUGGLER else _ratio(cpu.get(JUGGLER), cpu[target.name])
        lines.append(
            f"| {label} | {medians[target.name]:,.0f} | {p50:.2f} | {p99:.2f} | {_number(cpu[target.name])} | "
            f"{_number(rss_mib(results), '.1f')} | "
            f"{sum(r.errors for r in results)} | {sum(r.non_2xx for r in results)} | {_conns(samples)} | {ratio} | "
            f"{cpu_ratio} |"
        )
        notes += sorted({f"{target.name}: {r.problem}" for r in results if r.problem})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else []))


def idle_table(title: str, targets, results: dict) -> str:
    """results: target name → IdleResult."""
    ours = results.get(JUGGLER)
    lines = [
        f"### {title}",
        "",
        "| target | idle conns held | RSS before MiB | RSS after MiB | B per idle conn | backend conns "
        "| Juggler ÷ target (B/conn) |",
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
        ratio = "—" if target.name == JUGGLER or ours is None else _ratio(ours.bytes_per_conn, result.bytes_per_conn)
        backend = "–" if result.backend_conns is None else str(result.backend_conns)
        lines.append(
            f"| {label} | {result.held:,} of {result.opened:,} | {result.rss_before_kib / 1024:.1f} | "
            f"{result.rss_after_kib / 1024:.1f} | {result.bytes_per_conn:,.0f} | {backend} | {ratio} |"
        )
        if result.problem:
            notes.append(f"{target.name}: {result.problem}")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else []))


def upgrade_table(title: str, targets, runs: dict, how: dict[str, str], duration: int, swaps: int) -> str:
    """runs: target name → its UpgradeRuns (with and without swaps, every round)."""
    every = [r for rs in runs.values() for r in rs]
    samples = round(sum(r.samples for r in every) / len(every)) if every else 0
    lines = [
        f"### {title}",
        "",
        f"wrk -t2 -c64, {duration} s per run; {swaps} swaps per run at "
        f"{', '.join(f'{duration * 0.15 * i:g}' for i in range(1, swaps + 1))} s, and a run without swaps "
        "as the baseline. *Failed* = socket errors (connect/read/write/timeout) + non-2xx; "
        "*max backend conns* = most established connections to one backend port in any sample "
        f"(sock_diag every 10 ms; {samples} samples per run on average), per port 19001/19002/19003.",
        "",
        "With several rounds: requests and failed are summed, p99 is the median of the runs' p99, max ms "
        "and max backend conns the highest of any run.",
        "",
        "| target | swapped by | swaps done | requests | failed (errors + non-2xx) | p99 ms | max ms "
        "| max backend conns | baseline: failed, p99 ms, max ms, max backend conns |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    notes = []

    def conns(rs) -> str:
        ports = sorted({p for r in rs for p in r.max_by_port})
        return "/".join(str(max(r.max_by_port.get(p, 0) for r in rs)) for p in ports) or "–"

    for target in targets:
        results = runs.get(target.name)
        label = f"{target.letter} {target.name}"
        swapped = [r for r in results or [] if r.swapped]
        steady = [r for r in results or [] if not r.swapped]
        if target.name not in how:
            continue  # direct: nothing to swap
        if not swapped:
            lines.append(f"| {label} | skipped | | | | | | | |")
            notes.append(f"{target.name}: {target.skipped or 'no result'}")
            continue
        failed = sum(r.failed for r in swapped)
        errors = sum(r.errors for r in swapped)
        non_2xx = sum(r.non_2xx for r in swapped)
        baseline = "–"
        if steady:
            baseline = (f"{sum(r.failed for r in steady)}, {statistics.median(r.p99_ms for r in steady):.2f}, "
                        f"{max(r.max_ms for r in steady):.1f}, {conns(steady)}")
        lines.append(
            f"| {label} | {how[target.name]} | {sum(r.swaps_done for r in swapped)} of {swaps * len(swapped)} | "
            f"{sum(r.requests for r in swapped):,} | {failed} ({errors} + {non_2xx}) | "
            f"{statistics.median(r.p99_ms for r in swapped):.2f} | {max(r.max_ms for r in swapped):.1f} | "
            f"{conns(swapped)} | {baseline} |"
        )
        if len(swapped) > 1:
            notes.append(f"{target.name}, round by round with swaps: failed "
                         + " / ".join(str(r.failed) for r in swapped) + ", p99 ms "
                         + " / ".join(f"{r.p99_ms:.2f}" for r in swapped) + "; baseline p99 ms "
                         + " / ".join(f"{r.p99_ms:.2f}" for r in steady))
        notes += sorted({f"{target.name}: {n}" for r in results for n in ([r.problem] if r.problem else []) + r.notes})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] + ([""] if notes else []))


REFERENCE = "nginx"


def summary_table(targets, measured: list[tuple[str, str, dict]]) -> str:
    """Every scenario in one table, for the README. measured: (short label, "load" or "idle",
    target name → rounds or IdleResult), in scenario order.

    Load rows: medians over the rounds; RSS read just before each round ended. Idle rows: RSS with
    every idle connection open, and in parentheses its growth per connection; the ÷ nginx column
    compares bytes per idle connection there (lower is better), req/s elsewhere (higher is better)."""
    lines = [
        "| scenario | target | req/s | p50 ms | p99 ms | req per CPU-s | RSS MiB | backend conns "
        f"| ÷ {REFERENCE} (req/s; idle: B/conn) | ÷ {REFERENCE} (req per CPU-s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, kind, results in measured:
        if kind == "load":
            rps = {n: statistics.median(r.rps for r in rs) for n, rs in results.items() if rs}
            cpu = {n: per_cpu_s(rs) for n, rs in results.items() if rs}
        for target in targets:
            result = results.get(target.name)
            if target.skipped or not result:
                lines.append(f"| {label} | {target.name} | skipped | | | | | | | |")
                continue
            if kind == "load":
                samples = [s for r in result for s in r.backend_conns]
                conns = "–" if target.name == "direct" else _conns(samples)
                lines.append(
                    f"| {label} | {target.name} | {rps[target.name]:,.0f} | "
                    f"{statistics.median(r.p50_ms for r in result):.2f} | "
                    f"{statistics.median(r.p99_ms for r in result):.2f} | {_number(cpu[target.name])} | "
                    f"{_number(rss_mib(result), '.1f')} | {conns} | "
                    f"{_ratio(rps[target.name], rps.get(REFERENCE))} | "
                    f"{_ratio(cpu[target.name], cpu.get(REFERENCE))} |"
                )
            else:
                reference = results.get(REFERENCE)
                backend = "–" if result.backend_conns is None else str(result.backend_conns)
                held = f"{result.held:,} held" + (f", {result.failed:,} failed" if result.failed else "")
                lines.append(
                    f"| {label} | {target.name} | {held} | | | | "
                    f"{result.rss_after_kib / 1024:.1f} ({result.bytes_per_conn:,.0f} B/conn) | {backend} | "
                    f"{_ratio(result.bytes_per_conn, reference.bytes_per_conn if reference else None)} | |"
                )
    return "\n".join(lines) + "\n"
