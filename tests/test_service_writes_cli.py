"""``python -m indexer add|delete|compact`` in process, over a stand-in for the live collection: the flags, the
printed result, and the exit status of each refusal (a collection the service holds: exit 2, pointing at the HTTP
API). The real collection under the real CLI is in tests/test_service_writes_live.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from core.cancel import Cancellation
from indexer import cli
from indexer.live import CollectionLockedError, CompactionResult, ItemNotFoundError, WriteResult
from indexer.writes import WriteRejectedError


class StandIn:
    """Records what the CLI asks of the collection; refuses what the contract refuses."""

    opened: list[tuple[str, dict[str, Any]]] = []
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    closed = 0
    locked = False

    @classmethod
    def open(cls, index_dir: str, **kwargs: Any) -> StandIn:
        if cls.locked:
            raise CollectionLockedError(f"{index_dir} is being written by another process")
        cls.opened.append((index_dir, kwargs))
        return cls()

    def _called(self, name: str, *args: Any, **kwargs: Any) -> None:
        StandIn.calls.append((name, args, kwargs))

    def add_image(self, data: bytes, **kwargs: Any) -> WriteResult:
        self._called("add_image", data, **kwargs)
        if not data.startswith(b"\x89PNG"):
            raise WriteRejectedError("not a readable image")
        item_id = kwargs["item_id"] or "hash.png"
        captions = {"texts": [f"{item_id}#{n}" for n in range(len(kwargs["captions"]))]} if kwargs["captions"] else {}
        return WriteResult(1, "upsert", item_id, "images", False, {"images": [item_id], **captions}, {})

    def add_text(self, text: str, **kwargs: Any) -> WriteResult:
        self._called("add_text", text, **kwargs)
        return WriteResult(2, "upsert", kwargs["item_id"] or "text-hash", "texts", False, {"texts": ["t"]}, {})

    def delete(self, item_id: str) -> WriteResult:
        self._called("delete", item_id)
        if item_id != "known.png":
            raise ItemNotFoundError(item_id)
        return WriteResult(3, "delete", item_id, "images", False, {}, {"images": [item_id]})

    def compact(self, cancel: Cancellation | None = None) -> CompactionResult:
        if cancel is not None:
            cancel.check()
        self._called("compact")
        return CompactionResult("v2", {"images": 33, "texts": 160}, 1.5, 3)

    def close(self) -> None:
        StandIn.closed += 1


@pytest.fixture(autouse=True)
def stand_in(monkeypatch: pytest.MonkeyPatch) -> type[StandIn]:
    monkeypatch.setattr(cli, "ServedCollection", StandIn)
    StandIn.opened, StandIn.calls, StandIn.closed, StandIn.locked = [], [], 0, False
    return StandIn


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG fake bytes")
    return path


def test_add_an_image_with_captions(image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["add", "--index", "idx", "--image", str(image), "--caption", "a dog", "--caption", "a pet",
                     "--id", "dog.png", "--metadata", '{"by": "me"}'])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"seq": 1, "op": "upsert", "id": "dog.png", "side": "images",
                                                   "replaced": False, "deleted": {},
                                                   "written": {"images": ["dog.png"],
                                                               "texts": ["dog.png#0", "dog.png#1"]}}
    assert StandIn.opened == [("idx", {"auto_compact_ratio": None})]  # compaction is the CLI's own command
    assert StandIn.calls == [("add_image", (b"\x89PNG fake bytes",),
                              {"item_id": "dog.png", "captions": ["a dog", "a pet"], "metadata": {"by": "me"}})]
    assert StandIn.closed == 1


def test_add_a_text_delete_and_compact(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["add", "--index", "idx", "--text", "a note"]) == 0
    assert json.loads(capsys.readouterr().out)["side"] == "texts"
    assert cli.main(["delete", "--index", "idx", "--id", "known.png"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == {"images": ["known.png"]}
    assert cli.main(["compact", "--index", "idx"]) == 0
    assert json.loads(capsys.readouterr().out) == {"generation": "v2", "counts": {"images": 33, "texts": 160},
                                                   "seconds": 1.5, "wal_seq": 3}
    assert [name for name, _, _ in StandIn.calls] == ["add_text", "delete", "compact"]
    assert StandIn.calls[0] == ("add_text", ("a note",), {"item_id": None, "metadata": None})
    assert StandIn.closed == 3


def test_a_collection_the_service_holds_is_exit_2_pointing_at_the_http_api(image: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    StandIn.locked = True
    for argv in (["add", "--index", "idx", "--image", str(image)], ["delete", "--index", "idx", "--id", "x"],
                 ["compact", "--index", "idx"]):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert cli.main(argv) == 2
        assert "HTTP API" in caplog.text and "POST /v1/items" in caplog.text and "being written" in caplog.text


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "--index", "idx", "--text", "t", "--metadata", "{broken"], "--metadata is not valid JSON"),
    (["add", "--index", "idx", "--text", "t", "--metadata", "[1]"], "--metadata must be a JSON object"),
    (["add", "--index", "idx", "--text", "t", "--caption", "c"], "--caption goes with --image"),
    (["add", "--index", "idx", "--image", "no/such.png"], "no/such.png"),
    (["delete", "--index", "idx", "--id", "unknown.png"], "no live item has the id 'unknown.png'"),
])
def test_user_errors_are_exit_2_with_a_message(argv: list[str], message: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    assert message in caplog.text
    assert StandIn.closed == len(StandIn.opened)  # whatever was opened was closed


def test_a_write_the_collection_refuses_is_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["add", "--index", "idx", "--image", str(text)]) == 2
    assert "not a readable image" in caplog.text and StandIn.closed == 1


@pytest.mark.parametrize("argv", [
    ["add", "--index", "idx"],
    ["add", "--index", "idx", "--image", "a.png", "--text", "t"],
    ["add", "--image", "a.png"],
    ["delete", "--index", "idx"],
    ["compact"],
])
def test_missing_or_conflicting_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and StandIn.opened == []
