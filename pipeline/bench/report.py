"""Outputs of the ``bench`` stage: ``bench.json``, rich tables and a throughput plot.

``bench.json`` schema (``version`` "1"), from :meth:`BenchResult.to_dict`:

- ``config``: the :class:`~qbnn.pipeline.bench.BenchConfig` as plain data.
- ``environment``: ``cpu`` (``/proc/cpuinfo`` model name), ``cores_logical``,
  ``cores_physical``, ``cores_usable`` (affinity), ``threads`` (``null``: ONNX Runtime default),
  ``onnxruntime``, ``ort_providers`` (ONNX Runtime's names), ``providers_available`` (qbnn
  registry names), ``numpy``, ``onnx``, ``python``, ``platform``.
- ``models``: one entry per (model, provider): ``name``, ``path``, ``provider``, ``ep``,
  ``file_bytes`` (with external data), ``qbnn``, ``task``, ``posterior``, ``sampling``,
  ``precision``, ``num_samples`` (the S values benched), ``peak_rss_kb`` (probe child minus
  baseline child, KiB; ``null`` if not measured), ``process_peak_rss_kb``, ``baseline_rss_kb``,
  ``memory_cell`` ([batch, S] the probe ran), ``flops_once`` (share of the estimated FLOPs of
  one call that run once rather than per MC sample, ``null`` for plain models) and
  ``split_cell`` ([batch, S] it was estimated at).
- ``cells``: one per (model, provider, batch, S): ``model``, ``provider``, ``batch``,
  ``num_samples`` (S), ``plain`` (no ``num_samples`` input: run at S = 1), ``runs``,
  ``median_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``min_ms``, ``max_ms`` (one
  ``session.run``), ``images_per_s`` (batch / median), ``samples_per_s`` (batch * S / median;
  ``null`` for an exact posterior), ``exact`` (ensemble members or ``frozen:K`` draws, no
  random ops: every call evaluates all the members whatever S is).
- ``notes``: remarks (plain models run at S = 1 only, probes that failed, ...).
- with a baseline: ``baseline`` (its name) and ``ratios``: [{``model``, ``provider``,
  ``batch``, ``num_samples``, ``baseline_num_samples``, ``throughput``}] (images/s over the
  baseline's).
"""

from __future__ import annotations

from pathlib import Path

from qbnn.runtimes.errors import ConfigError
from qbnn.runtimes.split import percent

from ..common import atomic_path, pyplot, save_png
from .result import BenchResult

__all__ = [
    "cell_table",
    "check_output",
    "model_table",
    "print_tables",
    "save_plot",
    "write_bench",
    "write_json",
]

_DPI = 110


def check_output(path: str | Path) -> Path:
    """Fail early (before any timing) when ``path``'s directory is missing."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"output directory {path.parent} does not exist")
    return path


def write_json(result: BenchResult, path: str | Path, baseline: str | None = None) -> Path:
    """Write ``bench.json`` atomically (with ``ratios`` when ``baseline`` names a model)."""
    text = result.to_json(baseline)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def write_bench(
    result: BenchResult,
    output: str | Path,
    plot: str | Path | None = None,
    baseline: str | None = None,
) -> tuple[Path, Path]:
    """Write ``bench.json`` to ``output`` and the plot to ``plot`` (default: ``output`` with
    ``.png``); returns both paths."""
    plot = Path(output).with_suffix(".png") if plot is None else Path(plot)
    return write_json(result, output, baseline), save_plot(result, plot)


def cell_table(result: BenchResult, baseline: str | None = None):
    """``(header, rows)`` of the cells, as strings; with ``baseline`` a ``x baseline`` column."""
    header = ["model", "provider", "batch", "S", "median ms", "p90 ms", "p99 ms"]
    header += ["images/s", "samples/s"]
    ratios = {}
    if baseline is not None:
        header.append(f"x {baseline}")
        ratios = {(r.model, r.provider, r.batch, r.num_samples): r for r in result.ratios(baseline)}
    rows = []
    for c in result.cells:
        row = [c.model, c.provider, str(c.batch), str(c.num_samples)]
        row += [f"{v:.3f}" for v in (c.median_ms, c.p90_ms, c.p99_ms)]
        row += [f"{c.images_per_s:,.0f}"]
        row.append("exact" if c.samples_per_s is None else f"{c.samples_per_s:,.0f}")
        if baseline is not None:
            r = ratios.get((c.model, c.provider, c.batch, c.num_samples))
            row.append("baseline" if c.model == baseline else f"{r.throughput:.2f}" if r else "n/a")
        rows.append(row)
    return header, rows


def model_table(result: BenchResult):
    """``(header, rows)`` of the models: metadata, file size, peak memory (MB) and the share of
    FLOPs run once per call (the rest runs per MC sample)."""
    header = ["model", "provider", "precision", "sampling", "posterior", "file MB", "memory MB"]
    header.append("FLOPs run once")
    rows = [
        [
            m.name, m.provider, m.precision, m.sampling, m.posterior,
            f"{m.file_bytes / 1e6:.3f}",
            "n/a" if m.peak_rss_kb is None else f"{m.peak_rss_kb * 1024 / 1e6:.1f}",
            _once(m),
        ]
        for m in result.models
    ]  # fmt: skip
    return header, rows


def _once(m) -> str:
    """``97 % (B=32, S=32)``: the share of FLOPs run once per call, where estimated."""
    if m.flops_once is None or m.split_cell is None:
        return "-"
    b, s = m.split_cell
    return f"{percent(m.flops_once)} % (B={b}, S={s})"


def print_tables(result: BenchResult, baseline: str | None = None, console=None) -> None:
    """Print the cell and model tables (and notes) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=160)
    env = result.environment
    title = f"Latency of one session.run ({env.cpu}, threads: {env.threads or 'default'})"
    for name, (header, rows) in (
        (title, cell_table(result, baseline)),
        ("Models (memory: peak RSS over a bare process)", model_table(result)),
    ):
        table = Table(title=name, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < 2 else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


def save_plot(result: BenchResult, path: str | Path) -> Path:
    """PNG of images/s vs S (log x): one panel per batch size, one line per model x provider.

    matplotlib is imported here with the Agg backend (headless, no global side effect at
    import time of qbnn)."""
    plt = pyplot()

    path = Path(path)
    batches = sorted({c.batch for c in result.cells})
    fig, axes = plt.subplots(
        1, len(batches), figsize=(4.6 * len(batches), 3.8), squeeze=False, sharey=False
    )
    series = list(dict.fromkeys((c.model, c.provider) for c in result.cells))
    for ax, batch in zip(axes[0], batches, strict=True):
        for model, provider in series:
            pts = sorted(
                (c.num_samples, c.images_per_s)
                for c in result.cells
                if (c.model, c.provider, c.batch) == (model, provider, batch)
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                (line,) = ax.plot(xs, ys, marker="o", label=f"{model} ({provider})")
                if len(pts) == 1:  # a plain model (S = 1): its level as a reference line
                    ax.axhline(ys[0], color=line.get_color(), linestyle="--", alpha=0.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("MC samples S")
        ax.set_ylabel("images / s")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"Throughput ({result.environment.cpu})")
    return save_png(fig, path, dpi=_DPI)
