"""The Hub stand-in, driven by the real `huggingface_hub` client the way the rest of the suite uses it."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    WebhookPayload,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info
from huggingface_hub.utils import get_session
from safetensors.torch import save_file

from tests.hub_fixtures import ALICE_TOKEN, BOB_TOKEN, ORG
from tests.hub_server import HubServer, WebhookReceiver, git_oid


def status_of(err: pytest.ExceptionInfo[HfHubHTTPError]) -> int:
    return err.value.response.status_code


def write_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file bigger than the client's 100 kB header read, so that tensor data lies beyond it."""
    tensors = {
        "embed.weight": torch.arange(256 * 128, dtype=torch.float32).reshape(256, 128),
        "head.bias": torch.full((8,), 3.0, dtype=torch.float16),
    }
    save_file(tensors, path)
    return tensors


def test_whoami_and_unknown_token(hub: HubServer, alice_api: HfApi) -> None:
    me = alice_api.whoami()
    assert me["name"] == "alice" and [org["name"] for org in me["orgs"]] == [ORG]

    hub.create_repo_direct("alice/public")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_unknown").whoami()
    assert status_of(err) == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_unknown").model_info("alice/public")
    assert status_of(err) == 401 and not isinstance(err.value, RepositoryNotFoundError)


def test_create_and_delete_repos(hub: HubServer, alice_api: HfApi, bob_api: HfApi) -> None:
    url = alice_api.create_repo("alice/new-model")
    assert url == f"{hub.url}/alice/new-model" and url.repo_id == "alice/new-model"
    assert alice_api.list_repo_files("alice/new-model") == [".gitattributes"]
    with pytest.raises(HfHubHTTPError) as err:
        alice_api.create_repo("alice/new-model")
    assert status_of(err) == 409
    assert alice_api.create_repo("alice/new-model", exist_ok=True) == url

    assert alice_api.create_repo(f"{ORG}/shared", private=True).repo_id == f"{ORG}/shared"
    with pytest.raises(HfHubHTTPError) as err:
        bob_api.create_repo(f"{ORG}/bobs-model")
    assert status_of(err) == 403
    with pytest.raises(HfHubHTTPError) as err:
        bob_api.delete_repo("alice/new-model")
    assert status_of(err) == 403

    alice_api.delete_repo("alice/new-model")
    assert not alice_api.repo_exists("alice/new-model") and not hub.repo_exists("alice/new-model")
    with pytest.raises(RepositoryNotFoundError):
        alice_api.delete_repo("alice/new-model")
    alice_api.delete_repo("alice/new-model", missing_ok=True)


def test_upload_folder_then_read_it_back(hub: HubServer, alice_api: HfApi, tmp_path: Path) -> None:
    folder = tmp_path / "merged"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "README.md").write_text("---\nbase_model: alice/base\nlicense: mit\n---\n# A merge\n")
    (folder / "sub" / "notes.txt").write_text("hello")
    write_weights(folder / "model.safetensors")
    weights = (folder / "model.safetensors").read_bytes()

    alice_api.create_repo("alice/merged")
    commit = alice_api.upload_folder(repo_id="alice/merged", folder_path=folder, commit_message="Upload the merge")
    assert commit.oid == hub.head_sha("alice/merged")
    files = hub.repo_files("alice/merged")
    assert files["model.safetensors"] == weights and files["sub/notes.txt"] == b"hello"

    info = alice_api.model_info("alice/merged", files_metadata=True)
    assert info.sha == commit.oid and info.card_data.base_model == "alice/base"
    siblings = {sibling.rfilename: sibling for sibling in info.siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["config.json"].lfs is None and siblings["config.json"].blob_id == git_oid(b'{"hidden_size": 8}')

    top = {entry.path for entry in alice_api.list_repo_tree("alice/merged")}
    assert top == {".gitattributes", "README.md", "config.json", "model.safetensors", "sub"}
    assert {entry.path for entry in alice_api.list_repo_tree("alice/merged", recursive=True)} == top | {"sub/notes.txt"}
    notes, sub = alice_api.get_paths_info("alice/merged", ["sub/notes.txt", "sub", "missing.txt"], expand=True)
    assert notes.size == 5 and notes.last_commit.oid == commit.oid and sub.path == "sub"

    snapshot = Path(snapshot_download("alice/merged"))
    downloaded = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    assert downloaded == files
    assert hub.bytes_served("alice/merged") == sum(map(len, files.values()))

    hub.reset_stats()
    snapshot_download("alice/merged")
    hf_hub_download("alice/merged", "config.json")
    assert hub.bytes_served() == 0  # a warm cache fetches nothing


def test_safetensors_header_and_one_tensor_by_range(hub: HubServer, alice_api: HfApi, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    tensors = write_weights(path)
    data = path.read_bytes()
    data_start = 8 + int.from_bytes(data[:8], "little")
    hub.create_repo_direct("alice/weights", {"model.safetensors": data})

    hub.reset_stats()
    metadata = alice_api.get_safetensors_metadata("alice/weights")
    embed = metadata.files_metadata["model.safetensors"].tensors["embed.weight"]
    assert (embed.dtype, embed.shape) == ("F32", [256, 128])
    # The client reads the first 100 001 bytes whatever the header size: the counters say exactly that.
    assert hub.bytes_served() == 100_001 and hub.tensor_bytes_served() == 100_001 - data_start

    fs = HfFileSystem(token=ALICE_TOKEN)
    hub.reset_stats()
    with fs.open("alice/weights/model.safetensors", "rb", cache_type="none") as remote:
        header_size = int.from_bytes(remote.read(8), "little")
        header = json.loads(remote.read(header_size))
        assert hub.tensor_bytes_served() == 0  # reading just the header costs no tensor bytes
        begin, end = header["head.bias"]["data_offsets"]
        remote.seek(8 + header_size + begin)
        raw = remote.read(end - begin)
    assert torch.equal(torch.frombuffer(bytearray(raw), dtype=torch.float16), tensors["head.bias"])
    reads = [r for r in hub.requests("GET", repo="alice/weights") if r.file]
    assert [r.status for r in reads] == [206, 206, 206] and hub.tensor_bytes_served() == end - begin


def test_file_metadata_and_range_edges(hub: HubServer) -> None:
    weights = bytes(range(256)) * 4
    sha = hub.create_repo_direct("alice/edges", {"config.json": b'{"a": 1}', "weights.bin": weights})

    lfs = get_hf_file_metadata(hf_hub_url("alice/edges", "weights.bin"))
    assert (lfs.commit_hash, lfs.etag, lfs.size) == (sha, hashlib.sha256(weights).hexdigest(), 1024)
    regular = get_hf_file_metadata(hf_hub_url("alice/edges", "config.json", revision=sha[:7]))
    assert (regular.commit_hash, regular.etag, regular.size) == (sha, git_oid(b'{"a": 1}'), 8)

    url = hf_hub_url("alice/edges", "weights.bin")
    clamped = get_session().get(url, headers={"Range": "bytes=1000-5000"})
    assert (clamped.status_code, clamped.headers["Content-Range"]) == (206, "bytes 1000-1023/1024")
    assert clamped.content == weights[1000:]
    assert get_session().get(url, headers={"Range": "bytes=-10"}).content == weights[-10:]
    assert get_session().get(url, headers={"Range": "bytes=1024-"}).status_code == 416


def test_every_kind_of_revision(hub: HubServer, alice_api: HfApi) -> None:
    first = hub.create_repo_direct("alice/revs", {"config.json": b"v1"})
    second = hub.commit_direct("alice/revs", {"config.json": b"v2"})
    alice_api.create_tag("alice/revs", tag="v1.0", revision=first)
    alice_api.create_branch("alice/revs", branch="dev", revision=first)
    pr = alice_api.create_commit(
        "alice/revs", [CommitOperationAdd("config.json", b"v3")], commit_message="Try v3", create_pr=True
    )

    v1, v2, v3 = (b"v1", first), (b"v2", second), (b"v3", pr.oid)
    expected = {"main": v2, second: v2, second[:7]: v2, "v1.0": v1, "dev": v1, first[:10]: v1, pr.pr_revision: v3}
    for revision, (content, sha) in expected.items():
        assert Path(hf_hub_download("alice/revs", "config.json", revision=revision)).read_bytes() == content
        assert alice_api.model_info("alice/revs", revision=revision).sha == sha
        assert hub.repo_files("alice/revs", revision)["config.json"] == content

    refs = alice_api.list_repo_refs("alice/revs", include_pull_requests=True)
    assert {branch.name: branch.target_commit for branch in refs.branches} == {"main": second, "dev": first}
    assert [tag.name for tag in refs.tags] == ["v1.0"] and [p.ref for p in refs.pull_requests] == ["refs/pr/1"]
    history = alice_api.list_repo_commits("alice/revs")
    assert [c.commit_id for c in history[:2]] == [second, first] and history[-1].title == "initial commit"

    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/revs", "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/revs", "missing.json")


def test_preuploaded_shards_land_in_one_commit(hub: HubServer, alice_api: HfApi) -> None:
    before = hub.create_repo_direct("alice/sharded")
    shards = [CommitOperationAdd(f"model-0000{i}-of-00002.safetensors", bytes([i]) * 3000) for i in (1, 2)]
    for shard in shards:
        alice_api.preupload_lfs_files("alice/sharded", additions=[shard])
    assert hub.head_sha("alice/sharded") == before and hub.bytes_uploaded("alice/sharded") == 6000

    index = CommitOperationAdd("model.safetensors.index.json", b'{"weight_map": {}}')
    commit = alice_api.create_commit(
        "alice/sharded", [*shards, index], commit_message="Add shards", parent_commit=before
    )
    assert hub.bytes_uploaded("alice/sharded") == 6000  # nothing was sent twice
    assert [c.commit_id for c in alice_api.list_repo_commits("alice/sharded")][:2] == [commit.oid, before]
    files = hub.repo_files("alice/sharded")
    assert files["model-00002-of-00002.safetensors"] == bytes([2]) * 3000
    assert files["model.safetensors.index.json"] == b'{"weight_map": {}}'

    with pytest.raises(HfHubHTTPError) as err:
        alice_api.create_commit(
            "alice/sharded", [CommitOperationAdd("late.txt", b"x")], commit_message="Late", parent_commit=before
        )
    assert status_of(err) == 412


def test_delete_operations(hub: HubServer, alice_api: HfApi) -> None:
    hub.create_repo_direct("alice/cleanup", {"a.txt": b"a", "sub/b.txt": b"b", "sub/c.txt": b"c", "keep.txt": b"k"})
    alice_api.create_commit(
        "alice/cleanup", [CommitOperationDelete("a.txt"), CommitOperationDelete("sub/")], commit_message="Clean up"
    )
    assert set(hub.repo_files("alice/cleanup")) == {".gitattributes", "keep.txt"}
    with pytest.raises(EntryNotFoundError):
        alice_api.delete_file("a.txt", "alice/cleanup")


def test_lfs_upload_must_match_its_sha256(hub: HubServer) -> None:
    hub.create_repo_direct("alice/lfs")
    data = b"real weights"

    def announce() -> dict:
        actions, errors, _ = post_lfs_batch_info(
            upload_infos=[UploadInfo.from_bytes(data)], token=ALICE_TOKEN, repo_type="model", repo_id="alice/lfs"
        )
        assert not errors
        return actions[0]

    href = announce()["actions"]["upload"]["href"]
    assert get_session().put(href, content=b"fake weights").status_code == 400
    assert get_session().put(href, content=data).status_code == 200
    assert "actions" not in announce()  # already uploaded: nothing to do


def test_pull_request_from_another_user_then_merge(hub: HubServer, alice_api: HfApi, bob_api: HfApi) -> None:
    base = hub.create_repo_direct("alice/target", {"config.json": b"{}"})
    with pytest.raises(HfHubHTTPError) as err:
        bob_api.upload_file(path_or_fileobj=b"x", path_in_repo="bob.txt", repo_id="alice/target")
    assert status_of(err) == 403

    pr = bob_api.upload_file(
        path_or_fileobj=b"merged weights",
        path_in_repo="merge.bin",
        repo_id="alice/target",
        commit_message="Propose a merge",
        create_pr=True,
    )
    assert (pr.pr_num, pr.pr_revision) == (1, "refs/pr/1") and hub.head_sha("alice/target") == base
    assert hub.repo_files("alice/target", "refs/pr/1")["merge.bin"] == b"merged weights"
    details = alice_api.get_discussion_details("alice/target", 1)
    assert (details.is_pull_request, details.author, details.target_branch) == (True, "bob", "refs/heads/main")
    assert [event.type for event in details.events] == ["comment", "commit"]

    with pytest.raises(HfHubHTTPError) as err:
        bob_api.merge_pull_request("alice/target", 1)
    assert status_of(err) == 403
    alice_api.merge_pull_request("alice/target", 1)
    assert hub.repo_files("alice/target")["merge.bin"] == b"merged weights"
    details = alice_api.get_discussion_details("alice/target", 1)
    assert details.status == "merged" and details.merge_commit_oid == hub.head_sha("alice/target")


def test_discussions_and_comments(hub: HubServer, alice_api: HfApi, bob_api: HfApi) -> None:
    hub.create_repo_direct("alice/talk")
    discussion = bob_api.create_discussion("alice/talk", title="Which base model?", description="Tell me")
    comment = alice_api.comment_discussion("alice/talk", discussion.num, "The 7B one")
    assert (comment.author, comment.content) == ("alice", "The 7B one")

    [listed] = alice_api.get_repo_discussions("alice/talk")
    assert (listed.num, listed.title, listed.is_pull_request, listed.status) == (1, "Which base model?", False, "open")
    details = alice_api.get_discussion_details("alice/talk", discussion.num)
    assert [event.content for event in details.events] == ["Tell me", "The 7B one"]

    bob_api.change_discussion_status("alice/talk", discussion.num, "closed")
    assert list(alice_api.get_repo_discussions("alice/talk", discussion_status="open")) == []


def test_webhooks_are_delivered(
    hub: HubServer, alice_api: HfApi, bob_api: HfApi, webhook_receiver: WebhookReceiver
) -> None:
    old = hub.create_repo_direct("alice/watched", {"config.json": b"{}"})
    hub.create_repo_direct("alice/other")
    hook = alice_api.create_webhook(
        url=webhook_receiver.url,
        watched=[{"type": "model", "name": "alice/watched"}],
        domains=["repo", "discussion"],
        secret="s3cret",
    )
    owner_hook = alice_api.create_webhook(
        url=webhook_receiver.url, watched=[{"type": "user", "name": "alice"}], domains=["repo"]
    )
    assert {h.id for h in alice_api.list_webhooks()} == {hook.id, owner_hook.id} and bob_api.list_webhooks() == []

    commit = alice_api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id="alice/watched")
    hub.commit_direct("alice/other", {"x.txt": b"x"})
    discussion = bob_api.create_discussion("alice/watched", title="Nice merge")
    bob_api.comment_discussion("alice/watched", discussion.num, "Thanks!")

    deliveries = hub.wait_for_deliveries()
    assert all(delivery.status == 200 for delivery in deliveries)
    assert [d.payload["repo"]["name"] for d in deliveries if d.webhook_id == owner_hook.id] == [
        "alice/watched",
        "alice/other",
    ]
    received = [r for r in webhook_receiver.received if r.headers.get("x-webhook-secret") == "s3cret"]
    payloads = [WebhookPayload(**r.payload) for r in received]
    scopes = [(p.event.scope, p.event.action) for p in payloads]
    assert scopes == [("repo.content", "update"), ("discussion", "create"), ("discussion.comment", "create")]
    update = payloads[0].updatedRefs[0]
    assert (payloads[0].repo.name, update.ref, update.oldSha, update.newSha) == (
        "alice/watched",
        "refs/heads/main",
        old,
        commit.oid,
    )
    assert payloads[2].comment.content == "Thanks!" and payloads[2].discussion.num == discussion.num

    alice_api.delete_webhook(hook.id)
    alice_api.delete_webhook(owner_hook.id)
    hub.commit_direct("alice/watched", {"y.txt": b"y"})
    assert len(hub.wait_for_deliveries()) == len(deliveries)


def test_private_repos_are_invisible_to_others(hub: HubServer, alice_api: HfApi, bob_api: HfApi) -> None:
    hub.create_repo_direct(f"{ORG}/secret", {"config.json": b"{}"}, private=True)
    assert alice_api.model_info(f"{ORG}/secret").private
    assert not bob_api.repo_exists(f"{ORG}/secret") and not bob_api.file_exists(f"{ORG}/secret", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{ORG}/secret", "config.json", token=BOB_TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(f"{ORG}/secret")


def test_gated_repo_needs_access(hub: HubServer, bob_api: HfApi) -> None:
    hub.create_repo_direct("alice/gated", {"weights.bin": b"\0" * 16}, gated="auto")
    assert bob_api.model_info("alice/gated").gated == "auto" and bob_api.repo_exists("alice/gated")
    with pytest.raises(GatedRepoError):
        bob_api.file_exists("alice/gated", "weights.bin")
    with pytest.raises(GatedRepoError):
        hf_hub_download("alice/gated", "weights.bin", token=BOB_TOKEN)
    with pytest.raises(GatedRepoError) as err:
        hf_hub_download("alice/gated", "weights.bin")
    assert status_of(err) == 401

    hub.grant_access("alice/gated", "bob")
    assert Path(hf_hub_download("alice/gated", "weights.bin", token=BOB_TOKEN)).read_bytes() == b"\0" * 16


def test_503_on_the_first_head_is_retried(hub: HubServer) -> None:
    hub.create_repo_direct("alice/flaky", {"config.json": b"{}"})
    fault = hub.inject("HEAD", r"/resolve/.*/config\.json$", "status", status=503)
    assert Path(hf_hub_download("alice/flaky", "config.json")).read_bytes() == b"{}"
    assert fault.hits == 1
    assert [(r.method, r.status) for r in hub.requests(path_regex="config.json")] == [
        ("HEAD", 503),
        ("HEAD", 200),
        ("GET", 200),
    ]


def test_connection_dropped_mid_download_is_resumed(hub: HubServer) -> None:
    data = bytes(range(256)) * 40
    hub.create_repo_direct("alice/flaky", {"weights.bin": data})
    fault = hub.inject("GET", r"weights\.bin$", "drop", after_bytes=1000)
    assert Path(hf_hub_download("alice/flaky", "weights.bin")).read_bytes() == data
    first, retried = hub.requests("GET", r"weights\.bin$")
    assert fault.hits == 1 and first.bytes_sent == 1000
    # The client buffers 10 MB chunks, so a file cut before its first chunk completes is fetched again whole.
    assert (retried.range, retried.status, retried.bytes_sent) == (None, 200, len(data))
    assert hub.bytes_served("alice/flaky") == len(data) + 1000


def test_server_error_on_download_surfaces(hub: HubServer) -> None:
    hub.create_repo_direct("alice/flaky", {"weights.bin": b"\1" * 100})
    hub.inject("GET", r"weights\.bin$", "status", status=500)
    with pytest.raises(HfHubHTTPError) as err:
        hf_hub_download("alice/flaky", "weights.bin")
    assert status_of(err) == 500
    hub.clear_faults()
    assert Path(hf_hub_download("alice/flaky", "weights.bin")).read_bytes() == b"\1" * 100


def test_rate_limited_range_read_is_retried(hub: HubServer) -> None:
    data = bytes(range(256))
    hub.create_repo_direct("alice/flaky", {"weights.bin": data})
    fault = hub.inject("GET", r"weights\.bin$", "status", status=429)
    with HfFileSystem().open("alice/flaky/weights.bin", "rb", cache_type="none") as remote:
        remote.seek(10)
        assert remote.read(5) == data[10:15]
    assert fault.hits == 1


def test_slow_answer(hub: HubServer, alice_api: HfApi) -> None:
    hub.create_repo_direct("alice/slow")
    hub.inject("GET", r"^/api/models/alice/slow$", "slow", delay=0.3)
    started = time.monotonic()
    assert alice_api.model_info("alice/slow").id == "alice/slow"
    assert time.monotonic() - started >= 0.3
