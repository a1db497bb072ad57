"""Results table (Markdown) from the runs' results.json files, plus the sparsity trade-off curve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.methods import METHODS, TrainingMethod

# The grounded-sparse options of scripts/grounding_sweep.sh, in the order the report shows them: runs/grounding/NAME.
GROUNDING_RUNS = (
    ("d2s", "d2s expansion control (expanded at inference)"),
    ("always", "always: captions are their own words (relu weights)"),
    ("always_softplus", "always, softplus own-word weights"),
    ("always_bow", "always softplus + BoW"),
    ("inference_free_bow", "inference-free queries + BoW"),
    ("features_bow", "always softplus + BoW, head on the frozen features"),
    ("features_bow_word", "always softplus + BoW + caption-word loss, frozen features"),
    ("features_bow_word_bce", "as above, caption-word loss as per-term BCE"),
    ("no_image_budget", "the default without the image budget (thresholded FLOPs regulariser instead)"),
)

# The word-vocabulary options of scripts/word_sweep.sh (the grounded preset with one change each): runs/words/NAME.
WORD_RUNS = (
    ("pieces", "content pieces (the grounded preset before words)"),
    ("words", "whole words (min_df 2)"),
    ("words_merged", "whole words, inflections merged (min_df 2)"),
    ("words_merged_df1", "inflections merged, every caption word (min_df 1)"),
    ("words_merged_hub", "merged, min_df 2, hub loss 1 (all activations)"),
    ("words_merged_hub5", "merged, min_df 2, hub loss 5 (all activations)"),
    ("words_merged_hub5_share02", "merged, min_df 2, hub loss 5 (all activations) over 20% of the images"),
    ("words_merged_df1_hub", "merged, min_df 1, hub loss 1 (all activations)"),
    ("words_merged_df1_hub_non_caption", "merged, min_df 1, hub loss 5 (non-caption activations)"),
    ("words_merged_bce", "merged, min_df 2, caption-word loss as BCE (weight 0.2)"),
    ("words_softplus", "merged, min_df 1, softplus image weights"),
    ("words_softplus_bce05", "merged, min_df 1, softplus image weights, BCE caption-word loss 0.5"),
    ("words_softplus_bce02", "merged, min_df 1, softplus image weights, BCE caption-word loss 0.2"),
    ("words_softplus_bce01",
     "merged, min_df 1, softplus image weights, BCE caption-word loss 0.1 (the default before hub floors)"),
    ("words_softplus_bce005", "merged, min_df 1, softplus image weights, BCE caption-word loss 0.05"),
    ("words_softplus_bce01_hub05_non_caption", "the default with hub loss 0.5 (non-caption activations)"),
    ("words_softplus_bce01_hub1", "the default with hub loss 1 (all activations)"),
    ("words_softplus_bce01_hub5", "the default with hub loss 5 (all activations)"),
    ("words_softplus_bce01_floor030",
     "softplus/BCE 0.1 with hub floors: each term on at most 30% of the training images"),
    ("words_softplus_bce01_floor025", "softplus/BCE 0.1 with hub floors at 25%"),
    ("words_softplus_bce01_floor024", "softplus/BCE 0.1 with hub floors at 24%: the default"),
    ("words_softplus_bce01_floor022", "softplus/BCE 0.1 with hub floors at 22%"),
    ("words_softplus_bce01_floor020", "softplus/BCE 0.1 with hub floors at 20%"),
)

WORD_INTRO = (
    "The grounded preset with its sparse terms as whole words of the training captions (core/words.py: NFKC, lower "
    "case, letters and digits, the same stopwords), one option changed per run (scripts/word_sweep.sh). "
    "Piece rate: the share of terms (an image's top 10; a caption's own terms) that are not whole words of the "
    "training captions. Image df: the share of images where a term is active (largest, median). GP@k is measured "
    "in each run's own terms: caption pieces for the piece model, caption words for the word models.")

GROUNDING_INTRO = (
    "Every grounded run uses the content vocabulary (training-caption pieces in at least 2 captions, no "
    "stopword, punctuation, single-character or special piece), at most 16 terms per caption and, unless "
    "noted, an image budget of 64 terms (top-k annealed from 256 with a straight-through gradient); "
    "'frozen features' runs have input dropout 0.5. The integrated leg is the val-selected fusion of dense and "
    "sparse (the hybrid the service serves; by t2i R@1, or by RSUM where the run says fusion_metric=rsum). "
    "GP@k: the share of an image's top-k terms that are content pieces of its own captions.")


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def method_run(runs: Path, method: TrainingMethod) -> Path:
    """runs/<name>, or a run directory under an older spelling of the method when only that one exists."""
    for name in (method.name, *method.aliases):
        if (runs / name / "results.json").is_file():
            return runs / name
    return runs / method.name


def results_table(runs: Path, split: str = "test") -> str:
    """One row per registered method and leg it trains, from runs/<method>/results.json."""
    header = ("| model | leg | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | terms/caption | "
              "terms/image | FLOPs | best epoch | train s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for method in METHODS.values():
        label, legs = method.label, method.trained_legs
        path = method_run(runs, method) / "results.json"
        if not path.is_file():
            lines.append(f"| {label} | (not run: {path} missing) |" + " |" * 11)
            continue
        res = json.loads(path.read_text())
        m = res[split]
        for leg in legs:
            sp = m["sparsity"]
            sparse_cols = (f"{sp['active_terms_query']:.0f} | {sp['active_terms_doc']:.0f} | {sp['flops']:.1f}"
                           if leg != "dense" else "- | - | -")
            t2i, i2t = m[leg]["t2i"], m[leg]["i2t"]
            lines.append(f"| {label} | {leg} | {_fmt(t2i['R@1'])} | {_fmt(t2i['R@5'])} | {_fmt(t2i['R@10'])} | "
                         f"{_fmt(i2t['R@1'])} | {_fmt(i2t['R@5'])} | {_fmt(i2t['R@10'])} | {sparse_cols} | "
                         f"{res['best_epoch']} | {res['train_seconds']:.0f} |")
    return "\n".join(lines)


def tradeoff_table(points: list[dict[str, Any]]) -> str:
    lines = ["| top-k caption | top-k image | terms/caption | terms/image | FLOPs | sparse t2i R@1 | sparse i2t R@1 |"
             " integrated t2i R@1 |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        m = p["metrics"]
        lines.append(f"| {p['prune_query'] or 'all'} | {p['prune_doc'] or 'all'} | "
                     f"{m['sparsity']['active_terms_query']:.1f} | {m['sparsity']['active_terms_doc']:.1f} | "
                     f"{m['sparsity']['flops']:.2f} | {_fmt(m['sparse']['t2i']['R@1'])} | "
                     f"{_fmt(m['sparse']['i2t']['R@1'])} | {_fmt(m['integrated']['t2i']['R@1'])} |")
    return "\n".join(lines)


def runs_table(run_dirs: list[tuple[str, Path]], split: str) -> str:
    """One line per run: t2i R@1 of each leg, i2t R@1 of sparse, active terms; for option and sweep tables."""
    lines = ["| run | dense t2i R@1 | sparse t2i R@1 | sparse i2t R@1 | integrated t2i R@1 | terms/caption | "
             "terms/image | FLOPs | best epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for label, run in run_dirs:
        path = run / "results.json"
        if not path.is_file():
            lines.append(f"| {label} | (not run) | | | | | | | |")
            continue
        res = json.loads(path.read_text())
        m = res[split]
        sp = m["sparsity"]
        lines.append(f"| {label} | {_fmt(m['dense']['t2i']['R@1'])} | {_fmt(m['sparse']['t2i']['R@1'])} | "
                     f"{_fmt(m['sparse']['i2t']['R@1'])} | {_fmt(m['integrated']['t2i']['R@1'])} | "
                     f"{sp['active_terms_query']:.0f} | {sp['active_terms_doc']:.0f} | {sp['flops']:.1f} | "
                     f"{res['best_epoch']} |")
    return "\n".join(lines)


def _each_run(run_dirs: list[tuple[str, Path]]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Each run's label and results.json (None for a run not made yet)."""
    for label, run in run_dirs:
        path = run / "results.json"
        yield label, json.loads(path.read_text()) if path.is_file() else None


def grounding_table(run_dirs: list[tuple[str, Path]], split: str) -> str:
    """Grounded-sparse options: recall of the sparse and integrated legs both ways, sparsity and readability."""
    lines = ["| run | leg | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | RSUM | terms/caption "
             "(max) | terms/image (max) | FLOPs | distinct terms | GP@10 | best epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, res in _each_run(run_dirs):
        if res is None:
            lines.append(f"| {label} | (not run) |" + " |" * 13)
            continue
        m = res[split]
        sp = m["sparsity"]
        gp10 = m.get("readability", {}).get("GP@10")
        for leg in ("sparse", "integrated"):
            t2i, i2t = m[leg]["t2i"], m[leg]["i2t"]
            rsum = t2i["RSUM"] + i2t["RSUM"]
            lines.append(
                f"| {label} | {leg} | {_fmt(t2i['R@1'])} | {_fmt(t2i['R@5'])} | {_fmt(t2i['R@10'])} | "
                f"{_fmt(i2t['R@1'])} | {_fmt(i2t['R@5'])} | {_fmt(i2t['R@10'])} | {rsum:.1f} | "
                f"{sp['active_terms_query']:.1f} ({sp.get('max_terms_query', float('nan')):.0f}) | "
                f"{sp['active_terms_doc']:.1f} ({sp.get('max_terms_doc', float('nan')):.0f}) | {sp['flops']:.2f} | "
                f"{sp.get('distinct_terms_doc', '-')} | {'-' if gp10 is None else f'{gp10:.3f}'} | "
                f"{res['best_epoch']} |")
    return "\n".join(lines)


def word_sections(runs: Path, probe: dict[str, Any] | None = None) -> list[str]:
    """The report's word-vocabulary section (empty when no word run is there); ``probe``: the linear word probe's
    figures over the default's words (the ceiling of GP@k)."""
    words = [(label, runs / "words" / name) for name, label in WORD_RUNS]
    if not any((run / "results.json").is_file() for _, run in words):
        return []
    sections = ["## Whole-word vocabulary (scripts/word_sweep.sh)", "", WORD_INTRO, ""]
    for split in ("test", "val"):
        sections += [f"### Word options ({split})", "", word_table(words, split), ""]
        if probe is not None and split in probe:
            sections += [f"The linear word probe on the frozen image features over {probe['words']:,} words "
                         f"(inflections merged, in at least {probe['min_df']} captions) reaches GP@5/10/20 "
                         + " / ".join(f"{probe[split][f'GP@{k}']:.3f}" for k in (5, 10, 20))
                         + f" on {split}: the ceiling of a linear map on this backbone.", ""]
    return sections


def word_table(run_dirs: list[tuple[str, Path]], split: str) -> str:
    """Word-vocabulary options: hybrid and sparse recall both ways, sparsity, GP@k, piece rates and hubs."""
    lines = ["| run | sparse t2i R@1 | sparse i2t R@1 | sparse RSUM | hybrid t2i R@1 | hybrid i2t R@1 | hybrid RSUM | "
             "terms/caption (max) | terms/image (max) | FLOPs | GP@5 | GP@10 | GP@20 | piece rate image@10 | "
             "piece rate query | largest image df | median image df | distinct terms | best epoch |",
             "|" + "---|" * 19]
    for label, res in _each_run(run_dirs):
        if res is None:
            lines.append(f"| {label} | (not run) |" + " |" * 17)
            continue
        m = res[split]
        sp, r = m["sparsity"], m["readability"]
        rsum = {leg: float(m[leg]["t2i"]["RSUM"] + m[leg]["i2t"]["RSUM"]) for leg in ("sparse", "integrated")}

        pieces = "-" if "piece_rate@10" not in r else f"{r['piece_rate@10']:.3f}"
        query_pieces = "-" if "query_piece_rate" not in r else f"{r['query_piece_rate']:.3f}"
        lines.append(
            f"| {label} | {_fmt(m['sparse']['t2i']['R@1'])} | {_fmt(m['sparse']['i2t']['R@1'])} | "
            f"{rsum['sparse']:.1f} | {_fmt(m['integrated']['t2i']['R@1'])} | {_fmt(m['integrated']['i2t']['R@1'])} | "
            f"{rsum['integrated']:.1f} | {sp['active_terms_query']:.1f} ({sp['max_terms_query']:.0f}) | "
            f"{sp['active_terms_doc']:.1f} ({sp['max_terms_doc']:.0f}) | {sp['flops']:.2f} | {r['GP@5']:.3f} | "
            f"{r['GP@10']:.3f} | {r['GP@20']:.3f} | {pieces} | {query_pieces} | {r['hub_max_df']:.3f} | "
            f"{r['hub_median_df']:.4f} | {r['distinct_terms']} | {res['best_epoch']} |")
    return "\n".join(lines)


def readability_table(run_dirs: list[tuple[str, Path]], split: str, *,
                      probe: dict[str, Any] | None = None) -> str:
    """GP@k, grounded mass, junk rate and hubs of image vectors, with the frequency floor and the probe ceiling."""
    lines = ["| run | GP@5 | GP@10 | GP@20 | grounded mass | junk rate@10 | largest image df | median image df | "
             "distinct terms |", "|---|---|---|---|---|---|---|---|---|"]
    floor = None
    for label, run in run_dirs:
        path = run / "results.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())[split]
        r = m.get("readability")
        if r is None:
            continue
        floor = m.get("readability_floor", floor)
        lines.append(f"| {label} | {r['GP@5']:.3f} | {r['GP@10']:.3f} | {r['GP@20']:.3f} | "
                     f"{r['grounded_mass']:.3f} | {r['junk_rate@10']:.3f} | {r['hub_max_df']:.3f} | "
                     f"{r['hub_median_df']:.3f} | {r['distinct_terms']} |")
    if floor is not None:
        lines.append(f"| frequency floor (the k most frequent caption pieces) | {floor['GP@5']:.3f} | "
                     f"{floor['GP@10']:.3f} | {floor['GP@20']:.3f} | | | | | |")
    if probe is not None and split in probe:
        ceiling = probe[split]
        lines.append(f"| linear word probe on the frozen image features (ceiling) | {ceiling['GP@5']:.3f} | "
                     f"{ceiling['GP@10']:.3f} | {ceiling['GP@20']:.3f} | | | | | |")
    return "\n".join(lines)


def tradeoff_plot(run_dirs: list[tuple[str, Path]], latent_pruned: list[dict[str, Any]], path: Path) -> None:
    """Sparse and hybrid (integrated) t2i R@1 on test against FLOPs and against GP@10: every run as a point, the
    latent model's top-k pruning as a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_flops, by_gp) = plt.subplots(1, 2, figsize=(12, 4.8))
    if latent_pruned:
        flops = [p["metrics"]["sparsity"]["flops"] for p in latent_pruned]
        for leg, style in (("sparse", "o--"), ("integrated", "s--")):
            by_flops.plot(flops, [p["metrics"][leg]["t2i"]["R@1"] for p in latent_pruned], style, color="grey",
                          label=f"latent, top-k pruned ({'hybrid' if leg == 'integrated' else leg})")
    for n, (label, run) in enumerate(run_dirs):
        path_json = run / "results.json"
        if not path_json.is_file():
            continue
        m = json.loads(path_json.read_text())["test"]
        colour = f"C{n % 10}"
        gp = m.get("readability", {}).get("GP@10", 0.0)
        for axis, x in ((by_flops, m["sparsity"]["flops"]), (by_gp, gp)):
            axis.plot([x], [m["sparse"]["t2i"]["R@1"]], "o", color=colour, label=label if axis is by_gp else None)
            axis.plot([x], [m["integrated"]["t2i"]["R@1"]], "s", color=colour)
    by_flops.set_xscale("log")
    by_flops.set_xlabel("FLOPs (expected multiplications per query-image pair, log)")
    by_gp.set_xlabel("GP@10 (share of an image's top 10 terms that are its captions' words)")
    for axis in (by_flops, by_gp):
        axis.set_ylabel("t2i R@1, test (circles: sparse, squares: hybrid)")
        axis.grid(alpha=0.3)
    by_flops.legend(fontsize=7)
    by_gp.legend(fontsize=6, loc="lower left")
    figure.tight_layout()
    from core.atomic import atomic_file

    with atomic_file(path) as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
