"""Hostile input: recipes, model files and command lines built to crash, hang or read the disk.

Each case goes through `hubbot validate`, a merge from the CLI and, for recipe texts, the JSON
API's /api/validate (local mode, and service mode where no local path may be read). Every
answer must be a clear error that names the problem: no traceback, no hang, no output left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from hubbot import cli
from hubbot.app.server import create_app
from hubbot.jobs.service import Service
from tests.jobkit import make_settings

SECONDS = 30  # far beyond any answer here: only a hang reaches it


class Hang(BaseException):
    """Raised in the main thread when a case runs past SECONDS (BaseException: nothing catches it)."""


@contextmanager
def within(seconds: float = SECONDS):
    def alarm(*_):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`hubbot ARGV` in this process: its exit code and everything it printed. An exception
    escaping main() is a crash and fails the test."""
    capsys.readouterr()
    with within():
        code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_clear(code: int, output: str, expect: str) -> None:
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    assert expect.lower() in output.lower(), f"expected {expect!r} in:\n{output}"


def linear(a, b) -> str:
    return f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.5}}}}\n" \
           f"  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"


def bomb(levels: int = 9, width: int = 9) -> str:
    """The 'billion laughs': each anchor a list of `width` aliases of the one before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# (id, recipe text with {a} and {b} for two good local models, what the answer must say)
RECIPES: list[tuple[str, str | bytes, str]] = [
    ("alias-bomb-top", bomb() + "merge_method: linear\nmodels: [{a}, {b}]\n", "aliases are expanded"),
    ("alias-bomb-name", bomb() + "merge_method: linear\nmodels: [{a}, {b}]\nname: *l8\n", "aliases are expanded"),
    ("alias-bomb-weight", bomb() + "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: *l8}}}}\n"
                                   "  - {b}\n", "aliases are expanded"),
    ("alias-bomb-small-in-name", bomb(3, 9) + "merge_method: linear\nmodels: [{a}, {b}]\nname: *l2\n",
     "name: expected a short text"),
    ("alias-recursive", "merge_method: linear\nmodels: [{a}, {b}]\nparameters: {{weight: &w [1, *w]}}\n",
     "alias inside the value it names"),
    ("merge-key-cycle", "merge_method: linear\nmodels: [{a}, {b}]\nparameters: &p {{<<: *p}}\n",
     "alias inside the value it names"),
    ("undefined-alias", "merge_method: linear\nmodels: [{a}, *nope]\n", "undefined alias"),
    ("brackets-20000", "[" * 20000 + "]" * 20000, "nests deeper than"),
    ("brackets-in-weight", "merge_method: linear\nmodels: [{a}, {b}]\nparameters: {{weight: " + "[" * 20000
     + "]" * 20000 + "}}\n", "nests deeper than"),
    ("flow-maps-5000", "{{a: " * 5000 + "1" + "}}" * 5000, "nests deeper than"),
    ("block-maps-300", "".join(" " * i + f"k{i}:\n" for i in range(300)), "nests deeper than"),
    ("utf16-bom", b"\xff\xfemerge_method: linear\n", "not UTF-8"),
    ("bytes-fffe", b"\xff\xfe", "not UTF-8"),
    ("bad-utf8-middle", b"merge_method: lin\xc3\x28ear\n", "not UTF-8"),
    ("nul-character", "merge_method: linear\x00\nmodels: [{a}]\n", "not valid YAML"),
    ("tab-indent", "merge_method: linear\nmodels:\n\t- {a}\n", "not valid YAML"),
    ("two-documents", "merge_method: linear\n---\nmodels: [{a}]\n", "not valid YAML"),
    ("python-tag", "merge_method: !!python/object/apply:os.system ['echo owned']\nmodels: [{a}]\n",
     "not valid YAML"),
    ("unhashable-key", "? [a, b]\n: 1\nmerge_method: linear\n", "not valid YAML"),
    ("binary-weight", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: !!binary aGk=}}}}\n"
                      "  - {b}\n", "expected a number"),
    ("weight-1e400-digits", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1" + "0" * 400
     + "}}}}\n  - {b}\n", "an integer of 401 digits is out of range"),
    ("weight-5000-digits", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: " + "9" * 5000
     + "}}}}\n  - {b}\n", "cannot be read"),
    ("weight-nan", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: .nan}}}}\n  - {b}\n",
     "nan is not a finite number"),
    ("weight-minus-inf", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: -.inf}}}}\n  - {b}\n",
     "-inf is not a finite number"),
    ("weight-1e+400", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1.0e+400}}}}\n"
                      "  - {b}\n", "1.0e+400 is out of range"),
    ("weight-1e39", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1.0e+39}}}}\n  - {b}\n",
     "out of range"),
    ("gradient-nan", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: [0, .nan, 1]}}}}\n"
                     "  - {b}\n", "weight[1]: nan is not a finite number"),
    ("filter-inf", "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: "
                   "[{{filter: mlp, value: .inf}}, {{value: 1}}]}}}}\n  - {b}\n", "value: inf is not a finite number"),
    ("slerp-t-inf", "merge_method: slerp\nbase_model: {a}\nmodels: [{a}, {b}]\nparameters: {{t: .inf}}\n",
     "parameters.t: inf is not a finite number"),
    ("seed-huge", "merge_method: linear\nmodels: [{a}, {b}]\nrandom_seed: 1" + "0" * 30 + "\n", "random_seed"),
    ("seed-nan", "merge_method: linear\nmodels: [{a}, {b}]\nrandom_seed: .nan\n", "random_seed"),
    ("pad-huge", "merge_method: linear\nmodels: [{a}, {b}]\ntokenizer: {{source: union, pad_to_multiple_of: "
                 "1000000000000}}\n", "pad_to_multiple_of"),
    ("token-id-huge", "merge_method: linear\nmodels: [{a}, {b}]\ntokenizer: {{source: union, tokens: {{x: {{source: "
                      "{{kind: model_token, model: {a}, token_id: 99999999999999}}}}}}}}\n", "token_id"),
    ("layer-range-huge", "merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 1" + "0" * 30
     + "]}}]\n", "layer_range"),
    ("method-inf", "merge_method: .inf\nmodels: [{a}, {b}]\n", "merge_method"),
    ("dtype-nan", "merge_method: linear\nmodels: [{a}, {b}]\ndtype: .nan\n", "unknown dtype"),
    ("name-list", "merge_method: linear\nmodels: [{a}, {b}]\nname: [1, 2]\n", "name: expected a short text"),
    ("top-level-list", "- merge_method: linear\n", "must be a YAML mapping"),
    ("top-level-scalar", "42\n", "must be a YAML mapping"),
    ("empty", "", "must be a YAML mapping"),
    ("too-large", "merge_method: linear\nmodels: [{a}, {b}]\n# " + "x" * 300_000 + "\n", "262144 bytes"),
    ("model-root", "merge_method: linear\nmodels: [/, {b}]\n", "not a model folder"),
    ("model-proc", "merge_method: linear\nmodels: [/proc, {b}]\n", "not a model folder"),
    ("model-file", "merge_method: linear\nmodels: [/etc/passwd, {b}]\n", "no such folder"),
    ("model-dotdot", "merge_method: linear\nmodels: [../../../../../../../../etc, {b}]\n", "not a model folder"),
    ("model-empty", "merge_method: linear\nmodels: [{{model: ''}}, {b}]\n", "expected a model reference"),
    ("model-number", "merge_method: linear\nmodels: [{{model: .nan}}, {b}]\n", "expected a model reference"),
    ("adapter-root", "merge_method: linear\nmodels: [{a}+/, {b}]\n", "not a model folder"),
]


@pytest.fixture(scope="module")
def good(families) -> tuple[Path, Path]:
    base, ft1, _ = families("llama")
    return base, ft1


def recipe_file(tmp_path: Path, text: str | bytes, good: tuple[Path, Path]) -> Path:
    path = tmp_path / "recipe.yml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{a}", str(good[0])).replace("{b}", str(good[1]))
                        .replace("{{", "{").replace("}}", "}"), encoding="utf-8", errors="surrogatepass")
    return path


def no_walk_of_the_disk(monkeypatch) -> None:
    """Listing a folder whole is how `model: /` used to walk /proc: allowed only inside tmp."""
    walk = os.walk

    def guarded(top, *args, **kwargs):
        assert "pytest" in str(top) or "tmp" in str(top), f"walked {top}"
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", guarded)


@pytest.mark.parametrize("case, text, expect", RECIPES, ids=[c[0] for c in RECIPES])
def test_recipe_through_validate_merge_and_api(case, text, expect, good, tmp_path, capsys, monkeypatch):
    no_walk_of_the_disk(monkeypatch)
    path = recipe_file(tmp_path, text, good)
    code, output = run_cli(["validate", str(path)], capsys)
    assert_clear(code, output, expect)
    out = tmp_path / "out"
    code, output = run_cli(["merge", str(path), "--out", str(out), "-q"], capsys)
    assert_clear(code, output, expect)
    assert not out.exists()

    body = path.read_bytes().decode("utf-8", "replace")
    for mode in ("local", "service"):
        client = api_client(tmp_path, mode, monkeypatch)
        with within():
            r = client.post("/api/validate", json={"recipe": body})
        assert r.status_code < 500, r.text
        answer = r.json()
        assert answer.get("ok") is not True, answer
        shown = json.dumps(answer)
        assert "Traceback" not in shown and answer.get("problems"), answer
        if mode == "local" and "UTF-8" not in expect:  # the JSON body carries text, not the file's bytes
            assert expect.lower() in shown.lower(), answer


def test_validate_reports_recipe_and_model_problems_together(good, tmp_path, capsys, monkeypatch):
    """A bad number does not hide a model that cannot be opened, and the number is quoted as written."""
    no_walk_of_the_disk(monkeypatch)
    path = recipe_file(tmp_path, "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1.0e+400}}}}\n"
                                 "  - {{model: /, parameters: {{weight: 0.5}}}}\n", good)
    code, output = run_cli(["validate", str(path)], capsys)
    assert code == 1 and "Traceback" not in output, output
    assert "weight: 1.0e+400 is out of range" in output, output
    assert "/ is not a model folder" in output, output


def api_client(tmp_path: Path, mode: str, monkeypatch) -> TestClient:
    settings = make_settings(tmp_path / mode, mode=mode, ui=False, hub_endpoint="http://127.0.0.1:9")
    if mode == "service":
        from hubbot.sources import local

        def refuse(*_args, **_kwargs):
            raise AssertionError("service mode opened a local folder")

        monkeypatch.setattr(local.LocalSource, "__init__", refuse)
    return TestClient(create_app(settings, service=Service(settings), background=False))


def evolve_request(low: str = "0", high: str = "1", seed: str = "0", sigma: str = "0.25") -> str:
    return (f"evolve:\n  budget: 4\n  seed: {seed}\n  sigma: {sigma}\n  recipe:\n    merge_method: linear\n"
            f"    models:\n      - {{{{model: {{a}}, parameters: {{{{weight: {{{{search: [{low}, {high}]}}}}}}}}}}}}\n"
            "      - {b}\neval: {{data: texts.txt}}\n")


# soup and search requests: `hubbot merge` refuses them as requests, validate and the API check them
REQUESTS: list[tuple[str, str, str]] = [
    ("evolve-range-nan", evolve_request(low=".nan"), "weight.search: expected [low, high]"),
    ("evolve-range-inf", evolve_request(high=".inf"), "weight.search: expected [low, high]"),
    ("evolve-range-400-digits", evolve_request(high="1" + "0" * 400), "weight.search: expected [low, high]"),
    ("evolve-seed-huge", evolve_request(seed="1" + "0" * 40), "evolve.seed: expected a number in"),
    ("evolve-sigma-nan", evolve_request(sigma=".nan"), "evolve.sigma: expected a number in"),
    ("evolve-bomb", bomb() + evolve_request(), "aliases are expanded"),
    ("soup-bomb-candidates", bomb() + "soup: *l8\neval: {{data: texts.txt}}\n", "aliases are expanded"),
    ("soup-max-documents-nan", "soup: [{a}, {b}]\neval: {{data: texts.txt, max_documents: .nan}}\n",
     "eval.max_documents"),
    ("moe-seed-nan", "base_model: {a}\ngate_mode: random\nexperts:\n  - {{source_model: {a}}}\n"
                     "  - {{source_model: {b}}}\nrandom_seed: .nan\n", "random_seed"),
    ("moe-top-k-inf", "base_model: {a}\ngate_mode: random\nexperts:\n  - {{source_model: {a}}}\n"
                      "  - {{source_model: {b}}}\nexperts_per_token: .inf\n", "experts_per_token"),
    ("moe-top-k-400-digits", "base_model: {a}\ngate_mode: random\nexperts:\n  - {{source_model: {a}}}\n"
                             "  - {{source_model: {b}}}\nexperts_per_token: 1" + "0" * 400 + "\n", "experts_per_token"),
]


@pytest.mark.parametrize("case, text, expect", REQUESTS, ids=[c[0] for c in REQUESTS])
def test_request_through_validate_merge_and_api(case, text, expect, good, tmp_path, capsys, monkeypatch):
    no_walk_of_the_disk(monkeypatch)
    path = recipe_file(tmp_path, text, good)
    (tmp_path / "texts.txt").write_text("the sea is calm\n")
    monkeypatch.chdir(tmp_path)
    code, output = run_cli(["validate", str(path)], capsys)
    assert_clear(code, output, expect)
    code, output = run_cli(["merge", str(path), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert_clear(code, output, expect if "bomb" in case or "moe" in case else "request")  # merge runs MoE recipes
    assert not (tmp_path / "out").exists()
    for mode in ("local", "service"):
        client = api_client(tmp_path, mode, monkeypatch)
        with within():
            answer = client.post("/api/validate", json={"recipe": path.read_text()}).json()
        assert answer.get("ok") is not True and answer.get("problems"), answer
        if mode == "local":
            assert expect.lower() in json.dumps(answer).lower(), answer


# --- model files ---------------------------------------------------------------------------

def header_of(folder: Path) -> tuple[dict, bytes]:
    raw = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors(header: object, data: bytes = b"", raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def edit(change):
    """A malformed copy of the good model's weights: `change(header, first tensor name)`."""
    def build(folder: Path) -> None:
        header, data = header_of(folder)
        change(header, first_tensor(header))
        (folder / "model.safetensors").write_bytes(safetensors(header, data))
    return build


def weights(blob: bytes):
    def build(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(blob)
    return build


def config(text: str):
    def build(folder: Path) -> None:
        (folder / "config.json").write_text(text)
    return build


def index(text: str):
    def build(folder: Path) -> None:
        (folder / "model.safetensors.index.json").write_text(text)
    return build


def shift(by: int):
    def change(header: dict, name: str) -> None:
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + by, end + by]
    return change


def set_entry(key: str, value):
    def change(header: dict, name: str) -> None:
        header[name][key] = value
    return change


def drop_entry(key: str):
    def change(header: dict, name: str) -> None:
        del header[name][key]
    return change


def overlap(header: dict, name: str) -> None:
    others = sorted((k for k in header if k not in ("__metadata__", name)), key=lambda k: header[k]["data_offsets"])
    header[others[0]]["data_offsets"] = list(header[name]["data_offsets"])
    header[others[0]]["shape"], header[others[0]]["dtype"] = header[name]["shape"], header[name]["dtype"]


def past_the_end(header: dict, name: str) -> None:
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [begin + 10_000, end + 10_000]


def swap_offsets(header: dict, name: str) -> None:
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [end, begin]


def entry_is(value):
    def change(header: dict, name: str) -> None:
        header[name] = value
    return change


def whole_header(value):
    def build(folder: Path) -> None:
        _, data = header_of(folder)
        (folder / "model.safetensors").write_bytes(safetensors(value, data))
    return build


# (id, how the bad model is made from a copy of a good one, what the answer must say)
MODELS = [
    ("header-list", whole_header([1, 2, 3]), "header is a JSON list"),
    ("header-string", whole_header("tensors"), "header is a JSON string"),
    ("header-not-json", weights(safetensors(None, raw=b"{not json")), "not valid JSON"),
    ("header-deep-json", weights(safetensors(None, raw=b"[" * 200_000 + b"]" * 200_000)), "not valid JSON"),
    ("entry-string", edit(entry_is("F32")), "header entry is a string"),
    ("entry-list", edit(entry_is([0, 8])), "header entry is a list"),
    ("entry-no-offsets", edit(drop_entry("data_offsets")), "data_offsets None is not [begin, end]"),
    ("entry-no-shape", edit(drop_entry("shape")), "shape None"),
    ("entry-no-dtype", edit(drop_entry("dtype")), "dtype None"),
    ("entry-dtype-q4", edit(set_entry("dtype", "Q4_K")), "dtype 'Q4_K'"),
    ("offsets-three", edit(set_entry("data_offsets", [0, 8, 16])), "is not [begin, end]"),
    ("offsets-negative", edit(set_entry("data_offsets", [-8, 0])), "is not [begin, end]"),
    ("offsets-strings", edit(set_entry("data_offsets", ["0", "8"])), "is not [begin, end]"),
    ("shape-negative", edit(set_entry("shape", [-1, 64])), "not a list of non-negative integers"),
    ("shape-bool", edit(set_entry("shape", [True])), "not a list of non-negative integers"),
    ("offsets-mismatch", edit(set_entry("shape", [1])), "needs"),
    ("end-before-begin", edit(swap_offsets), "end before they begin"),
    ("tensors-overlap", edit(overlap), "share bytes"),
    ("offsets-past-file", edit(past_the_end), "past the end of the file"),
    ("offsets-shifted", edit(shift(4)), "the file is damaged"),
    ("metadata-not-map", edit(lambda h, _: h.update({"__metadata__": [1]})), "__metadata__"),
    ("header-length-absurd", weights(struct.pack("<Q", 2**63) + b"{}"), "implausible"),
    ("header-length-past-file", weights(struct.pack("<Q", 4096) + b"{}"), "runs past the end of the file"),
    ("file-3-bytes", weights(b"abc"), "truncated"),
    ("file-empty", weights(b""), "model.safetensors"),
    ("config-list", config("[1, 2]"), "config.json holds a JSON list"),
    ("config-string", config('"llama"'), "config.json holds a JSON string"),
    ("config-null", config("null"), "config.json holds a JSON null"),
    ("config-not-json", config("{hidden_size: 64"), "config.json is not valid JSON"),
    ("config-deep", config("[" * 200_000 + "]" * 200_000), "config.json is not valid JSON"),
    ("index-list", index("[]"), "index.json is damaged"),
    ("index-map-list", index('{"weight_map": [1, 2]}'), "index.json is damaged"),
    ("index-outside", index('{"weight_map": {"x": "../../../../etc/passwd"}}'), "which the model does not have"),
    ("index-number", index('{"weight_map": {"x": 7}}'), "which the model does not have"),
]


@pytest.mark.parametrize("case, build, expect", MODELS, ids=[c[0] for c in MODELS])
def test_bad_model_files_through_validate_merge_and_api(case, build, expect, good, tmp_path, capsys, monkeypatch):
    no_walk_of_the_disk(monkeypatch)
    bad = Path(shutil.copytree(good[1], tmp_path / "bad-model"))
    build(bad)
    path = tmp_path / "recipe.yml"
    path.write_text(linear(good[0], bad))
    code, output = run_cli(["validate", str(path)], capsys)
    assert_clear(code, output, expect)
    assert "bad-model" in output, "the answer names the model"
    out = tmp_path / "out"
    code, output = run_cli(["merge", str(path), "--out", str(out), "-q"], capsys)
    assert_clear(code, output, expect)
    assert not out.exists()

    client = api_client(tmp_path, "local", monkeypatch)
    with within():
        answer = client.post("/api/validate", json={"recipe": path.read_text()}).json()
    assert answer["ok"] is False and expect.lower() in json.dumps(answer).lower(), answer


# --- command lines: devices and targets are checked before any work -------------------------

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("device, expect", [
    ("nonsense", "use --device cpu, cuda or cuda:N"),
    ("tpu", "use --device cpu, cuda or cuda:N"),
    ("mps", "use --device cpu, cuda or cuda:N"),
    ("cuda:x", "use --device cpu, cuda or cuda:N"),
    ("cuda:99", "CUDA device" if CUDA else "CUDA is not available"),
])
def test_merge_device_checked_first(device, expect, good, tmp_path, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr("hubbot.merge.plan.open_sources", lambda *a, **k: opened.append(a) or [])
    path = tmp_path / "recipe.yml"
    path.write_text(linear(*good))
    code, output = run_cli(["merge", str(path), "--out", str(tmp_path / "out"), "--device", device], capsys)
    assert_clear(code, output, expect)
    assert not opened, "no model was opened"


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["evolve", "soup", "evaluate", "merge"])
def test_cuda_on_a_cpu_machine_is_refused_before_any_candidate(command, good, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("the sea is calm\nthe sea is rough\n")
    template = tmp_path / "template.yml"
    template.write_text(linear(*good).replace("weight: 0.5", "weight: {search: [0, 1]}"))
    argv = {
        "evolve": ["evolve", str(template), "--budget", "4", "--out", str(tmp_path / "best"), "--eval", str(texts)],
        "soup": ["soup", "--candidates", str(good[0]), str(good[1]), "--out", str(tmp_path / "best"),
                 "--eval", str(texts)],
        "evaluate": ["evaluate", str(good[0]), "--eval", str(texts)],
        "merge": ["merge", str(template), "--out", str(tmp_path / "best")],
    }[command]
    code, output = run_cli(argv + ["--device", "cuda"], capsys)
    assert_clear(code, output, "CUDA is not available on this machine")
    assert not (tmp_path / "best").exists() and not (tmp_path / "best.search").exists()


@pytest.mark.parametrize("where, expect", [
    ("file", "is a file, not a folder"),
    ("under-file", "cannot be created"),
    ("full-folder", "already exists and is not empty"),
    ("proc", "cannot be created"),
])
def test_out_checked_before_planning(where, expect, good, tmp_path, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr("hubbot.merge.plan.open_sources", lambda *a, **k: opened.append(a) or [])
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    out = {"file": tmp_path / "a-file", "under-file": tmp_path / "a-file" / "out", "full-folder": tmp_path / "full",
           "proc": Path("/proc/hubbot-out")}[where]
    path = tmp_path / "recipe.yml"
    path.write_text(linear(*good))
    code, output = run_cli(["merge", str(path), "--out", str(out)], capsys)
    assert_clear(code, output, expect)
    assert not opened and (tmp_path / "a-file").read_text() == "keep me" and (tmp_path / "full" / "x").exists()


@pytest.mark.parametrize("env, expect", [
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "connection was refused"),
    ({"HF_ENDPOINT": "http://hub.invalid"}, "does not resolve"),
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
], ids=["refused", "dns", "offline"])
def test_push_with_an_unreachable_hub(env, expect, good, tmp_path):
    """A real `hubbot` process: the advice fits the cause, is printed once, and comes at once
    (one try, no retries), before any planning."""
    path = tmp_path / "recipe.yml"
    path.write_text(linear(*good))
    full = {**os.environ, "HF_TOKEN": "hf_canary_token_0123456789", "HF_ENDPOINT": "http://127.0.0.1:9", **env}
    out = subprocess.run([sys.executable, "-m", "hubbot.cli", "-v", "merge", str(path), "--push", "alice/x"],
                         capture_output=True, text=True, env=full, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count(expect) == 1, out.stderr
    assert "retrying" not in out.stderr and "hf_canary_token" not in out.stderr + out.stdout


@pytest.mark.parametrize("case", ["bytes", "bomb", "device"])
def test_real_processes_answer_without_a_traceback(case, good, tmp_path):
    path = tmp_path / "recipe.yml"
    extra: list[str] = []
    if case == "bytes":
        path.write_bytes(b"\xff\xfe")
    elif case == "bomb":
        path.write_text(bomb() + linear(*good))
    else:
        path.write_text(linear(*good))
        extra = ["--device", "nonsense"]
    command = ["validate", str(path)] if case != "device" else ["merge", str(path), "--out", str(tmp_path / "o")]
    out = subprocess.run([sys.executable, "-m", "hubbot.cli", *command, *extra], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: " if case != "bomb" else f"recipe {path}: invalid\nproblem: "), out.stderr
