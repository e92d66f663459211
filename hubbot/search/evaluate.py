"""A small evaluator for merged models: perplexity on a text set, and a generation smoke test.

Perplexity is what greedy soups and the merge search optimise, so it must be cheap and
comparable between candidates: each document is tokenized by the model's own tokenizer (with
the BOS token first when the tokenizer has one, so a document's first token is scored too), cut
into windows of at most `max_length` tokens, and every token after a window's first is scored;
the perplexity is exp of the mean negative log-likelihood over all scored tokens.

Text sets come from a local file or a file in a Hub dataset repo, named like
`hf://datasets/org/name[@revision]/path/file.jsonl`: `.txt` (one document per non-empty
line), `.jsonl`/`.json` (a text field of each record) or `.parquet` (a text column).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import torch

from ..errors import Cancelled, EvalError
from ..recipe.request import HUB_DATA_PREFIX as HUB_PREFIX
from ..recipe.request import EvalSpec

DEFAULT_PROMPT = "Write one sentence about the sea."
FORMATS = (".txt", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class TextSet:
    """Documents to score. `name` is the spec as given; `dataset`/`revision` are set for Hub files."""

    name: str
    documents: tuple[str, ...]
    dataset: str | None = None
    revision: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "revision": self.revision, "documents": len(self.documents)}


def load_texts(spec: str, *, text_field: str = "text", max_documents: int | None = None, allow_local: bool = True,
               token: str | None = None, endpoint: str | None = None) -> TextSet:
    """Read a text set from a local file or `hf://datasets/org/name[@rev]/path` (downloaded with
    huggingface_hub from `endpoint`; `token` is used for that request only). `allow_local=False`
    (service mode) refuses local files."""
    dataset = revision = None
    if spec.startswith(HUB_PREFIX):
        dataset, revision, path = _parse_hub_spec(spec)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            local = Path(hf_hub_download(dataset, path, repo_type="dataset", revision=revision, token=token,
                                         endpoint=endpoint))
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise EvalError(f"{spec}: could not download it from the Hub ({exc.__class__.__name__}: {exc}); check "
                            "the dataset name, revision and file path, and your access to it") from None
    else:
        if not allow_local:
            raise EvalError(f"{spec}: local files are not readable in service mode; use "
                            f"{HUB_PREFIX}org/name/path/file.jsonl")
        local = Path(spec).expanduser()
        if not local.is_file():
            raise EvalError(f"{spec}: no such file; give a .txt, .jsonl, .json or .parquet file")
    docs = _read_documents(local, spec, text_field)
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        raise EvalError(f"{spec}: holds no non-empty documents")
    return TextSet(spec, tuple(docs), dataset, revision)


def _parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    parts = spec[len(HUB_PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise EvalError(f"{spec}: expected {HUB_PREFIX}org/name[@revision]/path/to/file")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", unquote(revision) or None, "/".join(parts[2:])


def _read_documents(path: Path, spec: str, field: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise EvalError(f"{spec}: unsupported file type {suffix or '(none)'}; use one of {', '.join(FORMATS)}")
    try:
        if suffix == ".txt":
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if field not in table.column_names:
                raise EvalError(f"{spec}: has no column {field!r} (columns: {', '.join(table.column_names)}); "
                                "choose one with --text-field")
            rows = table.column(field).to_pylist()
        else:
            text = path.read_text()
            rows_raw = json.loads(text) if suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
            if not isinstance(rows_raw, list):
                raise EvalError(f"{spec}: expected a JSON list of records")
            rows = [r.get(field) if isinstance(r, dict) else r for r in rows_raw]
    except (OSError, ValueError, ImportError) as exc:
        raise EvalError(f"{spec}: could not read it ({exc})") from None
    if any(r is not None and not isinstance(r, str) for r in rows):
        raise EvalError(f"{spec}: field {field!r} holds non-text values; choose a text field with --text-field")
    return [r.strip() for r in rows if r and r.strip()]


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int
    documents: int


def load_model(model: str | Path, device: str | None = None):
    """A causal LM and its tokenizer from a folder or Hub id (float32 on the CPU; no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..merge.engine import pick_device

    dev = pick_device(device)
    dtype = torch.float32 if dev.type == "cpu" else "auto"
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, trust_remote_code=False).to(dev).eval()
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"{model}: could not be loaded for evaluation ({exc})") from None
    return lm, tok


def perplexity(model, tokenizer, texts: TextSet, *, max_length: int = 512, batch_tokens: int = 4096,
               cancel: threading.Event | None = None) -> Perplexity:
    """Perplexity of a loaded model on `texts` (see the module docstring for what is scored)."""
    windows = []
    bos = tokenizer.bos_token_id
    for doc in texts.documents:
        ids = tokenizer(doc).input_ids
        if bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        for start in range(0, len(ids), max_length):
            window = ids[start:start + max_length]
            if len(window) > 1:
                windows.append(window)
    if not windows:
        raise EvalError(f"{texts.name}: every document is a single token; nothing to score")
    windows.sort(key=len, reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    done = 0
    while done < len(windows):
        size = max(1, batch_tokens // len(windows[done]))
        batch = windows[done:done + size]
        done += size
        if cancel is not None and cancel.is_set():
            raise Cancelled("the evaluation was cancelled")
        width = len(batch[0])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, w in enumerate(batch):
            ids[row, :len(w)] = torch.tensor(w)
            mask[row, :len(w)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                ignore_index=-100, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((labels != -100).sum())
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean) if mean < 700 else math.inf, mean, total_tokens, len(texts.documents))


class Scorer(Protocol):
    """What greedy soups and the merge search optimise: a model folder's score, lower is better."""

    metric: str

    def __call__(self, folder: Path) -> float: ...

    def describe(self) -> dict[str, Any]: ...


class Evaluator:
    """Scores model folders by perplexity on one text set (a Scorer)."""

    metric = "perplexity"

    def __init__(self, texts: TextSet, *, max_length: int = 512, batch_tokens: int = 4096, device: str | None = None,
                 cancel: threading.Event | None = None):
        self.texts, self.max_length, self.batch_tokens = texts, max_length, batch_tokens
        self.device, self.cancel = device, cancel

    def evaluate(self, folder: str | Path) -> Perplexity:
        model, tok = load_model(folder, self.device)
        try:
            return perplexity(model, tok, self.texts, max_length=self.max_length, batch_tokens=self.batch_tokens,
                              cancel=self.cancel)
        finally:
            del model

    def __call__(self, folder: Path) -> float:
        return self.evaluate(folder).perplexity

    def __getstate__(self) -> dict[str, Any]:
        """What travels to another process (a Ray task): everything but the local cancel event."""
        return {**self.__dict__, "cancel": None}

    def describe(self) -> dict[str, Any]:
        return {**self.texts.describe(), "max_length": self.max_length}


@dataclass(frozen=True)
class SmokeTest:
    """A short greedy generation: does the model load, run and say something?"""

    prompt: str
    output: str
    chat_template: bool
    new_tokens: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def smoke_test(model: str | Path, prompt: str = DEFAULT_PROMPT, *, max_new_tokens: int = 32,
               device: str | None = None) -> SmokeTest:
    """Generate greedily from `prompt`, wrapped in the model's chat template when it has one."""
    lm, tok = load_model(model, device)
    templated = bool(getattr(tok, "chat_template", None))
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True) if templated else prompt
    enc = tok(text, return_tensors="pt", add_special_tokens=not templated).to(lm.device)
    problems = []
    with torch.no_grad():
        if not bool(torch.isfinite(lm(**enc).logits).all()):
            problems.append("the logits on the prompt contain NaN or Inf")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    new = out[0, enc.input_ids.shape[1]:].tolist()
    if not new:
        problems.append("no tokens were generated")
    elif len(new) >= 8 and len(set(new)) == 1:
        problems.append(f"the output repeats one token ({tok.decode(new[:1])!r})")
    return SmokeTest(prompt, tok.decode(new, skip_special_tokens=True), templated, len(new), tuple(problems))


def card_eval_results(value: float, data: dict[str, Any], metric: str = "perplexity"):
    """A score as huggingface_hub EvalResult entries for a card's model-index. `data` describes
    the text set as TextSet.describe() does (name, dataset, revision)."""
    from huggingface_hub import EvalResult

    dataset = data.get("dataset") or data.get("name", "?")
    return [EvalResult(task_type="text-generation", task_name=metric.capitalize(), dataset_type=dataset,
                       dataset_name=data.get("dataset") or Path(str(data.get("name", "?"))).name,
                       dataset_revision=data.get("revision"), metric_type=metric, metric_name=metric.capitalize(),
                       metric_value=round(value, 4))]


def write_card_results(readme: Path, model_name: str, results: list) -> None:
    """Add `results` (EvalResult) to the card metadata in `readme` (created if missing),
    replacing earlier results for the same dataset and metric."""
    from huggingface_hub import ModelCard

    readme = Path(readme)
    card = ModelCard(readme.read_text() if readme.exists() else "---\n{}\n---\n")
    new_keys = {(r.dataset_type, r.metric_type) for r in results}
    kept = [r for r in (card.data.eval_results or []) if (r.dataset_type, r.metric_type) not in new_keys]
    card.data.eval_results = kept + list(results)
    card.data.model_name = card.data.model_name or model_name
    card.save(readme)


def evaluator_for(spec: EvalSpec, *, allow_local: bool = True, token: str | None = None, endpoint: str | None = None,
              device: str | None = None, cancel: threading.Event | None = None) -> Evaluator:
    """The evaluator a request or the command line asks for: its text set loaded, its options set."""
    texts = load_texts(spec.data, text_field=spec.text_field, max_documents=spec.max_documents,
                       allow_local=allow_local, token=token, endpoint=endpoint)
    return Evaluator(texts, max_length=spec.max_length, device=device, cancel=cancel)
