"""The CLIP BPE tokenizer, built offline from the vocabulary file open_clip ships.

transformers ships no CLIP vocabulary, and ``CLIPTokenizer.from_pretrained`` without the network
silently returns a 2-token tokenizer (research/install.md §3). open_clip bundles the original
OpenAI BPE merges (``bpe_simple_vocab_16e6.txt.gz``; ImageBind ships the same file), so the
49 408-token vocabulary is rebuilt here the way CLIP defines it:

    256 byte symbols, the same 256 with the end-of-word marker ``</w>``, the first 48 894 merges
    (49 152 − 256 − 2) concatenated, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

Measured: ids equal open_clip's ``SimpleTokenizer`` on non-pad positions (HF pads with 49407,
open_clip with 0). ``model_max_length`` must be set (77): without it diffusers pipelines fail
with ``OverflowError: int too big to convert``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from anyto3d.errors import MissingWeightsError

VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """CLIP/GPT-2's printable stand-in for each byte 0..255, in byte order.

    Printable latin-1 bytes stand for themselves; the remaining bytes (control characters, space,
    ...) are mapped in order onto code points 256, 257, ... so every byte has a visible symbol.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _bytes_order() -> list[str]:
    """The order CLIP lists byte symbols in its vocabulary: printable bytes first, then the rest."""
    symbols = byte_symbols()
    printable = [s for b, s in enumerate(symbols) if ord(s) == b]
    others = [s for b, s in enumerate(symbols) if ord(s) != b]
    return printable + others


def bpe_vocab_path() -> Path:
    """open_clip's bundled BPE merges file (no import of open_clip itself, which is slow)."""
    for package in ("open_clip", "imagebind"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for candidate in (Path(root) / "bpe_simple_vocab_16e6.txt.gz", Path(root) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"):
                if candidate.is_file():
                    return candidate
    raise MissingWeightsError(
        "CLIP BPE vocabulary 'bpe_simple_vocab_16e6.txt.gz' not found: it ships with the open-clip-torch "
        "package (open_clip/bpe_simple_vocab_16e6.txt.gz); install open-clip-torch"
    )


@functools.lru_cache(maxsize=None)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]  # line 0 is a version header
    base = _bytes_order()
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [BOS, EOS]
    if len(tokens) != VOCAB_SIZE:
        raise MissingWeightsError(f"{bpe_vocab_path()} gives {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=None)
def clip_tokenizer(max_length: int = 77):
    """A transformers ``CLIPTokenizer`` with CLIP's full vocabulary, built offline (memoised).

    Shared by every caller with the same ``max_length``; do not mutate it.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
