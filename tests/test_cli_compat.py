"""The command lines of the Makefile, scripts/, README.md, docs/ and the tests give the same configuration through
the CLIs generated from the config models as through the hand-written ones they replaced (tests/cli_legacy.py)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

import benchmarks.cli as bench_cli
import indexer.cli as indexer_cli
import service.cli as service_cli
from benchmarks.matrix import ResultsMatrix
from tests import cli_legacy as legacy

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_ENV = ("DUET_INDEX_DIR", "DUET_CHECKPOINT", "DUET_COLLECTION_ROOT", "DUET_HOST", "DUET_PORT")


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DUET_DATA", *SETTINGS_ENV):
        monkeypatch.delenv(name, raising=False)


def _both(old: argparse.ArgumentParser, new: argparse.ArgumentParser,
          line: str) -> tuple[argparse.Namespace, argparse.Namespace]:
    argv = shlex.split(line)
    return old.parse_args(argv), new.parse_args(argv)


INDEXER_BUILDS = [
    # README.md
    "build --checkpoint runs/grounded/best --data data/flickr8k --splits test --out indexes/f8k-test",
    "build --checkpoint runs/grounded/best --folder /home/u/photos --out indexes/photos",
    # scripts/demo.sh (its SPLITS default)
    "build --checkpoint runs/grounded/best --data data/flickr8k --splits train,val,test --out indexes/flickr8k",
    # tests/test_indexer.py
    "build --checkpoint ckpt --folder folder --out out --cache-root tmp/cache",
    "build --checkpoint ckpt --data data --splits nosuch --out i",
    # README.md's options (--scale, --faiss-factory) and the rest
    "build --checkpoint c --data d --out o --faiss-factory HNSW32 --scale 50 --prune-image-terms 64 "
    "--prune-text-terms 16 --skip-corrupt --threads 1 --image-root d/imgs --splits train,,val",
    "--log-level WARNING build --checkpoint c --out o",
]


@pytest.mark.parametrize("line", INDEXER_BUILDS)
def test_indexer_build_lines_give_the_same_config(line: str) -> None:
    old, new = _both(legacy.indexer_parser(), indexer_cli.build_parser(), line)
    assert indexer_cli.build_config(new) == legacy.index_build_config(old)
    assert new.log_level == old.log_level


def test_indexer_build_without_data_takes_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUET_DATA", "/data/flickr8k")
    old, new = _both(legacy.indexer_parser(), indexer_cli.build_parser(), "build --checkpoint c --out o")
    assert indexer_cli.build_config(new) == legacy.index_build_config(old)
    assert str(indexer_cli.build_config(new).dataset) == "/data/flickr8k"


@pytest.mark.parametrize("line", [
    "verify --index indexes/f8k-test",  # README.md
    "--log-level WARNING verify --index indexes/flickr8k --checkpoint runs/grounded/best",  # scripts/demo.sh
])
def test_indexer_verify_lines_parse_the_same(line: str) -> None:
    old, new = _both(legacy.indexer_parser(), indexer_cli.build_parser(), line)
    assert (new.index, new.checkpoint, new.log_level) == (old.index, old.checkpoint, old.log_level)


TINY_RUN = ("--scales 300 --prune-terms 4 --weight-grid 0,0.5,1 --latency-queries 8 --scale-queries 8 "
            "--knob-scales 300 --knob-candidate-k 5,300 --knob-ef-search 4,64 --knob-query-cut 2,20")
RUNS = [
    # Makefile (benchmarks, with and without BENCH_ARGS=--resume); docs/benchmarks/*/README.md's Reproduce lines
    "run --checkpoint runs/grounded/best --data data/flickr8k --out docs/benchmarks/flickr8k-test "
    "--scales 10000,100000,1000000 --knob-scales 100000,1000000",
    "run --checkpoint runs/skd/best --data data/flickr8k --out docs/benchmarks/flickr8k-test --resume "
    "--scales 10000,100000,1000000 --knob-scales 100000,1000000",
    "run --checkpoint runs/grounded/best --data data/flickr8k --out o --knob-scales 100000",
    # docs/benchmarks/README.md: other datasets
    "run --checkpoint runs/grounded/best --dataset mscoco --data data/mscoco --split test "
    "--out docs/benchmarks/mscoco-5k",
    "run --checkpoint runs/grounded/best --dataset flickr30k --data data/flickr30k --split test "
    "--out docs/benchmarks/flickr30k-1k",
    # tests/test_benchmark_runner.py
    f"run --checkpoint ckpt --dataset mscoco --data coco --out r/report --work r/work --cache-root r/cache {TINY_RUN}",
    f"run --checkpoint other --dataset mscoco --data coco --index r/work/index-test --out out --cache-root c "
    f"{TINY_RUN}",
    f"run --checkpoint ckpt --dataset mscoco --data coco --split dev --out out --cache-root c {TINY_RUN}",
    # the remaining options; '' selects none
    "run --checkpoint c --out o --image-root imgs --peers '' --scales '' --knob-scales '' --stages quality,readability "
    "--threads 2 --batch-threads 1",
    "run --checkpoint c --out o --peers hnsw,seismic --knob-candidate-k '' --knob-ef-search 32",
]


@pytest.mark.parametrize("line", RUNS)
def test_benchmark_run_lines_give_the_same_config(line: str) -> None:
    old, new = _both(legacy.benchmarks_parser(), bench_cli.build_parser(), line)
    assert bench_cli.run_config(new) == legacy.run_config(old)
    assert new.resume == old.resume


@pytest.mark.parametrize("line", [
    "run --checkpoint c --out o --peers hnsw,elastic",  # tests/test_benchmark_runner.py
    "run --checkpoint c --out o --stages ''",
    "run --checkpoint c --out o --scales 10k",
    "run --checkpoint c --out o --weight-grid 0,2",
    "run --checkpoint c --out o --knob-ef-search 0",
])
def test_benchmark_run_lines_rejected_before_are_rejected(line: str) -> None:
    old, new = _both(legacy.benchmarks_parser(), bench_cli.build_parser(), line)
    with pytest.raises(ValueError):
        legacy.run_config(old)
    with pytest.raises(ValueError, match="invalid --"):
        bench_cli.run_config(new)


@pytest.mark.parametrize("line", [
    # Makefile check-benchmarks
    "check --matrix benchmarks/matrix/flickr8k-test.json --checkpoint runs/grounded/best --data data/flickr8k",
    # tests/test_benchmark_runner.py
    "check --matrix benchmarks/matrix/flickr8k-test-latent.json --data coco --work w --cache-root c",
    "check --matrix benchmarks/matrix/flickr8k-test.json --output verdicts.json",
])
def test_benchmark_check_lines_give_the_same_config(line: str, tmp_path: Path) -> None:
    old, new = _both(legacy.benchmarks_parser(), bench_cli.build_parser(), line)
    matrix = ResultsMatrix.load(ROOT / new.matrix)
    assert bench_cli.check_config(new, matrix, tmp_path) == legacy.check_config(old, matrix, tmp_path)
    assert (new.matrix, new.output) == (old.matrix, old.output)


@pytest.mark.parametrize(("options", "line"), [
    # scripts/benchmarks.sh
    (bench_cli.SEARCH_ARGS, "search --index indexes/flickr8k-test --http --output docs/benchmarks/earlier/f.json"),
    (bench_cli.SEARCH_ARGS, "search --index indexes/flickr8k-test-flops --output f.json"),
    (bench_cli.SYNTHETIC_ARGS, "synthetic --index indexes/flickr8k-test --items 100000 --output s.json"),
    (bench_cli.SYNTHETIC_ARGS, "synthetic --index indexes/flickr8k-test-flops --items 1000000 --queries 50 "
                               "--output s.json"),
    (bench_cli.REPORT_ARGS, "report --search a.json b.json --synthetic s-1.json s-2.json --output README.md"),
    # tests/test_benchmarks.py and the remaining options
    (bench_cli.SEARCH_ARGS, "search --index tiny --output r.json --latency-queries 8"),
    (bench_cli.SEARCH_ARGS, "search --index tiny --output r.json --candidate-k 30 --skip-quality"),
    (bench_cli.SYNTHETIC_ARGS, "synthetic --index tiny --work w --candidate-k 7 --output s.json"),
    (bench_cli.REPORT_ARGS, "report --search a.json --output o.md --notes n.md"),
    (bench_cli.REPORT_ARGS, "report --search a.json --synthetic --output o.md"),
])
def test_benchmark_measurement_lines_give_the_same_options(options: bench_cli.ModelArgs, line: str) -> None:
    old, new = _both(legacy.benchmarks_parser(), bench_cli.build_parser(), line)
    # the old namespace (its argparse defaults included) read into the new model
    expected = options.model.model_validate({name: getattr(old, name) for name in options.model.model_fields})
    assert options.build(new) == expected


@pytest.mark.parametrize("line", [
    "--index indexes/flickr8k --host 127.0.0.1 --port 8000",  # scripts/demo.sh, README.md
    "--index tiny --port 8123 --host 127.0.0.1 --log-level warning",  # tests/server.py
    "--index idx --port 8124",  # benchmarks/http_bench.py
    "--checkpoint runs/skd/best --collection-root imgs",
    "",
])
def test_service_lines_give_the_same_settings(line: str) -> None:
    old, new = _both(legacy.service_parser(), service_cli.build_parser(), line)
    assert service_cli.settings_from(new) == legacy.service_settings(old)
    assert new.log_level == old.log_level


def test_flags_over_the_environment_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUET_PORT", "9001")
    monkeypatch.setenv("DUET_HOST", "0.0.0.0")
    for line in ("", "--port 9002"):
        old, new = _both(legacy.service_parser(), service_cli.build_parser(), line)
        assert service_cli.settings_from(new) == legacy.service_settings(old)


def test_every_option_has_help_and_the_models_default() -> None:
    def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
        return [a for a in parser._actions if a.option_strings and a.dest != "help"]

    subparsers = {**_subparsers(indexer_cli.build_parser(), "indexer"), **_subparsers(bench_cli.build_parser(),
                                                                                     "benchmarks")}
    subparsers["service"] = service_cli.build_parser()
    for name, parser in subparsers.items():
        for action in options(parser):
            if action.dest != "log_level":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
    build = subparsers["indexer build"].format_help()
    assert "--scale SCALE" in build and "(default: 100.0)" in " ".join(build.split())
    run = " ".join(subparsers["benchmarks run"].format_help().split())
    assert "(comma-separated; default: 10000, 100000)" in run and "--knob-ef-search" in run


def _subparsers(parser: argparse.ArgumentParser, prog: str) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {f"{prog} {name}": sub for action in found for name, sub in action.choices.items()}
