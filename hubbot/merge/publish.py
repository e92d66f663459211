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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import MergeError
from ..hub import HubError, HubOptions, check_push_target, describe, with_retries
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
        method = plan.method.name
        info = with_retries(lambda: api.create_commit(
            repo_id, ops, commit_message=f"Merge {len(plan.models)} models with {method} (hubbot)",
            commit_description="Recipe, sources at pinned revisions and run facts are in the model card.",
            create_pr=create_pr), f"committing to {repo_id}", hub, HubError)
    except BaseException as exc:
        uploader.abandon()
        if created:
            _delete_quietly(api, repo_id)
        if isinstance(exc, HfHubHTTPError):
            raise HubError(describe(exc, f"publishing {repo_id}")) from None
        raise
    finally:
        shutil.rmtree(work_dir / "out", ignore_errors=True)
    return Published(url=f"{api.endpoint}/{repo_id}", commit=info.oid, pr_url=info.pr_url, run=result)


def _delete_quietly(api, repo_id: str) -> None:
    """Remove a repo this merge created, so a failure leaves nothing half-written behind."""
    try:
        api.delete_repo(repo_id)
    except Exception as exc:  # the merge error matters more; say what is left
        log.warning("could not delete %s after the failed merge (%s); delete it by hand", repo_id, exc)
