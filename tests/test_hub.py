"""Hub round trips with the real huggingface_hub client against the local Hub stand-in:
sources read with range requests, merges published as one commit, cards, errors, faults."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import yaml

from hubbot.errors import HubError, PlanError, TransientError
from hubbot.hub import HubOptions
from hubbot.merge import engine
from hubbot.merge.plan import build
from hubbot.merge.publish import merge_and_push
from hubbot.merge.run import MergeOptions
from hubbot.recipe.merge import parse
from hubbot.sources import open_source
from tests.hub_fixtures import ALICE_TOKEN, BOB_TOKEN
from tests.models import load_state


def upload(api, folder: Path, repo_id: str, **kw) -> str:
    api.create_repo(repo_id, **kw)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id).oid


def plan_for(text: str, cache: Path, token: str | None = ALICE_TOKEN, **kw):
    opts = HubOptions(token=token, cache_dir=cache, **kw)
    return build(parse(text), opener=lambda ref: open_source(ref, hub=opts))


RECIPES = {
    "linear": "merge_method: linear\nmodels:\n  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"
              "  - {{model: {f1}, parameters: {{weight: 0.3}}}}\n  - {{model: {f2}, parameters: {{weight: 0.2}}}}\n",
    "slerp": "merge_method: slerp\nbase_model: {b}\nmodels: [{{model: {b}}}, {{model: {f1}}}]\n"
             "parameters: {{t: [0, 0.3, 1]}}\n",
    "ties": "merge_method: ties\nbase_model: {b}\nmodels:\n  - {{model: {f1}, parameters: {{weight: 0.6, density: 0.5}}}}\n"
            "  - {{model: {f2}, parameters: {{weight: 0.4, density: 0.7}}}}\n",
}


@pytest.fixture
def hub_models(hub, alice_api, families):
    base, ft1, ft2 = families("llama_sharded")
    names = ["alice/base", "alice/ft1", "merge-lab/ft2"]
    for folder, name in zip((base, ft1, ft2), names):
        upload(alice_api, folder, name)
    return (base, ft1, ft2), names


@pytest.mark.parametrize("method", ["linear", "slerp", "ties"])
def test_hub_to_hub_equals_local(hub, hub_models, tmp_path, method):
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM

    (base, ft1, ft2), names = hub_models
    hub_text = RECIPES[method].format(b=names[0], f1=names[1], f2=names[2]) + "dtype: bfloat16\n"
    local_text = RECIPES[method].format(b=base, f1=ft1, f2=ft2) + "dtype: bfloat16\n"

    plan = plan_for(hub_text, tmp_path / "cache")
    assert hub.tensor_bytes_served() == 0, "planning must read headers only"
    assert all(len(s.revision) == 40 for s in plan.sources)

    pub = merge_and_push(plan, tmp_path / "work", f"alice/merged-{method}", HubOptions(token=ALICE_TOKEN),
                         options=MergeOptions(shard_bytes=120_000))
    assert pub.commit == hub.head_sha(f"alice/merged-{method}")
    commits = [r for r in hub.requests("POST", r"/commit/") if r.repo_id == f"alice/merged-{method}"]
    assert len(commits) == 1, "one atomic commit"

    got = Path(snapshot_download(f"alice/merged-{method}", token=ALICE_TOKEN))
    want = engine.run(build(parse(local_text)), tmp_path / "local").folder
    a, b = load_state(got), load_state(want)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (got / "model.safetensors.index.json").exists() and (got / "mergekit_config.yml").read_text() == hub_text
    model = AutoModelForCausalLM.from_pretrained(got)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()

    card = (got / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == names[: len(plan.sources)] or set(meta["base_model"]) == set(names[: len(plan.sources)])
    assert meta["base_model_relation"] == "merge" and "hubbot" in meta["tags"] and method in meta["tags"]
    for s in plan.sources:
        assert f"{s.ref.path}@{s.revision}" in card, "the card pins every source"
    if method == "slerp":
        assert (got / "parameters.svg").exists() and "parameters.svg" in card


def test_warm_cache_fetches_nothing_and_bytes_are_counted(hub, hub_models, tmp_path):
    _, names = hub_models
    text = RECIPES["linear"].format(b=names[0], f1=names[1], f2=names[2])
    plan = plan_for(text, tmp_path / "cache")
    engine.run(plan, tmp_path / "a")
    first = hub.tensor_bytes_served()
    fetched = sum(s.bytes_fetched for s in plan.sources)
    assert first > 0 and fetched >= first
    assert first <= plan.input_bytes * 1.01, "each tensor is fetched once"
    hub.reset_stats()
    engine.run(plan_for(text, tmp_path / "cache"), tmp_path / "b")
    assert hub.tensor_bytes_served() == 0
    assert load_state(tmp_path / "a").keys() == load_state(tmp_path / "b").keys()


def test_disk_stays_near_two_shards(hub, hub_models, tmp_path):
    _, names = hub_models
    text = RECIPES["linear"].format(b=names[0], f1=names[1], f2=names[2])
    plan = plan_for(text, tmp_path / "cache", cache_bytes=0)
    shard = 60_000
    peak = 0

    def du(p: engine.Progress) -> None:
        nonlocal peak
        sizes = []
        for f in (tmp_path / "work").rglob("*"):
            try:  # a shard uploaded meanwhile is deleted between the listing and its stat
                sizes.append(f.stat().st_size if f.is_file() else 0)
            except FileNotFoundError:
                continue
        peak = max(peak, sum(sizes))

    merge_and_push(plan, tmp_path / "work", "alice/disk", HubOptions(token=ALICE_TOKEN),
                   options=MergeOptions(shard_bytes=shard), progress=du)
    total = plan.output_bytes
    assert total > 4 * shard, "the test needs several shards"
    assert peak <= 3 * shard, f"work dir peaked at {peak} bytes for {total} bytes of output"
    assert not any((tmp_path / "cache").rglob("*.tmp*"))


def test_retries_then_hard_failure_leaves_no_repo(hub, hub_models, tmp_path):
    _, names = hub_models
    text = RECIPES["ties"].format(b=names[0], f1=names[1], f2=names[2])
    hub.inject("GET", r"/resolve/", "status", nth=3, times=2, status=503)
    hub.inject("GET", r"/resolve/", "drop", nth=9, times=1)
    plan = plan_for(text, tmp_path / "cache", backoff=0.01)
    hub.inject("POST", r"/preupload/", "status", nth=1, times=1, status=502)
    pub = merge_and_push(plan, tmp_path / "w1", "alice/retried", HubOptions(token=ALICE_TOKEN),
                         options=MergeOptions(shard_bytes=120_000))
    assert hub.head_sha("alice/retried") == pub.commit

    hub.clear_faults()
    hub.inject("POST", r"/commit/", "status", times=None, status=500)
    with pytest.raises(TransientError, match="committing to alice/doomed: the Hub did not answer"):
        merge_and_push(plan_for(text, tmp_path / "cache2", backoff=0.01, retries=1), tmp_path / "w2",
                       "alice/doomed", HubOptions(token=ALICE_TOKEN, backoff=0.01, retries=1))
    assert not hub.repo_exists("alice/doomed")


def test_errors_name_the_model_and_the_fix(hub, hub_models, tmp_path):
    _, names = hub_models
    with pytest.raises(PlanError, match="alice/nope was not found on the Hub"):
        plan_for("merge_method: linear\nmodels: [{model: alice/nope, parameters: {weight: 1}}]\n", tmp_path)
    with pytest.raises(PlanError, match="revision does not exist"):
        plan_for(f"merge_method: linear\nmodels: [{{model: {names[0]}@v9, parameters: {{weight: 1}}}}]\n", tmp_path)
    with pytest.raises(PlanError, match="refused the token"):
        plan_for(f"merge_method: linear\nmodels: [{{model: {names[0]}, parameters: {{weight: 1}}}}]\n", tmp_path,
                 token="hf_wrong")


def test_private_and_gated_sources(hub, alice_api, families, tmp_path):
    base = families("llama")[0]
    upload(alice_api, base, "alice/secret", private=True)
    hub.create_repo_direct("merge-lab/gated", {p.name: p.read_bytes() for p in base.iterdir()}, gated="manual")
    text = "merge_method: linear\nmodels: [{model: alice/secret, parameters: {weight: 1}}]\n"
    assert plan_for(text, tmp_path).sources[0].revision
    with pytest.raises(PlanError, match="not found on the Hub"):
        plan_for(text, tmp_path, token=BOB_TOKEN)
    gated = "merge_method: linear\nmodels: [{model: merge-lab/gated, parameters: {weight: 1}}]\n"
    with pytest.raises(PlanError, match="is gated"):
        plan_for(gated, tmp_path, token=BOB_TOKEN)
    hub.grant_access("merge-lab/gated", "bob")
    plan = plan_for(gated, tmp_path / "c", token=BOB_TOKEN)
    pub = merge_and_push(plan, tmp_path / "w", "bob/from-gated", HubOptions(token=BOB_TOKEN))
    card = hub.repo_files("bob/from-gated")["README.md"].decode()
    assert "Gated sources" in card and pub.url.endswith("bob/from-gated")


def test_push_refused_before_any_work(hub, hub_models, tmp_path):
    _, names = hub_models
    plan = plan_for(RECIPES["linear"].format(b=names[0], f1=names[1], f2=names[2]), tmp_path)
    hub.reset_stats()
    with pytest.raises(HubError, match="cannot write to 'merge-lab'"):
        merge_and_push(plan, tmp_path / "w", "merge-lab/x", HubOptions(token=BOB_TOKEN))
    with pytest.raises(HubError, match="needs a Hub token"):
        merge_and_push(plan, tmp_path / "w", "alice/x", HubOptions(token=None))
    assert hub.tensor_bytes_served() == 0 and not hub.repo_exists("merge-lab/x")


def test_pull_request_on_existing_repo_and_cancel(hub, hub_models, tmp_path):
    _, names = hub_models
    text = RECIPES["linear"].format(b=names[0], f1=names[1], f2=names[2])
    first = merge_and_push(plan_for(text, tmp_path / "c"), tmp_path / "w1", "alice/prs", HubOptions(token=ALICE_TOKEN))
    remix = text.replace("weight: 0.5", "weight: 0.7")
    pr = merge_and_push(plan_for(remix, tmp_path / "c"), tmp_path / "w2", "alice/prs", HubOptions(token=ALICE_TOKEN),
                        create_pr=True)
    assert pr.pr_url and "/discussions/" in pr.pr_url
    assert hub.head_sha("alice/prs") == first.commit, "a PR leaves main alone"
    with pytest.raises(HubError, match="needs an existing repo"):
        merge_and_push(plan_for(text, tmp_path / "c"), tmp_path / "w3", "alice/new", HubOptions(token=ALICE_TOKEN),
                       create_pr=True)

    stop = threading.Event()
    stop.set()
    with pytest.raises(Exception, match="cancelled"):
        merge_and_push(plan_for(text, tmp_path / "c"), tmp_path / "w4", "alice/cancelled", HubOptions(token=ALICE_TOKEN),
                       cancel=stop)
    assert not hub.repo_exists("alice/cancelled")


def test_license_inherited_or_warned(hub, alice_api, families, tmp_path):
    base, ft1, _ = families("llama")
    for folder, name, lic in ((base, "alice/l-base", "apache-2.0"), (ft1, "alice/l-ft", "apache-2.0")):
        upload(alice_api, folder, name)
        alice_api.upload_file(path_or_fileobj=f"---\nlicense: {lic}\n---\n# x\n".encode(), path_in_repo="README.md",
                              repo_id=name)
    text = "merge_method: slerp\nbase_model: alice/l-base\nmodels: [{model: alice/l-base}, {model: alice/l-ft}]\nparameters: {t: 0.5}\n"
    merge_and_push(plan_for(text, tmp_path), tmp_path / "w", "alice/lic", HubOptions(token=ALICE_TOKEN))
    card = hub.repo_files("alice/lic")["README.md"].decode()
    assert "license: apache-2.0" in card and "do not share one license" not in card


def test_cli_push(hub, hub_models, tmp_path):
    import os
    import subprocess
    import sys

    _, names = hub_models
    recipe = tmp_path / "r.yml"
    recipe.write_text(RECIPES["slerp"].format(b=names[0], f1=names[1], f2=names[2]))
    env = {**os.environ, "HF_TOKEN": ALICE_TOKEN, "HUBBOT_CACHE_DIR": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "hubbot.cli", "merge", str(recipe)]
    out = subprocess.run(cli + ["--push", "alice/from-cli", "--private"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "published alice/from-cli" in out.stdout and hub.repo_exists("alice/from-cli")
    out = subprocess.run(cli + ["--push", "bob/not-mine"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "cannot write to 'bob'" in out.stderr and not hub.repo_exists("bob/not-mine")


def merge_commits(api, repo_id: str, revision: str | None = None) -> list:
    return [c for c in api.list_repo_commits(repo_id, revision=revision) if c.title.startswith("Merge ")]


def test_a_commit_whose_answer_was_lost_is_not_made_twice(hub, hub_models, alice_api, tmp_path):
    """The commit lands, then the connection drops before the answer: the retry finds the
    commit by its marker instead of publishing the merge a second time."""
    _, names = hub_models
    text = RECIPES["linear"].format(b=names[0], f1=names[1], f2=names[2])
    hub.inject("POST", r"/commit/", "drop", after_bytes=0)
    opts = HubOptions(token=ALICE_TOKEN, backoff=0.01)
    pub = merge_and_push(plan_for(text, tmp_path / "c"), tmp_path / "w1", "alice/once", opts)
    tries, looked = hub.requests("POST", r"alice/once/commit/"), hub.requests("GET", r"alice/once/commits/")
    assert len(tries) == 1 and looked, "the retry looked for the commit and found it"
    assert [c.commit_id for c in merge_commits(alice_api, "alice/once")] == [pub.commit]
    assert pub.commit == hub.head_sha("alice/once")

    hub.inject("POST", r"/commit/", "status", status=503)  # refused before it landed: committed again
    pub = merge_and_push(plan_for(text, tmp_path / "c"), tmp_path / "w0", "alice/twice", opts)
    assert len(hub.requests("POST", r"alice/twice/commit/")) == 2
    assert [c.commit_id for c in merge_commits(alice_api, "alice/twice")] == [pub.commit]

    hub.inject("POST", r"/commit/", "drop", after_bytes=0)
    remix = text.replace("weight: 0.5", "weight: 0.6")
    pr = merge_and_push(plan_for(remix, tmp_path / "c"), tmp_path / "w2", "alice/once", opts,
                        create_pr=True)
    prs = list(alice_api.get_repo_discussions("alice/once", discussion_type="pull_request"))
    assert len(prs) == 1 and pr.pr_url == prs[0].url
    assert [c.commit_id for c in merge_commits(alice_api, "alice/once", f"refs/pr/{prs[0].num}")][0] == pr.commit


def test_retries_only_for_failures_that_pass(hub, hub_models, tmp_path, monkeypatch):
    import httpx
    from huggingface_hub import constants, get_session

    from hubbot.errors import SourceError
    from hubbot.hub import with_retries
    from hubbot.jobs.worker import is_transient

    _, names = hub_models
    opts = HubOptions(token=ALICE_TOKEN, backoff=0.01, retries=3)
    calls = []

    def counted(fn):
        def wrapped():
            calls.append(1)
            return fn()
        return wrapped

    unreachable = (("http://127.0.0.1:9", "connection was refused"), ("http://hub.invalid", "does not resolve"))
    for endpoint, advice in unreachable:
        calls.clear()
        with pytest.raises(SourceError, match=advice):
            with_retries(counted(lambda: get_session().get(f"{endpoint}/api/models/a/b", timeout=5)), "a/b",
                         HubOptions(endpoint=endpoint, backoff=0.01, retries=3))
        assert len(calls) == 1, "an unreachable Hub is not retried"

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ReadTimeout("slow")
        return "ok"

    calls.clear()
    assert with_retries(flaky, "x", opts) == "ok" and len(calls) == 3, "timeouts are retried"

    hub.reset_stats()
    with pytest.raises(PlanError, match="not found on the Hub"):
        plan_for("merge_method: linear\nmodels: [{model: alice/nope, parameters: {weight: 1}}]\n", tmp_path,
                 backoff=0.01)
    assert len(hub.requests("GET", r"/api/models/alice/nope")) == 1, "a 404 is not retried"

    hub.inject("GET", r"/api/models/alice/base", "status", times=2, status=429)
    plan_for(f"merge_method: linear\nmodels: [{{model: {names[0]}, parameters: {{weight: 1}}}}]\n", tmp_path / "a",
             backoff=0.01)
    assert len(hub.requests("GET", r"/api/models/alice/base")) == 3, "429 is retried"

    hub.inject("GET", r"/api/models/alice/base", "status", times=None, status=503)
    hub.reset_stats()
    with pytest.raises(TransientError, match="did not answer after 2 tries") as failure:
        plan_for(f"merge_method: linear\nmodels: [{{model: {names[0]}, parameters: {{weight: 1}}}}]\n", tmp_path / "b",
                 backoff=0.01, retries=1)
    assert is_transient(failure.value), "the job service runs it again later"
    assert len(hub.requests("GET", r"/api/models/alice/base")) == 2
    hub.clear_faults()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset_stats()
    with pytest.raises(PlanError, match="HF_HUB_OFFLINE is set") as offline:
        plan_for(f"merge_method: linear\nmodels: [{{model: {names[0]}, parameters: {{weight: 1}}}}]\n", tmp_path / "d")
    assert not hub.requests("GET", r"/api/models/") and "try again later" not in str(offline.value)


def test_hub_client_warnings_are_printed_once(hub, hub_models, tmp_path):
    import os
    import subprocess
    import sys

    _, names = hub_models
    recipe = tmp_path / "r.yml"
    recipe.write_text(RECIPES["slerp"].format(b=names[0], f1=names[1], f2=names[2]))
    hub.inject("POST", r"/preupload/", "status", times=1, status=502)
    env = {**os.environ, "HF_TOKEN": ALICE_TOKEN, "HUBBOT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "hubbot.cli", "merge", str(recipe), "--push", "alice/warned"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("502") == 1, out.stderr


def test_damaged_headers_on_the_hub_are_refused_at_planning(hub, families, tmp_path):
    """The same checks as for local files, with the file's length from the range answers."""
    import json
    import struct

    base = families("llama")[0]
    files = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    raw = files["model.safetensors"]
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [begin + 64, end + 64]
    body = json.dumps(header).encode()
    hub.create_repo_direct("merge-lab/damaged", {**files, "model.safetensors": struct.pack("<Q", len(body)) + body
                                                 + raw[8 + n:]})
    hub.reset_stats()
    with pytest.raises(PlanError, match=rf"merge-lab/damaged/model.safetensors: tensor '{last}' ends at byte .* "
                                        "past the end of the file"):
        plan_for("merge_method: linear\nmodels: [{model: merge-lab/damaged, parameters: {weight: 1}}]\n", tmp_path)
    assert hub.tensor_bytes_served() == 0
