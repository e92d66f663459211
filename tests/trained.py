"""Tiny models trained here so that the best merge is known in advance.

A base model learns a little of two kinds of text (sentences about animals, sentences of
arithmetic); two copies of it are fine-tuned, one on each kind. Each fine-tune gets good at
its own text and forgets some of the other, so on a held-out mix of both kinds an average of
the two fine-tunes scores better than any single model: greedy soups and the merge search
must find such a merge, and an MoE of the two must route each kind to its fine-tune.
Everything is seeded; training takes a few seconds on one CPU thread.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.models import tokenizer

ANIMALS = ["cat", "dog", "fox", "owl", "horse", "mouse", "bird", "goat"]
ACTIONS = ["sleeps on", "runs to", "jumps over", "looks at", "walks past", "hides under"]
PLACES = ["the warm mat", "the old barn", "the red door", "the green hill", "the quiet river", "the tall tree"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def animal_sentence(r: random.Random) -> str:
    return f"the {r.choice(ANIMALS)} {r.choice(ACTIONS)} {r.choice(PLACES)}."


def arithmetic_sentence(r: random.Random) -> str:
    a, b = r.randrange(5), r.randrange(5)
    return f"{NUMBERS[a]} plus {NUMBERS[b]} makes {NUMBERS[a + b]}."


KINDS = {"animals": animal_sentence, "arithmetic": arithmetic_sentence}


def sentences(kind: str, n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    return [KINDS[kind](r) for _ in range(n)]


@dataclass
class Trained:
    base: Path
    tunes: dict[str, Path]  # kind -> fine-tune folder
    heldout: Path  # a .txt of held-out sentences of both kinds, one per line
    heldout_by_kind: dict[str, list[str]]


def make_trained(root: Path) -> Trained:
    from transformers import AutoModelForCausalLM, LlamaConfig

    root.mkdir(parents=True, exist_ok=True)
    train = {k: sentences(k, 200, seed) for k, seed in (("animals", 1), ("arithmetic", 2))}
    heldout = {k: sentences(k, 40, seed) for k, seed in (("animals", 11), ("arithmetic", 12))}
    tok = tokenizer(root / "_tokenizer", vocab=300, corpus=train["animals"] + train["arithmetic"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    try:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
        base = AutoModelForCausalLM.from_config(config)
        _train(base, tok, train["animals"] + train["arithmetic"], steps=40, lr=3e-3, seed=0)
        models = {"base": base}
        for i, kind in enumerate(KINDS, start=1):
            models[kind] = _train(copy.deepcopy(base), tok, train[kind], steps=100, lr=1e-3, seed=i)
    finally:
        torch.set_num_threads(threads)
    folders = {}
    for name, model in models.items():
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tok.save_pretrained(folders[name])
    mix = root / "heldout.txt"
    mix.write_text("\n".join(heldout["animals"] + heldout["arithmetic"]) + "\n")
    return Trained(folders["base"], {k: folders[k] for k in KINDS}, mix, heldout)


def _train(model, tok, docs: list[str], *, steps: int, lr: float, seed: int):
    enc = tok([tok.bos_token + d + tok.eos_token for d in docs], padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    r = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        rows = r.sample(range(len(docs)), 16)
        loss = model(input_ids=enc.input_ids[rows], attention_mask=enc.attention_mask[rows], labels=labels[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
