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


# Tiny models of the architectures people merge, built offline from transformers configs
# (2 layers, hidden 64): name -> (config class, its arguments, the Auto class that loads it).
# `{vocab}` in the arguments is filled with the tokenizer's size.
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=1)
_MOE = dict(_TEXT, intermediate_size=64)
CAUSAL, VISION, ENCODER = "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel"
ARCHS: dict[str, tuple[str, dict, str]] = {
    "llama3": ("LlamaConfig", dict(_TEXT, tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128}), CAUSAL),
    "mistral": ("MistralConfig", dict(_TEXT, tie_word_embeddings=False, sliding_window=None), CAUSAL),
    "qwen2": ("Qwen2Config", dict(_TEXT, tie_word_embeddings=True), CAUSAL),
    "qwen3": ("Qwen3Config", dict(_TEXT, head_dim=16, tie_word_embeddings=True), CAUSAL),
    "gemma2": ("Gemma2Config", dict(_TEXT, head_dim=16, sliding_window=32), CAUSAL),
    "gemma3": ("Gemma3TextConfig", dict(_TEXT, head_dim=16, sliding_window=32, sliding_window_pattern=2), CAUSAL),
    "phi3": ("Phi3Config", dict(_TEXT, tie_word_embeddings=False, pad_token_id=2), CAUSAL),
    "olmo2": ("Olmo2Config", dict(_TEXT, tie_word_embeddings=False, pad_token_id=2), CAUSAL),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=1),
             CAUSAL),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=256, bos_token_id=0,
                                       eos_token_id=1), CAUSAL),
    "falcon": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                    new_decoder_architecture=True, bos_token_id=0, eos_token_id=1), CAUSAL),
    "stablelm": ("StableLmConfig", dict(_TEXT), CAUSAL),
    "granite": ("GraniteConfig", dict(_TEXT, embedding_multiplier=2.0, residual_multiplier=0.5,
                                      attention_multiplier=0.25, logits_scaling=2.0), CAUSAL),
    "cohere": ("CohereConfig", dict(_TEXT, use_qk_norm=True), CAUSAL),
    "qwen3_next": ("Qwen3NextConfig", dict(_MOE, head_dim=16, layer_types=["linear_attention", "full_attention"],
                                           num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32, linear_num_value_heads=4,
                                           linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16),
                   CAUSAL),
    "mixtral": ("MixtralConfig", dict(_MOE, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False),
                CAUSAL),
    "qwen2_moe": ("Qwen2MoeConfig", dict(_MOE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=32), CAUSAL),
    "qwen3_moe": ("Qwen3MoeConfig", dict(_MOE, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=32), CAUSAL),
    "deepseek_v3": ("DeepseekV3Config", dict(_MOE, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1,
                                             num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
                                             n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16,
                                             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16), CAUSAL),
    "llava": ("LlavaConfig", dict(
        text_config={"model_type": "llama", **_TEXT}, image_token_index=3,
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                       "projection_dim": 32}), VISION),
    "qwen2_vl": ("Qwen2VLConfig", dict(
        text_config=dict(_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}, bos_token_id=0,
                         eos_token_id=1), image_token_id=3, video_token_id=4, vision_start_token_id=5,
        vision_config={"depth": 3, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2,
                       "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2}), VISION),
    "gemma3_vl": ("Gemma3Config", dict(
        text_config=dict(_TEXT, head_dim=16, sliding_window=32), mm_tokens_per_image=4, image_token_index=3,
        boi_token_index=4, eoi_token_index=5,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8}), VISION),
    "bert": ("BertConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=256), ENCODER),
}


def arch_config(name: str, vocab: int):
    import transformers

    cls, kwargs, _ = ARCHS[name]
    return getattr(transformers, cls)(vocab_size=vocab, **kwargs) if "text_config" not in kwargs else \
        getattr(transformers, cls)(**{**kwargs, "text_config": {**kwargs["text_config"], "vocab_size": vocab}})


def make_arch_family(root: Path, name: str, variants: int = 2, *, dtype: torch.dtype = torch.float32,
                     noise: float = 0.02, seed: int = 0) -> list[Path]:
    """A base and `variants` fine-tunes of the tiny `name` model of ARCHS, with a tokenizer."""
    import transformers

    root.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(root / "_tokenizer")
    torch.manual_seed(seed)
    model = getattr(transformers, ARCHS[name][2]).from_config(arch_config(name, len(tok))).to(dtype)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    folders = []
    for i in range(variants + 1):
        if i:
            gen = torch.Generator().manual_seed(seed * 1000 + i)
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if p.is_floating_point():
                        p.copy_(base_state[pname] + (torch.randn(p.shape, generator=gen) * noise).to(dtype))
        folder = root / (f"{name}-base" if i == 0 else f"{name}-ft{i}")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    return folders
