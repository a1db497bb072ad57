"""core/cli_args.py: argparse flags generated from a pydantic model's fields."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.cli_args import Flag, FlagError, ModelArgs, split_commas, split_pairs


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(3, gt=0, description="inner size")
    names: tuple[str, ...] = ("a",)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path = Field(description="where from")
    output_dir: Path = Field(Path("out"), description="where to")
    scale: float = Field(100.0, gt=0, description="a 95% share")
    count: int | None = Field(None, gt=0, description="how many")
    mode: Literal["fast", "exact"] = Field("fast", description="how")
    verbose: bool = Field(False, description="say more")
    cache: bool = Field(True, description="reuse results")
    sizes: tuple[int, ...] = Field((1, 2), description="sizes to try")
    label: str = Field(default_factory=lambda: "made", description="a label")
    inner: Inner = Inner(size=5)

    @field_validator("sizes")
    @classmethod
    def _ascending(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if list(sizes) != sorted(sizes):
            raise ValueError("sizes must ascend")
        return sizes


def parser_for(args: ModelArgs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    args.add_to(parser)
    return parser


def parse(args: ModelArgs, line: str, **values: object) -> BaseModel:
    return args.build(parser_for(args).parse_args(line.split()), **values)


OPTIONS = ModelArgs(Options)


def test_flags_are_kebab_case_and_unset_flags_leave_the_models_defaults() -> None:
    parser = parser_for(OPTIONS)
    namespace = parser.parse_args(["--source", "s"])
    assert vars(namespace) == {"source": "s"}  # argparse holds no default
    assert parse(OPTIONS, "--source s") == Options(source=Path("s"))
    given = parse(OPTIONS, "--source s --output-dir o --scale 2.5 --count 4 --mode exact --sizes 3,4")
    assert given == Options(source=Path("s"), output_dir=Path("o"), scale=2.5, count=4, mode="exact", sizes=(3, 4))


def test_types_come_from_the_annotations() -> None:
    parser = parser_for(OPTIONS)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--source", "s", "--count", "many"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--source", "s", "--mode", "slow"])  # Literal: choices
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a required field is a required flag
    assert "{fast,exact}" in parser.format_help()


def test_bools_are_switches() -> None:
    assert parse(OPTIONS, "--source s --verbose").verbose is True
    # a field that defaults to True gets a way off
    assert parse(OPTIONS, "--source s --no-cache").cache is False
    assert parse(OPTIONS, "--source s --cache").cache is True


def test_sequences_are_comma_separated_or_space_separated() -> None:
    assert parse(OPTIONS, "--source s --sizes 1,,5").sizes == (1, 5)
    assert parse(OPTIONS, "--source s --sizes=").sizes == ()
    assert split_commas(" a, b ,") == ["a", "b"]
    spaced = ModelArgs(Options, flags={"sizes": Flag(nargs=True)})
    assert parse(spaced, "--source s --sizes 2 8 9").sizes == (2, 8, 9)
    assert parse(spaced, "--source s --sizes").sizes == ()


def test_a_mapping_is_name_value_pairs() -> None:
    class Mapped(BaseModel):
        fields: dict[str, int] | None = None

    args = ModelArgs(Mapped)
    assert parse(args, "--fields a:1,b:2").fields == {"a": 1, "b": 2}
    assert parse(args, "--fields=").fields == {}
    assert parse(args, "").fields is None
    assert split_pairs(" a : x, b:y ,") == {"a": "x", "b": "y"}
    with pytest.raises(argparse.ArgumentTypeError, match="name:value"):
        split_pairs("a:x,b")


def test_renames_and_aliases_and_help_overrides() -> None:
    renamed = ModelArgs(Options, flags={"output_dir": Flag(("--out", "--output-dir")), "scale": "--s",
                                        "verbose": Flag(help="more output")})
    assert parse(renamed, "--source s --out a").output_dir == Path("a")
    assert parse(renamed, "--source s --output-dir b").output_dir == Path("b")
    assert parse(renamed, "--source s --s 3").scale == 3.0
    text = parser_for(renamed).format_help()
    assert "more output" in text and "--scale" not in text
    with pytest.raises(ValueError, match=r"Options has no fields \['scael'\]"):
        ModelArgs(Options, flags={"scael": "--scale"})


def test_help_is_the_description_with_the_models_default() -> None:
    text = " ".join(parser_for(OPTIONS).format_help().split())
    assert "--scale SCALE a 95% share (default: 100.0)" in text  # % survives argparse's formatting
    assert "--output-dir OUTPUT_DIR where to (default: out)" in text
    assert "sizes to try (comma-separated; default: 1, 2)" in text
    assert "--count COUNT how many" in text and "how many (default" not in text  # None: nothing to show
    assert "a label" in text and "made" not in text  # a default factory is not called for the help
    assert "--inner-size INNER_SIZE inner size (default: 5)" in text  # the field's default instance, not the class's


def test_nested_models_flags_and_their_defaults() -> None:
    assert parse(OPTIONS, "--source s --inner-names x,y").inner == Inner(size=5, names=("x", "y"))
    prefixed = ModelArgs(Options, flags={"inner": "--in", "inner.names": "--labels"})
    assert parse(prefixed, "--source s --in-size 7 --labels z").inner == Inner(size=7, names=("z",))


def test_include_exclude_and_values_for_fields_no_flag_sets() -> None:
    some = ModelArgs(Options, include=("source", "inner.size"), exclude=("inner.names",))
    assert sorted(o.path for o in some.options) == ["inner.size", "source"]
    fixed = ModelArgs(Options, exclude=("source",))
    assert parse(fixed, "--scale 2", source="from-caller") == Options(source=Path("from-caller"), scale=2.0)
    # a flag given wins over a caller's fallback value
    optional = ModelArgs(Options, flags={"source": Flag(required=False)})
    assert parse(optional, "--source mine", source="fallback").source == Path("mine")
    assert parse(optional, "", source="fallback").source == Path("fallback")


def test_fields_without_a_flag_type_must_be_excluded() -> None:
    class Mapped(BaseModel):
        table: dict[str, list[int]] = {}
        name: str = "n"

    with pytest.raises(TypeError, match="table.*exclude it"):
        ModelArgs(Mapped).add_to(argparse.ArgumentParser())
    ModelArgs(Mapped, exclude=("table",)).add_to(argparse.ArgumentParser())


def test_validation_errors_name_the_flag() -> None:
    with pytest.raises(FlagError, match=r"invalid --scale: Input should be greater than 0 \(got -1.0\)"):
        parse(OPTIONS, "--source s --scale -1")
    with pytest.raises(FlagError, match="^invalid --sizes: sizes must ascend$"):
        parse(OPTIONS, "--source s --sizes 3,1")
    with pytest.raises(FlagError, match=r"invalid --sizes: Input should be a valid integer.*\(got 'x'\)"):
        parse(OPTIONS, "--source s --sizes 1,x")
    with pytest.raises(FlagError, match=r"invalid --inner-size: .*greater than 0"):
        parse(OPTIONS, "--source s --inner-size 0")
    assert issubclass(FlagError, ValueError)  # the CLIs report ValueErrors and exit 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOOL_", extra="forbid", frozen=True)

    port: int = Field(8000, ge=0, le=65535, description="port")
    host: str = "127.0.0.1"


def test_settings_models_read_the_environment_under_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ModelArgs(Settings)
    monkeypatch.delenv("TOOL_HOST", raising=False)
    monkeypatch.setenv("TOOL_PORT", "9001")
    assert parse(settings, "") == Settings(port=9001)
    assert parse(settings, "--port 9002 --host h") == Settings(port=9002, host="h")
    assert "port (env TOOL_PORT; default: 8000)" in " ".join(parser_for(settings).format_help().split())
    monkeypatch.setenv("TOOL_PORT", "many")
    with pytest.raises(FlagError, match="invalid port: "):  # from the environment: named by the field
        parse(settings, "")


# ----- the CLIs: a value the model rejects exits 2 with the flag named -----
def test_indexer_build_rejects_a_bad_value_with_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from indexer.cli import main

    assert main(["build", "--checkpoint", "c", "--data", "d", "--out", str(tmp_path / "i"), "--threads", "0"]) == 2
    assert "invalid --threads: Input should be greater than 0 (got 0)" in caplog.text
    assert main(["build", "--checkpoint", "c", "--out", str(tmp_path / "i"), "--scale", "0"]) == 2
    assert "invalid --scale: " in caplog.text
    assert not (tmp_path / "i").exists()


def test_benchmarks_reject_a_bad_value_with_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from benchmarks.cli import main

    # a count of 0 once reached a division before any check
    assert main(["search", "--index", str(tmp_path), "--output", str(tmp_path / "r.json"),
                 "--latency-queries", "0"]) == 2
    assert "invalid --latency-queries: Input should be greater than 0 (got 0)" in caplog.text
    assert main(["synthetic", "--index", str(tmp_path), "--output", str(tmp_path / "s.json"), "--items", "-5"]) == 2
    assert "invalid --items: " in caplog.text
    assert not (tmp_path / "r.json").exists()


def test_service_rejects_a_bad_value_with_exit_2(caplog: pytest.LogCaptureFixture) -> None:
    from service.cli import main

    assert main(["--port", "70000"]) == 2
    assert "invalid --port: Input should be less than or equal to 65535 (got 70000)" in caplog.text


# ----- the CLIs: Ctrl-C ends a command with one line and exit 130, not a traceback -----
def _interrupt(*_: object, **__: object) -> None:
    signal.raise_signal(signal.SIGINT)  # the real signal: Python's handler raises KeyboardInterrupt here


@pytest.fixture()
def python_sigint() -> Iterator[None]:
    """SIGINT delivered to Python's own handler, as a command started from a shell has it. Once, in a test process
    that had run other files first, the signal never reached the command (exit 0, no KeyboardInterrupt) while Python
    still listed its own handler: a native library loaded earlier had replaced it below Python or blocked the signal.
    Installing the handler again sets it at the C level too; the signal is unblocked for the test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if previous is not None:  # None: a handler set outside Python, which cannot be put back from here
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint")
def test_an_interrupted_build_exits_130_saying_it_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import indexer.cli
    from indexer.cli import main

    monkeypatch.setattr(indexer.cli, "_build", _interrupt)
    try:
        code = main(["build", "--checkpoint", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "i")])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the command")
    assert code == 130
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "interrupted: the same command resumes from the feature cache (a Ray build from its encoded rows)"]


@pytest.mark.usefixtures("python_sigint")
def test_an_interrupted_training_exits_130_naming_resume(tmp_path: Path, synthetic_dataset: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from training import trainer
    from training.cli import main

    monkeypatch.setattr(trainer, "train", _interrupt)
    try:
        code = main(["align", "--run-dir", str(tmp_path / "r"), "--data", str(synthetic_dataset)])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the command")
    assert code == 130
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("interrupted") and "--resume" in errors[0]
