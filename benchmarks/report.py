"""Markdown tables from the JSON reports of ``python -m benchmarks search`` and ``synthetic``."""

from __future__ import annotations

from typing import Any


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def quality_table(report: dict[str, Any]) -> list[str]:
    q = report["quality"]
    rows = []
    for mode in ("dense", "sparse", "hybrid", "sparse_exact"):
        cells = [mode if mode != "sparse_exact" else "sparse, exact scoring (reference)"]
        for direction in ("t2i", "i2t"):
            cells += [f"{q[direction][mode][f'R@{k}']:.2f}" for k in (1, 5, 10)]
        rows.append([*cells, f"{q['rsum'][mode]:.1f}"])
    return _table(["mode", "t2i R@1", "R@5", "R@10", "i2t R@1", "R@5", "R@10", "RSUM"], rows)


def latency_table(latency: dict[str, Any]) -> list[str]:
    rows = [[name, f"{v['p50']:.1f}", f"{v['p95']:.1f}", f"{v['p99']:.1f}"]
            for name, v in latency["search_only"].items()]
    for name, v in latency.get("with_text_encoding", {}).items():
        rows.append([f"{name} + text encoding", f"{v['p50']:.1f}", f"{v['p95']:.1f}", f"{v['p99']:.1f}"])
    for name, label in (("encode_text", "text encoding (both legs)"),
                        ("encode_text_sparse", "text encoding, sparse leg only" +
                         (" (inference-free: no tower forward)" if latency.get("inference_free") else ""))):
        if name in latency:
            v = latency[name]
            rows.append([label, f"{v['p50']:.2f}", f"{v['p95']:.2f}", f"{v['p99']:.2f}"])
    return _table(["configuration (1 thread)", "p50 ms", "p95 ms", "p99 ms"], rows)


def size_table(sizes: dict[str, Any]) -> list[str]:
    rows = []
    for side, s in sizes.items():
        b = s["bytes_per_item"]
        rows.append([side, s["count"], f"{s['mean_terms']:.0f}", f"{b['sparse_lucene']:.0f}", f"{b['dense_faiss']:.0f}",
                     f"{s['lucene_vs_faiss']:.2f}", f"{b['sparse_store']:.0f}", f"{b['dense_store']:.0f}"])
    return _table(["side", "items", "terms/item", "Lucene B/item", "FAISS B/item", "Lucene/FAISS",
                   "sparse forward store B/item", "dense store B/item"], rows)


# ----- the full run report (python -m benchmarks run) -----
def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _g(value: float | None, digits: int = 2) -> str:
    """Like _f, but values that would round to zero keep two significant figures (a 0.004x ratio is not 0.00x)."""
    if value is None or value == 0 or abs(value) >= 10 ** -digits:
        return _f(value, digits)
    return f"{value:.2g}"


def _qps(value: float | None) -> str:
    """Whole queries per second, with one decimal below 10 (a 1M corpus gives 0.4, not 0)."""
    return _f(value, 0) if value is None or value >= 10 else _g(value, 1)


def headline_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for mode, h in report["headline"].items():
        rows.append([mode, *(f"{h['t2i'][f'R@{k}']:.1f}" for k in (1, 5, 10)),
                     *(f"{h['i2t'][f'R@{k}']:.1f}" for k in (1, 5, 10)), f"{h['rsum']:.1f}", _f(h["p50_ms"])])
    return _table(["mode", "t2i R@1", "R@5", "R@10", "i2t R@1", "R@5", "R@10", "RSUM", "p50 ms (1 thread)"], rows)


def weight_table(points: list[dict[str, Any]]) -> list[str]:
    rows = [[f"{p['w_dense']:.2f}" + (" (checkpoint)" if p["default"] else ""),
             *(f"{p[d][f'R@{k}']:.1f}" for d in ("t2i", "i2t") for k in (1, 5, 10)), f"{p['rsum']:.1f}"]
            for p in points]
    return _table(["w_dense", "t2i R@1", "R@5", "R@10", "i2t R@1", "R@5", "R@10", "RSUM"], rows)


def pruning_table(points: list[dict[str, Any]]) -> list[str]:
    rows = []
    for p in points:
        q = p["quality"]
        rows.append(["all" if p["terms"] is None else p["terms"], f"{p['mean_terms']['images']:.0f}",
                     f"{p['mean_terms'].get('texts', 0):.0f}", f"{p['lucene_bytes_per_item']['images']:.0f}",
                     *(f"{q['t2i'][m]['R@1']:.1f}" for m in ("sparse", "sparse_exact", "hybrid")),
                     *(f"{q['rsum'][m]:.1f}" for m in ("sparse", "sparse_exact", "hybrid"))])
    return _table(["top-k terms", "image terms", "caption terms", "Lucene B/image", "t2i R@1 sparse", "exact",
                   "hybrid", "RSUM sparse", "exact", "hybrid"], rows)


def engines_table(rows: list[dict[str, Any]], *, with_recall: bool,
                  duet_build_seconds: float | None = None) -> list[str]:
    out = []
    for r in rows:
        lat = r["latency_ms"]
        build = duet_build_seconds if r["engine"] == "duet" else r["build_seconds"]
        cells = [r["engine"], r["mode"]]
        if with_recall:
            cells += [f"{r['recall'][f'R@{k}']:.1f}" for k in (1, 5, 10)]
        cells += [f"{r['overlap@10']:.1f}", _f(lat["p50"], 2), _f(lat["p95"], 2), _f(lat["p99"], 2),
                  _g(r.get("latency_p50_vs_duet")) + "x", _qps(r["batch_qps"]),
                  _g(r.get("qps_vs_duet")) + "x",
                  _f(None if r["size_bytes"] is None else r["size_bytes"] / 2**20, 2),
                  _f(r.get("size_vs_duet"), 2) + "x",
                  "index build" if build is None else _f(build, 1)]
        out.append(cells)
    header = ["engine", "mode", *(["t2i R@1", "R@5", "R@10"] if with_recall else []), "overlap@10 vs exact",
              "p50 ms", "p95", "p99", "p50 vs Duet", "QPS batched", "QPS vs Duet", "size MiB", "size vs Duet",
              "build s"]
    return _table(header, out)


def statistics_table(real: dict[str, float], synthetic: dict[str, float] | None) -> list[str]:
    """The sparse statistics the synthetic corpus was drawn from, beside what it came out with."""
    header = ["statistic", "test images", *(["synthetic"] if synthetic else [])]
    return _table(header, [[key.replace("_", " "), f"{value:.3g}", *([f"{synthetic[key]:.3g}"] if synthetic else [])]
                           for key, value in real.items()])


def render_run(report: dict[str, Any], plots: list[str]) -> str:
    d, m = report["dataset"], report["machine"]
    q = report["quality"]
    lines = [f"# Duet benchmark: {d['name']} {d['split']} ({d['images']:,} images, {d['captions']:,} captions)", "",
             "Generated by `python -m benchmarks run` (command below); every number is in `report.json`.", "",
             f"- checkpoint: `{report['checkpoint']['path']}` ({report['checkpoint']['method']}, "
             f"content hash {report['checkpoint']['content_hash'][:16]})",
             f"- machine: {m['cpu']}, {m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
             f"torch {m['torch']}", f"- index: `{report['index']}`; fusion w_dense {report['fusion']['w_dense']:.3f}, "
             f"w_sparse {report['fusion']['w_sparse']:.3f}, T {report['fusion']['temperature']:.4f}",
             f"- run time {report['seconds'] / 60:.1f} min", *_resumed(report.get("sections", {})), ""]
    if d["note"]:
        lines += [f"**Protocol warning:** {d['note']}.", ""]
    lines += ["## Headline: recall through the index", "", *headline_table(report), "",
              f"Exact float sparse scoring (the reference line for Lucene's quantised impacts): RSUM "
              f"{q['rsum']['sparse_exact']:.1f}; Lucene minus exact R@10: "
              f"t2i {q['t2i']['lucene_minus_exact_R@10']:+.2f}, i2t {q['i2t']['lucene_minus_exact_R@10']:+.2f}.", ""]
    lines += [f"![{name}]({name})" for name in plots[:1]] + [""]
    if "readability" in report:
        lines += _readability(report["readability"])
    if "weight_sweep" in report:
        lines += ["## Dense/sparse weight sweep (hybrid)", "", *weight_table(report["weight_sweep"]), "",
                  "## Recall versus active terms (pruned indexes, Lucene)", "", *pruning_table(report["pruning"]), ""]
    if "latency" in report:
        lines += _efficiency(report)
    if "peers" in report:
        lines += _peers(report["peers"])
    for point in report.get("scale", []):
        took = report.get("sections", {}).get(f"scale-{point['items']}", {}).get("seconds")
        lines += [f"## Synthetic corpus: {point['items']:,} items ({point['queries']} real caption queries)", "",
                  "Items mix two real test images in both spaces (benchmarks/synthetic.py). Duet build "
                  f"{point['duet_build_seconds'] / 60:.1f} min (sparse "
                  f"{point['duet_sparse_build_items_per_second']:,.0f} items/s)"
                  + (f"; the whole point (generation, every build and measurement) took {took / 60:.0f} min."
                     if took else "."), "",
                  *statistics_table(point["statistics"], point.get("synthetic_statistics")), "",
                  *engines_table(point["engines"], with_recall=False,
                                duet_build_seconds=point["duet_build_seconds"]), ""]
        lines += _duet_efficiency(point)
        if point["unavailable"]:
            lines += [f"Unavailable: {'; '.join(point['unavailable'])}", ""]
    for point in report.get("knobs", []):
        lines += _knobs(point)
    if plots:
        lines += ["## Plots", "", *(f"![{name}]({name})" for name in plots), ""]
    lines += ["## How to read this", "",
              "- `exact` is brute force of the same scoring rule (ground truth); `overlap@10` is the share of its "
              "top 10 an engine returns.",
              "- milvus-lite's hybrid uses its WeightedRanker, which normalises each leg's scores before weighting "
              "(not Duet's w·cos/T + w·sparse), with the same weights and 100 candidates per leg; milvus-lite runs "
              "its own server process, whose thread count this runner cannot set.",
              "- Seismic is approximate (query_cut 20, heap_factor 0.7); exact/FAISS/Lucene use the stated threads.",
              f"- Reproduce: `{report['command']}`" if report.get("command") else "", ""]
    return "\n".join(lines)


def _duet_efficiency(point: dict[str, Any]) -> list[str]:
    """Duet's own path at one size: the sparse leg against the dense leg (FAISS: flat up to 100,000 items, IVF above),
    hybrid against its slower leg, and the inverted index's bytes against the dense index's."""
    duet = {row["mode"]: row for row in point["engines"] if row["engine"] == "duet"}
    if set(duet) != {"dense", "sparse", "hybrid"}:
        return []
    p50 = {mode: row["latency_ms"]["p50"] for mode, row in duet.items()}
    line = (f"Duet at this size: sparse (Lucene) p50 {p50['sparse'] / p50['dense']:.3f}x dense (FAISS, the side's "
            f"index) p50, with {duet['sparse']['overlap@10']:.1f}% overlap@10 with exact sparse; hybrid p50 "
            f"{p50['hybrid'] / max(p50['dense'], p50['sparse']):.2f}x its slower leg")
    per_item = point.get("duet_bytes_per_item")
    if per_item:
        lucene, dense = per_item["sparse_lucene"], per_item["dense_faiss"]
        line += (f"; Lucene {lucene:.0f} B/item, {lucene / dense:.3f}x "
                 f"the dense index (FAISS, {dense:.0f} B/item; the sparse forward "
                 f"store for rescoring and explanations adds {per_item['sparse_store']:.0f} B/item)")
    return [line + ".", ""]


def knobs_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [[r["engine"], r["mode"], r["knob"] or "(exact)", "" if r["value"] is None else f"{r['value']:,}",
            f"{r['overlap@10']:.1f}", _f(r["latency_ms"]["p50"], 2), _f(r["latency_ms"]["p95"], 2),
            _f(r["latency_ms"]["p99"], 2), _qps(r["batch_qps"])] for r in rows]
    return _table(["engine", "mode", "knob", "value", "overlap@10 vs exact", "p50 ms", "p95", "p99", "QPS batched"],
                  out)


def _knobs(point: dict[str, Any]) -> list[str]:
    lines = [f"## Search-time knobs: {point['items']:,} synthetic items ({point['queries']} real caption queries)",
             "", "The same corpus as the scale point of this size; each approximate engine's own search-time knob "
             "swept on one build (Duet hybrid: candidates per leg; FAISS HNSW: efSearch; Seismic: query_cut, "
             "heap_factor 0.7). The scale tables' fixed settings are one point on each curve.", "",
             *knobs_table(point["rows"]), ""]
    if point["unavailable"]:
        lines += [f"Unavailable: {'; '.join(point['unavailable'])}", ""]
    return lines


def _resumed(log: dict[str, dict[str, Any]]) -> list[str]:
    """A line naming the sections an earlier invocation measured (``--resume``), with when."""
    earlier = {name: entry["measured_at"] for name, entry in log.items() if entry.get("resumed")}
    if not earlier:
        return []
    named = ', '.join(f'{name} (measured {at or "at an unrecorded time"})' for name, at in earlier.items())
    return [f"- resumed (`--resume`): {named} "
            "come from an earlier invocation of the same command and configuration; the run time above is the "
            "last invocation's"]


def _efficiency(report: dict[str, Any]) -> list[str]:
    lines = ["## Efficiency", "", f"One query at a time, {report['latency']['threads']} thread:", "",
              *latency_table(report["latency"]), ""]
    b = report["batched"]
    lines += [f"Batched (all {b['queries']:,} captions in one call, {b['threads']} threads): "
              f"dense {b['dense_qps']:,.0f} QPS, sparse {b['sparse_qps']:,.0f} QPS, hybrid {b['hybrid_qps']:,.0f} QPS.",
              ""]
    e, build = report["encoding"], report["build"]
    lines += [f"Encoding from files ({e['threads']} threads): {e['images_per_second']:.1f} images/s, "
              f"{e['texts_per_second']:.0f} texts/s. Index build: {build['items']:,} items in "
              f"{build['timings']['total_seconds']:.1f} s ({build['items_per_second']:.0f} items/s; of it "
              f"{build['timings'].get('features_seconds', 0):.1f} s reading or computing the feature cache).", "",
              *size_table(report["sizes"]), ""]
    return lines


def _peers(peers: dict[str, Any]) -> list[str]:
    lines = ["## Peers on the same vectors (text to image, every caption a query)", "",
             *engines_table(peers["engines"], with_recall=True), ""]
    if peers["unavailable"]:
        lines += [f"Unavailable: {'; '.join(peers['unavailable'])}", ""]
    return lines


def _readability(section: dict[str, Any]) -> list[str]:
    r, floor = section["images"], section["frequency_floor"]
    rows = [["indexed images", *(f"{r[f'GP@{k}']:.3f}" for k in (5, 10, 20)), f"{r['grounded_mass']:.3f}",
             f"{r['junk_rate@10']:.3f}", f"{r['hub_max_df']:.3f}", f"{r['hub_median_df']:.3f}", r["distinct_terms"],
             f"{r['piece_rate@10']:.3f}" if "piece_rate@10" in r else ""],
            ["frequency floor", *(f"{floor[f'GP@{k}']:.3f}" for k in (5, 10, 20)), "", "", "", "", "", ""]]
    lines = ["## Readability of the sparse terms", "",
             "GP@k: the share of an image's top-k terms that are content terms of its own captions, in the model's "
             "own terms (word pieces or whole words; k in the denominator); grounded mass: weight on caption words "
             "over all weight; junk rate: top-10 terms that are no content term of any training caption; image df: "
             "share of images where a term is active; piece rate@10: top-10 terms that are not whole words of the "
             "training captions (word pieces). "
             f"Caption vocabulary and floor from the {section['caption_vocabulary_from']} captions.", "",
             *_table(["", "GP@5", "GP@10", "GP@20", "grounded mass", "junk rate@10", "largest image df",
                      "median image df", "distinct terms", "piece rate@10"], rows), ""]
    if "texts" in section:
        t = section["texts"]
        lines += [f"Indexed captions: {t['mean_terms']:.1f} terms on average, at most {t['max_terms']}; "
                  f"{100 * t['own_words_share']:.1f}% have only their own words as terms"
                  + (f", {100 * t['piece_rate']:.1f}% of their terms are word pieces" if "piece_rate" in t else "")
                  + ". FLOPs (expected "
                  f"multiplications per caption-image pair): {section['flops']:.2f}. Sparse and hybrid R@1 against "
                  "FLOPs and GP@10 for the latent and grounded models: "
                  "[docs/grounding-tradeoff.png](../../grounding-tradeoff.png) (docs/results.md).", ""]
    lines += _table(["query", "strongest terms"], [[e["query"], ", ".join(f"{t} {w:.2f}" for t, w in e["terms"])]
                                                   for e in section["examples"]])
    lines += ["", *_table(["image", "first caption", "strongest terms"],
                          [[e["id"], e["caption"], ", ".join(f"{t} {w:.2f}" for t, w in e["terms"])]
                           for e in section["image_examples"]]), ""]
    return lines
