"""Tiny random models for tests and benchmarks, built with transformers (a few MB each).

A family is one random base model and fine-tunes of it (the base plus small seeded noise),
so task vectors are small as they are in practice. Every model carries a real tokenizer
(byte-level BPE trained here on a fixed text), so outputs load and run in transformers. A
fine-tune may add special tokens to its tokenizer (and rows to its embeddings), as chat
fine-tunes do, so vocabularies differ while sharing most tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "model merging combines the weights of fine-tuned models without training",
    "slerp, ties and dare are ways to merge task vectors",
    "hello world, this is a tiny tokenizer for tests",
] * 4


def _config(kind: str, vocab: int, layers: int, tied: bool | None, hidden: int, intermediate: int):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=1)
    if kind == "llama":
        return LlamaConfig(**common, tie_word_embeddings=bool(tied))
    if kind == "mistral":
        return MistralConfig(**common, tie_word_embeddings=bool(tied), sliding_window=None)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True if tied is None else tied)
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=1,
                          tie_word_embeddings=True if tied is None else tied)
    raise ValueError(f"unknown tiny model kind {kind!r}")


def tokenizer(folder: Path, vocab: int = 320, corpus: list[str] = CORPUS):
    """A byte-level BPE tokenizer trained on `corpus`, saved in `folder` (deterministic)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab, min_frequency=1, special_tokens=["<s>", "</s>", "<pad>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.save_pretrained(folder)
    return tok


def make_family(
    root: Path,
    kind: str = "llama",
    variants: int = 2,
    *,
    layers: int = 4,
    tied: bool | None = None,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int | None = None,
    hidden: int = 64,
    intermediate: int = 128,
    noise: float = 0.02,
    seed: int = 0,
    extra_tokens: dict[int, list[str]] | None = None,
) -> list[Path]:
    """Save a base model and `variants` fine-tunes under `root`; return their folders, base first.

    `extra_tokens[i]` are special tokens fine-tune i adds (its embeddings grow to match)."""
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / "_tokenizer"
    tok = tokenizer(tok_dir)
    vocab = len(tok)
    torch.manual_seed(seed)
    config = _config(kind, vocab, layers, tied, hidden, intermediate)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    folders = []
    for i in range(variants + 1):
        if i:
            gen = torch.Generator().manual_seed(seed * 1000 + i)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(base_state[name] + (torch.randn(p.shape, generator=gen) * noise).to(dtype))
        folder = root / (f"{kind}-base" if i == 0 else f"{kind}-ft{i}")
        kwargs = {"max_shard_size": shard_bytes} if shard_bytes else {}
        out_model, out_tok = model, tok
        if extra_tokens and extra_tokens.get(i):
            import copy

            out_model, out_tok = copy.deepcopy(model), copy.deepcopy(tok)
            out_tok.add_special_tokens({"additional_special_tokens": list(extra_tokens[i])})
            out_model.resize_token_embeddings(len(out_tok), mean_resizing=False)
            with torch.no_grad():
                gen = torch.Generator().manual_seed(seed * 1000 + 100 + i)
                emb = out_model.get_input_embeddings().weight
                emb[vocab:] = (torch.randn(emb[vocab:].shape, generator=gen) * 0.02).to(dtype)
                head = out_model.get_output_embeddings()
                if head is not None and head.weight is not emb:
                    head.weight[vocab:] = (torch.randn(head.weight[vocab:].shape, generator=gen) * 0.02).to(dtype)
        out_model.save_pretrained(folder, **kwargs)
        out_tok.save_pretrained(folder)
        folders.append(folder)
    return folders


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model, by name, read with safetensors."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(f))
    return state


def models_yaml(folders: list[Path], params: list[dict]) -> str:
    """A recipe's `models:` list: each folder with its parameters (a flow mapping) when it has any."""
    lines = ["models:"]
    for f, p in zip(folders, params):
        lines.append(f"  - model: {f}")
        if p:
            lines.append(f"    parameters: {p}")
    return "\n".join(lines)
