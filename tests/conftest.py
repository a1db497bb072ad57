"""Shared fixtures: CPU only, offline, a tiny random open_clip architecture and a generated Karpathy dataset."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """As root, run the whole suite in a loopback-only network namespace: nothing it starts (uvicorn, chromium,
    Ray clusters) can reach or be reached from outside, and Ray advertises 127.0.0.1. Done here, first, because it
    moves only the calling thread and what it starts afterwards. Not root: left alone, so the Ray tests fail with
    LoopbackNamespaceError's instructions instead of silently skipping (so do they when root lacks CAP_SYS_ADMIN,
    with a warning here)."""
    if os.geteuid() == 0:
        from indexer.ray_cluster import LoopbackNamespaceError, enter_loopback_namespace

        try:
            enter_loopback_namespace()
        except LoopbackNamespaceError as error:
            config.issue_config_time_warning(pytest.PytestConfigWarning(str(error)), stacklevel=2)


RESOURCES = Path(__file__).parent / "resources"
TINY_MODEL = str(RESOURCES / "duet-tiny-test.json")

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 40),
          "black": (10, 10, 10), "white": (245, 245, 245)}
SHAPES = ("square", "stripe", "dot")


def tiny_backbone_config() -> dict[str, object]:
    return {"kind": "open_clip", "model_name": TINY_MODEL}


def make_karpathy_dataset(root: Path, *, per_split: dict[str, int], captions_per_image: int = 5,
                          seed: int = 0) -> Path:
    """A small Karpathy-format dataset of coloured shapes whose captions name the colour and shape."""
    rng = random.Random(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    entries, sentid, imgid = [], 0, 0
    for split, count in per_split.items():
        for _ in range(count):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            background = rng.choice([c for c in COLORS if c != color])
            image = Image.new("RGB", (48, 48), COLORS[background])
            pixels = image.load()
            for x in range(48):
                for y in range(48):
                    inside = {"square": 12 <= x < 36 and 12 <= y < 36, "stripe": 18 <= x < 30,
                              "dot": (x - 24) ** 2 + (y - 24) ** 2 < 120}[shape]
                    if inside:
                        pixels[x, y] = COLORS[color]
            filename = f"img_{imgid:04d}.jpg"
            image.save(images_dir / filename, quality=90)
            sentences = []
            for k in range(captions_per_image):
                text = rng.choice([f"a {color} {shape} on {background}", f"{color} {shape}",
                                   f"the {shape} is {color}", f"a {shape} coloured {color} over {background}"])
                sentences.append({"raw": text + ("." if k % 2 else ""), "sentid": sentid, "imgid": imgid})
                sentid += 1
            entries.append({"filename": filename, "imgid": imgid, "split": split, "sentences": sentences})
            imgid += 1
    (root / "dataset_synthetic.json").write_text(json.dumps({"dataset": "synthetic", "images": entries}))
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_karpathy_dataset(tmp_path_factory.mktemp("synthetic"),
                                 per_split={"train": 48, "val": 16, "test": 16, "unused": 2})


@pytest.fixture(scope="session")
def tiny_backbone():  # type: ignore[no-untyped-def]
    from core.backbone import build_backbone
    from core.config import BackboneConfig

    return build_backbone(BackboneConfig.model_validate(tiny_backbone_config()))


def save_tiny_checkpoint(backbone, dataset_dir: Path, out: Path, *, seed: int = 0,  # type: ignore[no-untyped-def]
                         sparse_head: dict[str, object] | None = None) -> Path:
    """An untrained Duet model on the tiny backbone whose terms are the synthetic captions' tokens (their content
    pieces when ``sparse_head`` asks for the 'content' vocabulary, their words for 'words')."""
    import torch

    from core.checkpoint import save_checkpoint
    from core.config import BackboneConfig, ModelConfig, SparseHeadConfig
    from core.data import load_karpathy
    from core.model import DuetModel
    from core.terms import TermSpace
    from core.vocab import caption_vocabulary, document_frequency
    from core.words import WordVocabulary

    dataset = load_karpathy(dataset_dir)
    texts = [c.text for r in dataset.images for c in r.captions]
    head = SparseHeadConfig.model_validate(sparse_head or {})
    words = WordVocabulary.from_captions(texts, inflections=head.inflections == "merge") \
        if head.vocabulary == "words" else None
    terms = TermSpace(backbone.vocabulary, backbone.tokenizer, words)
    df = document_frequency(terms.rows(texts), len(terms.vocabulary))
    term_ids = torch.from_numpy(caption_vocabulary(terms.vocabulary, df,
                                                   content_only=head.vocabulary in ("content", "words")))
    config = ModelConfig(backbone=BackboneConfig.model_validate(tiny_backbone_config()), sparse_head=head,
                         fusion_dense_weight=0.1, fusion_sparse_weight=0.2)
    torch.manual_seed(seed)
    model = DuetModel(config, image_projection=backbone.image_projection + 0.01 * seed,
                      text_projection=backbone.text_projection,
                      token_embedding=terms.embedding(backbone.token_embedding), term_ids=term_ids,
                      term_idf=torch.linspace(0.5, 2.0, term_ids.numel()), words=words)
    save_checkpoint(out, model, backbone_fingerprint=backbone.fingerprint, metadata={"method": "test"})
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_backbone, synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return save_tiny_checkpoint(tiny_backbone, synthetic_dataset, tmp_path_factory.mktemp("ckpt") / "best")


@pytest.fixture(scope="session")
def tiny_index(tiny_checkpoint: Path, synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real index (Lucene impact + FAISS) of the synthetic test and val splits."""
    from indexer.build import IndexBuildConfig, build_index

    root = tmp_path_factory.mktemp("index")
    build_index(IndexBuildConfig(checkpoint=tiny_checkpoint, output=root / "synthetic", dataset=synthetic_dataset,
                                 splits=("test", "val"), cache_root=root / "cache"))
    return root / "synthetic"


@pytest.fixture(scope="session")
def tiny_engine(tiny_index: Path):  # type: ignore[no-untyped-def]
    """The tiny index opened for searching (read only: share it)."""
    from indexer.search import SearchEngine

    engine = SearchEngine.open(tiny_index)
    yield engine
    engine.close()


@pytest.fixture()
def index_copy(tiny_index: Path, tmp_path: Path) -> Path:
    """A copy of the tiny index to write to."""
    import shutil

    target = tmp_path / "index"
    shutil.copytree(tiny_index, target, symlinks=True)  # keeps the relative ``current`` link
    return target


# the default model's head: texts are their own words (inference-free weights), over a vocabulary of whole words
GROUNDED_HEAD = {"vocabulary": "words", "expansion": "always", "query_encoder": "inference_free"}


@pytest.fixture(scope="session")
def tiny_grounded_index(tiny_backbone, synthetic_dataset: Path,  # type: ignore[no-untyped-def]
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real index of a model whose texts are their own words, its terms whole words (inference-free text
    terms)."""
    from indexer.build import IndexBuildConfig, build_index

    root = tmp_path_factory.mktemp("grounded")
    checkpoint = save_tiny_checkpoint(tiny_backbone, synthetic_dataset, root / "best", sparse_head=GROUNDED_HEAD)
    build_index(IndexBuildConfig(checkpoint=checkpoint, output=root / "index", dataset=synthetic_dataset,
                                 splits=("test",), cache_root=root / "cache"))
    return root / "index"


@pytest.fixture(scope="session")
def tiny_server(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real uvicorn server (``python -m service``) on 127.0.0.1 over the tiny index."""
    from tests.server import serving

    with serving(tiny_index, tmp_path_factory.mktemp("logs") / "server.log") as running:
        yield running


# Test tiers (`pytest -m "not java and not browser and not peers"` runs the in-process tests alone; `make test`
# runs every tier). A test is in a tier when it uses a fixture that needs it, or its module is marked.
_TIERS_OF_FIXTURE: dict[str, tuple[str, ...]] = {
    "tiny_index": ("java",), "tiny_engine": ("java",), "index_copy": ("java",), "tiny_grounded_index": ("java",),
    "tiny_server": ("java",),
    "grounded_server": ("java",), "tiny_run": ("java", "peers"), "browser": ("browser", "java"),
}


# The longest files (their tests and module fixtures: 1.5-3.5 minutes each on 2 cores), longest first. `make test`
# gives whole files to two processes in collection order: these start first, so that neither process is left
# running one of them alone at the end. Only the order: a file missing here runs after them, as collected.
LONGEST_FILES = ("test_scaleout_ray.py", "test_reliability_faults.py", "test_service_writes_live.py",
                 "test_reliability_fuzz.py", "test_service_shutdown.py", "test_live.py", "test_indexer.py",
                 "test_gpu_bench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {tier for name in getattr(item, "fixturenames", ()) for tier in _TIERS_OF_FIXTURE.get(name, ())}
        for tier in sorted(tiers):
            item.add_marker(tier)
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: each file keeps its own order


def noise_png(seed: int, size: int = 40) -> bytes:
    """A distinctive image: random noise, so no indexed image is its near-duplicate."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# operators whose output shape (or, for a scalar, value) comes from the data: a GPU must stop for the host to read it
_READ_BACK = ("unique", "nonzero", "masked_select", "_local_scalar_dense")


def host_read_back_operators(function: Callable[..., object], *tensors: object) -> set[str]:
    """The operators of ``function(*tensors)``, traced, whose output the host must read back from the device."""
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(function)(*tensors).graph
    return {str(node.target) for node in graph.nodes
            if node.op == "call_function" and any(name in str(node.target) for name in _READ_BACK)}


# the headless browser of the web page tests (Debian's chromium + chromedriver)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail("the web page test needs Debian's chromium and chromium-driver (make setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
