"""Vocabulary alignment: one output vocabulary, and each model's embedding rows moved into it.

Planned from tokenizer files alone (`tokenizer.json`), before any weight is read. The output
vocabulary is the tokenizer of `tokenizer.source` (base: the base model, or the first model
without one; a model; or union: the base's plus every other model's added tokens), plus tokens
named under `tokenizer.tokens`. Token ids never move for the source tokenizer; new tokens get
the next ids. The output embedding has a row for every id (max id + 1, rounded up to
`pad_to_multiple_of`), so no token falls outside it, and config `vocab_size` says the same.

Each model's embedding and lm_head rows are gathered into output order. A token a model lacks
takes, as in the format's reference implementation: the recipe's rule for it
(`tokenizer.tokens`); else the row of the only model that has it; else the base model's row
when the base has it; else the mean of the rows of the models that have it; a zero row when no
model has it. A model that has a token keeps its own row unless the rule is forced. Rows past
the last token id take the model's mean token row.

A union adds the other models' *added* tokens (chat markers, tool tokens), not their regular
vocabulary: the output tokenizer keeps the source's merges, which could never produce another
model's regular pieces, and adding them as literal added tokens would change how ordinary text
is split (a piece "ab" would split "about").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..errors import SourceError
from ..recipe.merge import TokenizerSpec, TokenRule
from ..recipe.refs import ModelRef
from ..sources import Source

TOKENIZER_JSON = "tokenizer.json"
MAX_LISTED = 5


@dataclass(frozen=True)
class TokenizerVocab:
    """A tokenizer's token → id map and its added-token entries (from tokenizer.json)."""

    ids: dict[str, int]
    added: list[dict]


def read_vocab(source: Source) -> TokenizerVocab:
    if TOKENIZER_JSON not in source.files():
        raise SourceError(f"{source.label}: has no {TOKENIZER_JSON}; aligning vocabularies needs it (save the "
                          "tokenizer with a recent transformers to create one)")
    try:
        data = json.loads(source.read_file(TOKENIZER_JSON))
        vocab = data["model"].get("vocab") or {}
        added = list(data.get("added_tokens") or [])
    except (ValueError, KeyError, AttributeError) as exc:
        raise SourceError(f"{source.label}: {TOKENIZER_JSON} is damaged ({exc})") from None
    if isinstance(vocab, dict):
        ids = {str(t): int(i) for t, i in vocab.items()}
    else:  # Unigram: a list of [piece, score], the id is the position
        ids = {str(entry[0]): i for i, entry in enumerate(vocab)}
    for entry in added:
        ids[entry["content"]] = int(entry["id"])
    return TokenizerVocab(ids, added)


@dataclass(frozen=True)
class _Rule:
    """A resolved `tokenizer.tokens` rule: zero, or `row` of source `source`."""

    zero: bool
    source: int | None
    row: int
    force: bool


@dataclass
class Vocabulary:
    """The output vocabulary and, per source, the row of each output id in that source."""

    tokens: dict[str, int]
    size: int
    rows: dict[int, torch.Tensor]  # source index -> LongTensor[size], -1 where it lacks the token
    base: int | None
    added: list[dict] = field(default_factory=list)  # added-token entries new to the output tokenizer
    rules: dict[int, _Rule] = field(default_factory=dict)  # output id -> explicit rule

    def __post_init__(self) -> None:
        self.is_token = torch.zeros(self.size, dtype=torch.bool)
        self.is_token[list(self.tokens.values())] = True
        self.forced = torch.zeros(self.size, dtype=torch.bool)
        self.forced[[i for i, r in self.rules.items() if r.force]] = True

    def rule_sources(self) -> set[int]:
        return {r.source for r in self.rules.values() if r.source is not None}

    def is_identity(self, sources: list[int], rows: int) -> bool:
        """True when every source already has the output layout (nothing to move)."""
        arange = torch.arange(self.size)
        return rows == self.size and not self.forced.any() and bool(self.is_token.all()) and all(
            torch.equal(self.rows[s], arange) for s in sources)

    def align(self, sources: list[int], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each input's rows in output order (`sources[i]` is the source of `tensors[i]`), in its
        own dtype; rows that need a stand-in are computed in float32."""
        idx = torch.stack([self.rows[s] for s in sources])
        need = (~(idx >= 0).all(0) | self.forced) & self.is_token
        ids = need.nonzero().squeeze(1)
        sub = idx[:, ids]
        has = sub >= 0
        stand_in = self._stand_ins(sources, tensors, ids, sub, has)
        out = []
        for i, x in enumerate(tensors):
            y = x[idx[i].clamp(min=0)]
            use = ~has[i] | self.forced[ids]
            y[ids[use]] = stand_in[use].to(x.dtype)
            pad = ~self.is_token
            if pad.any():
                y[pad] = y[self.is_token].mean(dim=0, dtype=torch.float32).to(x.dtype)
            out.append(y)
        return out

    def _stand_ins(self, sources: list[int], tensors: list[torch.Tensor], ids: torch.Tensor,
                   sub: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """The row a model lacking each token of `ids` takes (see the module docstring)."""
        rest = tensors[0].shape[1:]
        stand_in = torch.zeros((len(ids), *rest), dtype=torch.float32)
        for i, x in enumerate(tensors):
            sel = has[i].nonzero().squeeze(1)
            stand_in[sel] += x[sub[i, sel]].float()
        stand_in /= has.sum(0).clamp(min=1).reshape(-1, *[1] * len(rest))
        if self.base in sources:
            b = sources.index(self.base)
            sel = has[b].nonzero().squeeze(1)
            stand_in[sel] = tensors[b][sub[b, sel]].float()
        position = {int(t): k for k, t in enumerate(ids)}
        for token_id, rule in self.rules.items():
            k = position.get(token_id)
            if k is None:
                continue
            if rule.zero:
                stand_in[k] = 0
            else:
                stand_in[k] = tensors[sources.index(rule.source)][rule.row].float()
        return stand_in


def build(spec: TokenizerSpec, sources: list[Source], index: dict[ModelRef, int], ref: int,
          base: int | None, embed_rows: dict[int, int]) -> tuple[Vocabulary | None, list[str], list[str]]:
    """Plan the output vocabulary. `ref` gives the tokenizer for `base` and `union`, `base` is the
    recipe's base model (whose rows win for shared tokens), `embed_rows` each source's embedding
    rows. Returns the vocabulary (None on problems), problems and warnings."""
    problems: list[str] = []
    warnings: list[str] = []
    vocabs: dict[int, TokenizerVocab] = {}
    for i, s in enumerate(sources):
        try:
            vocabs[i] = read_vocab(s)
        except SourceError as exc:
            problems.append(str(exc))
    if problems:
        return None, problems, warnings
    out = ref if spec.source in ("base", "union") else index[ModelRef.parse(spec.source)]
    tokens = dict(vocabs[out].ids)
    next_id = max(tokens.values(), default=-1) + 1
    added: list[dict] = []

    def add(entry: dict) -> None:
        nonlocal next_id
        tokens[entry["content"]] = next_id
        added.append({**entry, "id": next_id})
        next_id += 1

    if spec.source == "union":
        for i in range(len(sources)):
            if i == out:
                continue
            for entry in sorted(vocabs[i].added, key=lambda e: e["id"]):
                if entry["content"] not in tokens and entry["id"] < embed_rows[i]:
                    add(entry)
            regular = [t for t, j in vocabs[i].ids.items() if t not in tokens and j < embed_rows[i]]
            if regular:
                warnings.append(f"{sources[i].label}: {len(regular)} regular tokens of its tokenizer are not in the "
                                f"union (e.g. {regular[0]!r}); a union adds only other models' added tokens")
    for token in spec.tokens:
        if token not in tokens:
            add({"content": token, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": True, "special": False})
    size = next_id
    if spec.pad_to_multiple_of:
        size = -(-size // spec.pad_to_multiple_of) * spec.pad_to_multiple_of

    rows = {}
    for i in range(len(sources)):
        own = vocabs[i].ids
        table = torch.full((size,), -1, dtype=torch.long)
        for token, token_id in tokens.items():
            j = own.get(token)
            if j is not None and j < embed_rows[i]:
                table[token_id] = j
        rows[i] = table

    rules = {}
    for token, rule in spec.tokens.items():
        resolved = _resolve_rule(token, rule, tokens[token], vocabs, rows, index, embed_rows, sources, problems)
        if resolved is not None:
            rules[tokens[token]] = resolved
    orphans = [t for t, i in tokens.items() if i not in rules and all(rows[s][i] < 0 for s in rows)]
    if orphans:
        listed = ", ".join(repr(t) for t in orphans[:MAX_LISTED])
        warnings.append(f"{len(orphans)} tokens of the output tokenizer are in no model's embedding ({listed}); "
                        "they get zero rows unless tokenizer.tokens gives them a source")
    if problems:
        return None, problems, warnings
    return Vocabulary(tokens, size, rows, base, added, rules), problems, warnings


def _resolve_rule(token: str, rule: TokenRule, token_id: int, vocabs: dict[int, TokenizerVocab],
                  rows: dict[int, torch.Tensor], index: dict[ModelRef, int], embed_rows: dict[int, int],
                  sources: list[Source], problems: list[str]) -> _Rule | None:
    path = f"tokenizer.tokens.{token}.source"
    if rule.zero:
        return _Rule(True, None, -1, rule.force)
    if rule.model is None:
        return None
    s = index[rule.model]
    if rule.token_id is not None:
        row = rule.token_id
    elif rule.token is not None:
        row = vocabs[s].ids.get(rule.token, -1)
        if row < 0:
            problems.append(f"{path}: {sources[s].label} has no token {rule.token!r}")
            return None
    else:
        row = int(rows[s][token_id])
        if row < 0:
            problems.append(f"{path}: {sources[s].label} has no token {token!r}; name one of its tokens "
                            "with {kind: model_token, model, token}")
            return None
    if row >= embed_rows[s]:
        problems.append(f"{path}: row {row} is outside the embedding of {sources[s].label} "
                        f"({embed_rows[s]} rows)")
        return None
    return _Rule(False, s, row, rule.force)
