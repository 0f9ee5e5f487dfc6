"""Calibration data for a loaded model: real text through its own tokenizer where it has one,
else random inputs of the right shape, with a description of which it is (reports say it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from energyprune.errors import UsageError
from energyprune.models.inputs import build_inputs
from energyprune.models.loaded import LoadedModel

logger = logging.getLogger(__name__)


def calibration_for(loaded: LoadedModel, model: nn.Module, batch_size: int, seq_len: int | None,
                    n_batches: int, source: str, device: Any) -> tuple[list[Any], str]:
    """Calibration batches and a description of where they came from.

    source "text": real text (gensim's Lee news corpus) through the model's own tokenizer, for a
    Hugging Face folder that ships one; "random": random inputs of the right shape; "auto": text
    where possible, else random — and the description says which."""
    if source in ("auto", "text") and loaded.kind == "huggingface":
        try:
            from transformers import AutoTokenizer

            from energyprune.models.zoo import calibration_batches, text_corpus

            tokenizer = AutoTokenizer.from_pretrained(Path(loaded.spec), local_files_only=True,
                                                      trust_remote_code=False)
            texts = text_corpus("lee_background")
            half = len(texts) // 2  # the second half is held out for quality (`heldout_text_for`)
            batches = calibration_batches(tokenizer, texts[:half], seq_len or 128, batch_size, n_batches)
            moved = [{k: v.to(device) for k, v in b.items()} for b in batches]
            return moved, (f"text: gensim lee_background documents 0-{half - 1}, {n_batches} x {batch_size} x "
                           f"{seq_len or 128} tokens")
        except Exception as error:  # no tokenizer in the folder, or gensim missing
            if source == "text":
                raise UsageError(f"--calibration text needs a tokenizer in the model folder and gensim "
                                 f"(pip install gensim): {error}") from error
            logger.warning("no text calibration (%s): using random inputs", error)
    batches = [build_inputs(loaded, model, batch_size, seq_len, None, device, seed=i) for i in range(n_batches)]
    return batches, f"random inputs, {n_batches} batches of {batch_size}"




def heldout_text_for(loaded: LoadedModel, seq_len: int | None, n_sequences: int, device: Any
                     ) -> tuple[list[Any], str] | None:
    """Held-out real text for quality, through the model's own tokenizer: the second half of
    gensim's Lee news corpus (the calibration data come from the first half), packed into
    `n_sequences` rows of `seq_len` tokens; None (with the reason logged) where the model is not
    a Hugging Face folder with a tokenizer or gensim is missing - the caller then says that quality
    was measured on its measurement inputs."""
    if loaded.kind != "huggingface":
        return None
    try:
        from transformers import AutoTokenizer

        from energyprune.models.zoo import calibration_batches, text_corpus

        tokenizer = AutoTokenizer.from_pretrained(Path(loaded.spec), local_files_only=True, trust_remote_code=False)
        texts = text_corpus("lee_background")
        half = len(texts) // 2
        length = seq_len or 128
        batches = calibration_batches(tokenizer, texts[half:], length, 1, n_sequences)
    except Exception as error:  # no tokenizer in the folder, gensim missing, too little text
        logger.info("no held-out text for quality (%s)", error)
        return None
    moved = [{k: v.to(device) for k, v in b.items()} for b in batches]
    return moved, (f"held-out text: gensim lee_background documents {half}-{len(texts) - 1}, {n_sequences} x "
                   f"{length} tokens")
