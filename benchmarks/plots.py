"""PNG plots of a run report: recall vs weight, recall vs active terms, latency vs size, latency vs recall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.atomic import atomic_file

PLOTS = ("recall-vs-weight.png", "recall-vs-terms.png", "latency-vs-size.png", "latency-vs-recall.png")
MODE_STYLE = {"dense": "-", "sparse": "--", "hybrid": ":"}


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.2), dpi=110)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def recall_vs_weight(report: dict[str, Any], path: Path) -> None:
    fig, ax = _figure()
    points = report["weight_sweep"]
    x = [p["w_dense"] for p in points]
    for direction, marker in (("t2i", "o"), ("i2t", "s")):
        for k, style in (("R@1", "-"), ("R@10", "--")):
            ax.plot(x, [p[direction][k] for p in points], style, marker=marker, label=f"{direction} {k}")
    default = next((p["w_dense"] for p in points if p["default"]), None)
    if default is not None:
        ax.axvline(default, color="grey", lw=0.8, label="checkpoint's weight")
    ax.set_xlabel("w_dense  (hybrid score = w_dense·cos/T + (1 − w_dense)·sparse)")
    ax.set_ylabel("recall (%)")
    ax.set_title(f"{report['dataset']['name']} {report['dataset']['split']}: hybrid recall vs weight")
    ax.legend(fontsize=7)
    _save(fig, path)


def recall_vs_terms(report: dict[str, Any], path: Path) -> None:
    fig, ax = _figure()
    points = report["pruning"]
    x = [p["mean_terms"]["images"] for p in points]
    for mode, label in (("sparse", "sparse (Lucene)"), ("sparse_exact", "sparse, exact scoring"),
                        ("hybrid", "hybrid"), ("dense", "dense (reference)")):
        ax.plot(x, [p["quality"]["t2i"][mode]["R@1"] for p in points], marker="o", label=f"t2i R@1, {label}")
    ax.set_xscale("log")
    ax.set_xlabel("active terms per image (mean; pruned to top-k, last point unpruned)")
    ax.set_ylabel("t2i R@1 (%)")
    ax.set_title("recall vs active sparse terms")
    ax.legend(fontsize=7)
    _save(fig, path)


def _series(report: dict[str, Any]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for point in [{"items": report["dataset"]["images"], "engines": report["peers"]["engines"]}, *report["scale"]]:
        for row in point["engines"]:
            series.setdefault((row["engine"], row["mode"]), []).append((point["items"], row["latency_ms"]["p50"]))
    return series


def _engine_colors(engines: list[str]) -> dict[str, Any]:
    """One colour per engine (modes differ by line style): 11 engine-mode lines would wrap a 10-colour cycle."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return {engine: palette[i % len(palette)] for i, engine in enumerate(sorted(set(engines)))}


def latency_vs_size(report: dict[str, Any], path: Path) -> None:
    fig, ax = _figure()
    series = _series(report)
    colors = _engine_colors([engine for engine, _ in series])
    for (engine, mode), values in sorted(series.items()):
        values.sort()
        ax.plot([v[0] for v in values], [v[1] for v in values], MODE_STYLE.get(mode, "-"), marker="o",
                color=colors[engine], label=f"{engine} {mode}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("corpus size (items; first point = the real test split, then synthetic)")
    ax.set_ylabel(f"p50 latency, ms ({report['latency']['threads']} thread)")
    ax.set_title("latency vs corpus size")
    ax.legend(fontsize=6, ncol=2)
    _save(fig, path)


def latency_vs_recall(report: dict[str, Any], path: Path) -> None:
    fig, ax = _figure()
    largest = report["scale"][-1] if report.get("scale") else None
    sets = [("test split, overlap@10 with exact", report["peers"]["engines"], "o")]
    if largest:
        sets.append((f"{largest['items']:,} synthetic, overlap@10", largest["engines"], "^"))
    colors = _engine_colors([row["engine"] for _, rows, _ in sets for row in rows])
    for title, rows, marker in sets:
        for row in rows:
            ax.scatter(row["overlap@10"], row["latency_ms"]["p50"], marker=marker, color=colors[row["engine"]])
            ax.annotate(f"{row['engine']} {row['mode']}", (row["overlap@10"], row["latency_ms"]["p50"]),
                        fontsize=5)
        ax.scatter([], [], marker=marker, color="grey", label=title)
    ax.set_yscale("log")
    ax.set_xlabel("overlap@10 with exact brute force of the same scoring (%)")
    ax.set_ylabel("p50 latency, ms")
    ax.set_title("latency vs recall against ground truth")
    ax.legend(fontsize=7)
    _save(fig, path)


def knob_curves(point: dict[str, Any], path: Path) -> None:
    """Latency against overlap@10 as each engine's knob moves; exact brute force per mode as reference points."""
    fig, ax = _figure()
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in point["rows"]:
        curves.setdefault((row["family"], row["mode"]), []).append(row)
    colors = _engine_colors([family for family, _ in curves])
    for (family, mode), rows in sorted(curves.items()):
        x, y = [r["overlap@10"] for r in rows], [r["latency_ms"]["p50"] for r in rows]
        knob = rows[0]["knob"]
        if knob is None:
            ax.plot(x, y, "x", color=colors[family], label=f"{family} {mode}")
            continue
        ax.plot(x, y, MODE_STYLE.get(mode, "-"), marker="o", color=colors[family], label=f"{family} {mode} ({knob})")
        for r in rows:
            ax.annotate(str(r["value"]), (r["overlap@10"], r["latency_ms"]["p50"]), fontsize=6)
    ax.set_yscale("log")
    ax.set_xlabel("overlap@10 with exact brute force of the same scoring (%)")
    ax.set_ylabel("p50 latency, ms (1 query at a time)")
    ax.set_title(f"search-time knobs at {point['items']:,} synthetic items")
    ax.legend(fontsize=6)
    _save(fig, path)


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Draw what the report's stages allow; returns the file names written."""
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    recipes = ((recall_vs_weight, PLOTS[0], ("weight_sweep",)), (recall_vs_terms, PLOTS[1], ("pruning",)),
               (latency_vs_size, PLOTS[2], ("peers", "scale", "latency")), (latency_vs_recall, PLOTS[3], ("peers",)))
    for draw, name, needs in recipes:
        if all(key in report for key in needs):
            draw(report, out / name)
            drawn.append(name)
    for point in report.get("knobs", []):
        name = f"knobs-{point['items']}.png"
        knob_curves(point, out / name)
        drawn.append(name)
    return drawn
