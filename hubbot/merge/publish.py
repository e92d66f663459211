"""Publishing a merge to the Hub while it runs.

Each shard is uploaded (LFS pre-upload) as soon as the engine finishes it and then deleted
locally, so disk use stays near two shards whatever the model size. Nothing is visible in the
repo until one commit at the end adds the shards, index, config, tokenizer files, recipe and
card together. A merge that fails deletes the repo it created; with `create_pr` the commit
becomes a pull request on an existing repo instead.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import HubError, MergeError
from ..hub import HubOptions, check_push_target, describe, with_retries
from .engine import Progress, RunResult
from .plan import Plan
from .run import MergeOptions, merge_to_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    url: str
    commit: str
    pr_url: str | None
    run: RunResult

    def as_dict(self) -> dict:
        return {"url": self.url, "commit": self.commit, "pr_url": self.pr_url}


class _Uploader:
    """Uploads finished shards on a thread while the merge goes on; at most `depth` wait."""

    def __init__(self, api, repo_id: str, opts: HubOptions, depth: int = 1):
        from huggingface_hub import CommitOperationAdd

        self.api, self.repo_id, self.opts = api, repo_id, opts
        self.make_op = CommitOperationAdd
        self.ops: list = []
        self.error: BaseException | None = None
        self.queue: queue.Queue[Path | None] = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._loop, name="hubbot-upload", daemon=True)
        self.thread.start()

    def submit(self, path: Path) -> None:
        if self.error:
            raise self.error
        self.queue.put(path)

    def _loop(self) -> None:
        while (path := self.queue.get()) is not None:
            if self.error:
                continue
            try:
                op = self.make_op(path_in_repo=path.name, path_or_fileobj=str(path))
                with_retries(lambda: self.api.preupload_lfs_files(self.repo_id, [op]), f"uploading {path.name}",
                             self.opts, HubError)
                self.ops.append(op)
                path.unlink()
            except BaseException as exc:  # surfaced on the merge thread by submit()/finish()
                self.error = exc

    def finish(self) -> list:
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error
        return self.ops

    def abandon(self) -> None:
        """Stop after the upload in progress, skipping whatever is still queued."""
        self.error = self.error or MergeError("the merge stopped")
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def merge_and_push(
    plan: Plan,
    work_dir: Path,
    repo_id: str,
    hub: HubOptions,
    *,
    options: MergeOptions = MergeOptions(),
    private: bool = False,
    create_pr: bool = False,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    annotate: Callable[[Path], None] | None = None,
) -> Published:
    """Merge `plan` and publish it as `repo_id` with the client settings `hub`; refuse before any
    work if the token may not. `annotate(folder)` runs once the card is written, before the
    commit: it may add files or card content (a search's history: SearchHistory.annotate)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    plan.raise_for_problems()
    check_push_target(repo_id, hub)
    api = hub.api()
    exists = api.repo_exists(repo_id)
    if create_pr and not exists:
        raise HubError(f"--pr: {repo_id} does not exist yet; a pull request needs an existing repo "
                       "(drop --pr to create it)")
    created = False
    if not exists:
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
        except HfHubHTTPError as exc:
            raise HubError(describe(exc, f"creating {repo_id}")) from None
        created = True
    out = Path(work_dir) / "out"
    uploader = _Uploader(api, repo_id, hub)
    try:
        ops: list = []
        result = merge_to_folder(plan, out, options, annotate, repo_id=repo_id, progress=progress, cancel=cancel,
                                 on_shard=uploader.submit, on_written=lambda _: ops.extend(uploader.finish()))
        uploaded = {op.path_in_repo for op in ops}
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name not in uploaded and not f.name.startswith("."):
                ops.append(CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)))
        title = f"Merge {len(plan.models)} models with {plan.method.name} (hubbot)"
        oid, pr_url = _commit_once(api, repo_id, ops, title,
                                   "Recipe, sources at pinned revisions and run facts are in the model card.",
                                   create_pr, hub)
    except BaseException as exc:
        uploader.abandon()
        if created:
            _delete_quietly(api, repo_id)
        if isinstance(exc, HfHubHTTPError):
            raise HubError(describe(exc, f"publishing {repo_id}")) from None
        raise
    finally:
        shutil.rmtree(work_dir / "out", ignore_errors=True)
    return Published(url=f"{api.endpoint}/{repo_id}", commit=oid, pr_url=pr_url, run=result)


def _commit_once(api, repo_id: str, ops: list, title: str, description: str, create_pr: bool,
                 opts: HubOptions) -> tuple[str, str | None]:
    """Create the commit (or pull request) with retries, but never twice: a commit is not
    idempotent, and a 5xx or a lost answer can come after it landed. The description carries a
    marker unique to this publish; before each retry the branch head, or the newest pull
    requests, are searched for it. Returns the commit sha and the pull request URL."""
    marker = f"hubbot-publish: {uuid.uuid4().hex}"
    tried = False

    def attempt() -> tuple[str, str | None]:
        nonlocal tried
        if tried and (landed := _landed(api, repo_id, title, marker, create_pr)):
            log.info("the commit to %s had landed before its answer was lost; not committing again", repo_id)
            return landed
        tried = True
        info = api.create_commit(repo_id, ops, commit_message=title, commit_description=f"{description}\n\n{marker}",
                                 create_pr=create_pr)
        return info.oid, info.pr_url

    return with_retries(attempt, f"committing to {repo_id}", opts, HubError)


def _landed(api, repo_id: str, title: str, marker: str, create_pr: bool,
            recent: int = 5) -> tuple[str, str | None] | None:
    """The commit whose description holds `marker`, if an earlier try created it: among the
    newest commits of the main branch, or at the head of the newest pull requests titled `title`."""
    from itertools import islice

    if not create_pr:
        for commit in islice(api.list_repo_commits(repo_id), recent):
            if marker in (commit.message or ""):
                return commit.commit_id, None
        return None
    prs = (d for d in api.get_repo_discussions(repo_id, discussion_type="pull_request") if d.title == title)
    for pr in islice(prs, recent):
        head = next(iter(api.list_repo_commits(repo_id, revision=f"refs/pr/{pr.num}")), None)
        if head is not None and marker in (head.message or ""):
            return head.commit_id, pr.url
    return None


def _delete_quietly(api, repo_id: str) -> None:
    """Remove a repo this merge created, so a failure leaves nothing half-written behind."""
    try:
        api.delete_repo(repo_id)
    except Exception as exc:  # the merge error matters more; say what is left
        log.warning("could not delete %s after the failed merge (%s); delete it by hand", repo_id, exc)
