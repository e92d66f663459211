"""A local stand-in for the Hugging Face Hub that the real `huggingface_hub` client talks to over HTTP.

No machine running the test suite reaches the real Hub, so tests start a `HubServer` on 127.0.0.1 and point
`HF_ENDPOINT` at it (`tests/hub_fixtures.py` does the wiring). It answers the part of the Hub's HTTP API that
`huggingface_hub` 2.4 uses to read repos, upload files (regular and LFS), open and merge pull requests, discuss,
and manage webhooks, with the Hub's auth rules and typed errors (`X-Error-Code`). It also answers the Jobs API
(`run_job`, `inspect_job`, `list_jobs`, `fetch_job_logs` as server-sent events, `cancel_job`, `list_jobs_hardware`):
a job's command runs as a local subprocess (with `jobs_path` put first on its PATH, so tests can stand in for
installers such as `uv`), its secrets only in that subprocess's environment. On top of that, tests get:

- direct helpers to seed and inspect repos without going through HTTP (`create_repo_direct`, `repo_files`, ...);
- a request log with exact byte counters (`bytes_served`, `tensor_bytes_served`, `requests`, `reset_stats`);
- fault injection (`inject`: error status, dropped connection, slow answer) and real webhook deliveries.

Repos, refs and commits live in memory; file contents live on disk under `root`, addressed by sha256. A new repo
starts, as on the Hub, with one commit holding a `.gitattributes` file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path
from socketserver import TCPServer
from types import TracebackType
from typing import Any, BinaryIO, Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".npy", ".npz")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
DISCUSSIONS_PAGE_SIZE = 50
CHUNK_SIZE = 1 << 20

KEEP_ALIVE_S = 10.0  # the Jobs log stream sends a comment this often while a job is silent (the Hub: every 30 s)
CANCEL_GRACE_S = 5.0  # a cancelled job's process gets SIGTERM, then SIGKILL after this long
TERMINAL_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
# What `GET /api/jobs/hardware` lists: shaped like the Hub's answer. The figures are test data only (the first entry
# is the example in huggingface_hub's docs); the Hub's own list, with its prices, is `HfApi.list_jobs_hardware()`.
JOB_HARDWARE: tuple[dict[str, Any], ...] = (
    {"name": "cpu-basic", "prettyName": "CPU Basic", "cpu": "2 vCPU", "ram": "16 GB", "ephemeralStorage": "20 GB",
     "accelerator": None, "unitCostMicroUSD": 167, "unitCostUSD": 0.000167, "unitLabel": "minute"},
    {"name": "cpu-upgrade", "prettyName": "CPU Upgrade", "cpu": "8 vCPU", "ram": "32 GB", "ephemeralStorage": "50 GB",
     "accelerator": None, "unitCostMicroUSD": 500, "unitCostUSD": 0.0005, "unitLabel": "minute"},
    {"name": "a10g-small", "prettyName": "Nvidia A10G - small", "cpu": "4 vCPU", "ram": "15 GB",
     "ephemeralStorage": "110 GB", "accelerator": {"type": "gpu", "model": "A10G", "quantity": "1", "vram": "24 GB",
                                                   "manufacturer": "Nvidia"},
     "unitCostMicroUSD": 16667, "unitCostUSD": 0.016667, "unitLabel": "minute"},
    {"name": "a10g-large", "prettyName": "Nvidia A10G - large", "cpu": "12 vCPU", "ram": "46 GB",
     "ephemeralStorage": "200 GB", "accelerator": {"type": "gpu", "model": "A10G", "quantity": "1", "vram": "24 GB",
                                                   "manufacturer": "Nvidia"},
     "unitCostMicroUSD": 25000, "unitCostUSD": 0.025, "unitLabel": "minute"},
    {"name": "a100-large", "prettyName": "Nvidia A100 - large", "cpu": "12 vCPU", "ram": "142 GB",
     "ephemeralStorage": "1000 GB", "accelerator": {"type": "gpu", "model": "A100", "quantity": "1", "vram": "80 GB",
                                                    "manufacturer": "Nvidia"},
     "unitCostMicroUSD": 41667, "unitCostUSD": 0.041667, "unitLabel": "minute"},
)

FaultKind = Literal["status", "drop", "slow"]
Gating = Literal[False, "auto", "manual"]


def git_oid(data: bytes) -> str:
    """The git blob id of `data`: what the Hub reports as a file's `oid` / `blobId`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The pointer git stores in place of an LFS file; an LFS file's git id is the id of this pointer."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    """The server's upload-mode rule: weights, big files and binary content go to LFS, empty files never do."""
    return size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample[:512])


def _now() -> str:
    """A timestamp in the one format `huggingface_hub.utils.parse_datetime` accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _new_id() -> str:
    return uuid.uuid4().hex[:24]


def _name_id(name: str) -> str:
    """A stable object id for a user or org: webhook payloads carry ids, not names."""
    return hashlib.sha1(name.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class User:
    name: str
    token: str
    orgs: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileEntry:
    """A file in a commit: `sha256` addresses its content on disk, `oid` is its git blob id."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    @property
    def etag(self) -> str:
        """The Hub's ETag for the file, which is also the `oid` that preupload reports: sha256 for LFS files."""
        return self.sha256 if self.lfs else self.oid

    def lfs_json(self) -> dict[str, Any]:
        return {"size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]

    def json(self) -> dict[str, Any]:
        return {
            "id": self.sha,
            "title": self.title,
            "message": self.message,
            "date": self.date,
            "authors": [{"user": self.author}],
        }


@dataclass
class Discussion:
    """A discussion or, when `base_ref` is set, a pull request whose head is the ref `refs/pr/{num}`."""

    num: int
    title: str
    author: str
    status: str
    base_ref: str | None = None  # pull requests: the branch they target
    base_sha: str | None = None  # pull requests: the commit they started from, to compute what they change
    merge_commit: str | None = None
    created_at: str = field(default_factory=_now)
    events: list[dict[str, Any]] = field(default_factory=list)
    id: str = field(default_factory=_new_id)

    @property
    def is_pr(self) -> bool:
        return self.base_ref is not None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: Gating
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "refs/heads/main", "refs/tags/v1", "refs/pr/1" -> sha
    discussions: list[Discussion] = field(default_factory=list)
    granted: set[str] = field(default_factory=set)  # users let into a gated repo
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo, which commits may reference
    id: str = field(default_factory=_new_id)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


@dataclass
class Webhook:
    id: str
    owner: str
    url: str
    watched: list[dict[str, str]]
    domains: list[str]
    secret: str | None
    disabled: bool = False

    def watches(self, repo: Repo) -> bool:
        """Whether the webhook watches the repo itself or the user/org that owns it."""
        return any(
            (item["type"] == repo.repo_type and item["name"] == repo.repo_id)
            or (item["type"] in ("user", "org") and item["name"] == repo.namespace)
            for item in self.watched
        )

    def json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "owner"}, "job": None}


@dataclass
class Delivery:
    """One webhook POST the server attempted: `status` is the receiver's answer, `error` a connection failure."""

    webhook_id: str
    url: str
    payload: dict[str, Any]
    status: int | None
    error: str | None


@dataclass
class HubJob:
    """A job of the Jobs API: its spec as posted, its process, its stage and its output lines (timestamp, text).

    `secrets` reach the process's environment only: the job's JSON lists their names, never their values.
    """

    id: str
    owner: str
    owner_type: str
    spec: dict[str, Any]
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    stage: str = "SCHEDULING"
    message: str | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    stop_reason: str | None = None  # "cancel" or "timeout", once the job was told to stop
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.stage in TERMINAL_STAGES

    @property
    def command(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("arguments", [])]

    def json(self, endpoint: str) -> dict[str, Any]:
        spec = self.spec
        info: dict[str, Any] = {
            "id": self.id,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "command": spec.get("command"),
            "arguments": spec.get("arguments", []),
            "environment": spec.get("environment", {}),
            "secrets": {name: None for name in spec.get("secrets") or {}},
            "flavor": spec.get("flavor"),
            "labels": spec.get("labels"),
            "timeoutSeconds": spec.get("timeoutSeconds"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": _name_id(self.owner), "name": self.owner, "type": self.owner_type},
            "url": f"{endpoint}/jobs/{self.owner}/{self.id}",
        }
        info["spaceId" if "spaceId" in spec else "dockerImage"] = spec.get("spaceId") or spec.get("dockerImage")
        return info


@dataclass
class RequestRecord:
    """One request as the server saw it.

    Byte counters are bumped before the bytes are written to the socket, so once the client has its answer the
    record already accounts for it: tests can assert on counters right after a client call returns.
    """

    method: str
    path: str  # URL path, percent-decoded, without the query
    query: str
    range: str | None
    status: int = 0
    user: str | None = None
    repo_id: str | None = None
    file: str | None = None  # path in the repo, for file downloads
    fault: FaultKind | None = None
    bytes_sent: int = 0  # response body bytes
    bytes_received: int = 0  # request body bytes
    offset: int = 0  # downloads: first byte of the file that was sent
    data_start: int | None = None  # safetensors downloads: where tensor data begins, after the header

    @property
    def tensor_bytes(self) -> int:
        """Bytes of safetensors tensor data (as opposed to header) that this download sent."""
        if self.data_start is None:
            return 0
        return max(0, self.offset + self.bytes_sent - max(self.offset, self.data_start))


@dataclass
class Fault:
    """An injected failure, applied to matching requests number `nth` to `nth + times - 1` (`times=None`: all)."""

    method: str
    pattern: re.Pattern[str]
    kind: FaultKind
    nth: int
    times: int | None
    status: int
    delay: float
    after_bytes: int | None
    seen: int = 0  # matching requests so far
    hits: int = 0  # requests this fault was applied to

    def claim(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not self.pattern.search(path):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # when set, send `length` bytes of this file from `offset` instead of `body`
    offset: int = 0
    length: int = 0
    stream: Iterator[bytes] | None = None  # when set, send these chunks (chunked encoding) instead of `body`


def _json(obj: Any, status: int = 200, content_type: str = "application/json") -> _Response:
    return _Response(status, json.dumps(obj).encode(), {"Content-Type": content_type})


class HubError(Exception):
    """An error answer: `{"error": message}` (plus `extra` fields), and `X-Error-Code` when `code` is set."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = dict(headers or {}), dict(extra or {})

    def response(self) -> _Response:
        response = _json({"error": self.message, **self.extra}, self.status)
        response.headers.update(self.headers)
        response.headers["X-Error-Message"] = self.message.encode("ascii", "replace").decode()
        if self.code is not None:
            response.headers["X-Error-Code"] = self.code
        return response


class _Dropped(Exception):
    """Raised to close the connection without (finishing) an answer."""


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """First and last byte of a single `bytes=` range, clamped to the file; None means "send it all"."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


class _RequestBody:
    """A request body, read at most once and in chunks (plain or chunked encoding); what is left is drained."""

    def __init__(self, rfile: BinaryIO, headers: Message, record: RequestRecord) -> None:
        self._record = record
        self._chunks = self._read(rfile, headers)
        self._data: bytes | None = None

    def _read(self, rfile: BinaryIO, headers: Message) -> Iterator[bytes]:
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            while size := int(rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunk = rfile.read(size)
                rfile.readline()
                self._record.bytes_received += len(chunk)
                yield chunk
            while rfile.readline().strip():  # trailers, up to the closing empty line
                pass
            return
        left = int(headers.get("Content-Length") or 0)
        while left > 0 and (chunk := rfile.read(min(left, CHUNK_SIZE))):
            left -= len(chunk)
            self._record.bytes_received += len(chunk)
            yield chunk

    def chunks(self) -> Iterator[bytes]:
        return self._chunks

    def read(self) -> bytes:
        if self._data is None:
            self._data = b"".join(self._chunks)
        return self._data

    def drain(self) -> None:
        for _ in self._chunks:
            pass


class _BodyWriter:
    """Writes a response body, counting bytes before they leave and cutting it short where a fault says so."""

    def __init__(self, wfile: BinaryIO, record: RequestRecord, budget: int | None) -> None:
        self._wfile, self._record, self._budget = wfile, record, budget

    def write(self, data: bytes) -> None:
        cut = self._budget is not None and len(data) > self._budget
        if self._budget is not None:
            data = data[: self._budget]
            self._budget -= len(data)
        self._record.bytes_sent += len(data)
        try:
            self._wfile.write(data)
        except OSError:
            self._record.bytes_sent -= len(data)
            raise
        if cut:
            raise _Dropped


@dataclass
class _Call:
    """What an endpoint sees of a request."""

    record: RequestRecord
    user: User | None
    query: dict[str, list[str]]
    body: _RequestBody

    def json(self) -> Any:
        try:
            return json.loads(self.body.read() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def param(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]

    def flag(self, name: str) -> bool:
        return self.param(name).lower() in ("1", "true")


class _LocalHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server on a free 127.0.0.1 port, serving from a daemon thread."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup, which can stall for seconds on machines without DNS.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def serve_in_background(self, name: str) -> None:
        threading.Thread(target=self.serve_forever, args=(0.05,), name=name, daemon=True).start()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in separate writes: don't wait for delayed ACKs
    timeout = 60  # let idle keep-alive connections go
    server: _HubHTTPServer

    def _serve(self) -> None:
        self.server.hub._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the HubServer keeps its own request log."""


class _HubHTTPServer(_LocalHTTPServer):
    def __init__(self, hub: HubServer) -> None:
        super().__init__(_HubHandler)
        self.hub = hub


_Route = tuple[str, re.Pattern[str], Callable[..., _Response], bool]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HubServer:
    """The Hub stand-in. Thread-safe: one lock guards the state, file bodies stream outside it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._blob_dir = self.root / "blobs"
        self._lock = threading.RLock()
        self._httpd: _HubHTTPServer | None = None
        self._deliverer: ThreadPoolExecutor | None = None
        self._routes = self._route_table()
        self.jobs_path: list[Path] = []  # folders put first on the PATH of job commands
        self._jobs: dict[str, HubJob] = {}
        self._clear_state()

    def _clear_state(self) -> None:
        for job in getattr(self, "_jobs", {}).values():
            self._stop_job(job, "cancel", grace=0.0)
        self._jobs = {}
        self._users: dict[str, User] = {}  # by token
        self._repos: dict[tuple[str, str], Repo] = {}  # by (repo type, repo id)
        self._webhooks: dict[str, Webhook] = {}
        self._announced_uploads: dict[tuple[str, str, str], int] = {}  # (repo type, repo id, oid) -> size
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._deliveries: list[Delivery] = []
        self._queued_deliveries: list[Future[None]] = []
        self._errors: list[str] = []

    # Lifecycle

    def start(self) -> HubServer:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._httpd is None:
            self._deliverer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-webhooks")
            self._httpd = _HubHTTPServer(self)
            self._httpd.serve_in_background("hub-server")
        return self

    def stop(self) -> None:
        for job in list(self._jobs.values()):
            self._stop_job(job, "cancel", grace=0.0)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._deliverer is not None:
            self._deliverer.shutdown(wait=False, cancel_futures=True)
            self._deliverer = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return self._httpd.url

    def reset(self) -> None:
        """Forget users, repos, webhooks, faults and logs, so that the next test starts from an empty Hub."""
        try:
            self.wait_for_deliveries(timeout=5)
        except TimeoutError:
            pass
        with self._lock:
            self._clear_state()
            shutil.rmtree(self._blob_dir, ignore_errors=True)

    # Direct helpers: set up and inspect state without HTTP

    def add_user(self, name: str, token: str, orgs: Iterable[str] = ()) -> User:
        """A user owns its namespace and can write to the namespaces of its orgs."""
        user = User(name, token, tuple(orgs))
        with self._lock:
            self._users[token] = user
        return user

    def create_repo_direct(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        private: bool = False,
        gated: Gating = False,
        repo_type: str = "model",
    ) -> str:
        """Create a repo (and commit `files` to `main` if given); returns the head sha of `main`."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = self._make_repo(repo_type, repo_id, private, gated)
            return self.commit_direct(repo_id, files, repo_type=repo_type) if files else repo.refs["refs/heads/main"]

    def commit_direct(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        delete: Iterable[str] = (),
        branch: str = "main",
        message: str = "Update files",
        repo_type: str = "model",
    ) -> str:
        """Commit files (LFS or not by the upload-mode rule) and deletions to a branch, as its repo's owner."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            ref = f"refs/heads/{branch}"
            tree = dict(repo.commits[repo.refs[ref]].files)
            for path in delete:
                del tree[path]
            for path, data in (files or {}).items():
                tree[path] = self._store(data, lfs=is_lfs(path, len(data), data))
                if tree[path].lfs:
                    repo.lfs_oids.add(tree[path].sha256)
            return self._add_commit(repo, ref, repo.refs[ref], tree, message, "", repo.namespace).sha

    def grant_access(self, repo_id: str, user: str, repo_type: str = "model") -> None:
        """Let `user` download files of a gated repo."""
        with self._lock:
            self._get(repo_type, repo_id).granted.add(user)

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of the repo at `revision` (any revision the API accepts), with its content."""
        with self._lock:
            commit = self._at(self._get(repo_type, repo_id), revision)
        return {path: self._blob_path(entry.sha256).read_bytes() for path, entry in sorted(commit.files.items())}

    def head_sha(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._get(repo_type, repo_id).refs[f"refs/heads/{branch}"]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    # Observability

    def jobs(self) -> list[HubJob]:
        """The jobs run so far, oldest first (their spec, stage and output lines)."""
        with self._lock:
            return list(self._jobs.values())

    def requests(
        self, method: str | None = None, path_regex: str | None = None, repo: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests, oldest first; `path_regex` is searched in the decoded URL path."""
        with self._lock:
            return [
                record
                for record in self._log
                if (method is None or record.method == method)
                and (path_regex is None or re.search(path_regex, record.path))
                and (repo is None or record.repo_id == repo)
            ]

    def bytes_served(self, repo: str | None = None, path_suffix: str | None = None) -> int:
        """File content bytes sent by downloads (`GET .../resolve/...`), headers and API answers excluded."""
        return sum(record.bytes_sent for record in self._downloads(repo, path_suffix))

    def tensor_bytes_served(self, repo: str | None = None, path_suffix: str | None = None) -> int:
        """Like `bytes_served`, counting only tensor data of safetensors files: reading headers counts zero."""
        return sum(record.tensor_bytes for record in self._downloads(repo, path_suffix))

    def bytes_uploaded(self, repo: str | None = None) -> int:
        """LFS content bytes received by upload PUTs."""
        return sum(record.bytes_received for record in self.requests("PUT", r"^/lfs-upload/", repo))

    def _downloads(self, repo: str | None, path_suffix: str | None) -> list[RequestRecord]:
        return [
            record
            for record in self.requests("GET", repo=repo)
            if record.file is not None
            and record.status in (200, 206)
            and (path_suffix is None or record.file.endswith(path_suffix))
        ]

    def reset_stats(self) -> None:
        """Clear the request log (and so every counter)."""
        with self._lock:
            self._log.clear()

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def wait_for_deliveries(self, timeout: float = 5.0) -> list[Delivery]:
        """Wait until every queued webhook delivery has been attempted; returns all deliveries so far."""
        with self._lock:
            queued = list(self._queued_deliveries)
        if wait_for_futures(queued, timeout).not_done:
            raise TimeoutError(f"Webhook deliveries still pending after {timeout}s")
        return self.deliveries

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of exceptions raised while answering (the client saw a 500): a bug here or in a test."""
        with self._lock:
            return list(self._errors)

    # Fault injection

    def inject(
        self,
        method: str,
        path_regex: str,
        kind: FaultKind = "status",
        *,
        nth: int = 1,
        times: int | None = 1,
        status: int = 503,
        delay: float = 0.0,
        after_bytes: int | None = None,
    ) -> Fault:
        """Make matching requests fail, starting with the `nth` match, for `times` matches (None: forever).

        `method` is an HTTP method or "*"; `path_regex` is searched in the decoded URL path. Kinds:
        - "status": answer `status` (e.g. 500, 503, 429) with a JSON error;
        - "drop": close the connection with no answer or, with `after_bytes`, after that many body bytes;
        - "slow": wait `delay` seconds, then answer normally.
        When several faults match a request, the first one added that is due applies.
        """
        if kind not in ("status", "drop", "slow"):
            raise ValueError(f"Unknown fault kind: {kind}")
        fault = Fault(method.upper(), re.compile(path_regex), kind, nth, times, status, delay, after_bytes)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # Request handling

    def _handle(self, handler: _HubHandler) -> None:
        url = urlsplit(handler.path)
        record = RequestRecord(handler.command, unquote(url.path), url.query, handler.headers.get("Range"))
        body = _RequestBody(handler.rfile, handler.headers, record)
        with self._lock:
            self._log.append(record)
            fault = next((f for f in self._faults if f.claim(record.method, record.path)), None)
        budget = None
        try:
            if fault is not None:
                record.fault = fault.kind
                if fault.kind == "slow":
                    time.sleep(fault.delay)
                elif fault.kind == "status":
                    raise HubError(fault.status, f"Injected fault: {fault.status}")
                elif fault.after_bytes is None:
                    raise _Dropped
                else:
                    budget = fault.after_bytes
            response = self._route(url, record, body, handler.headers)
        except HubError as err:
            response = err.response()
        except _Dropped:
            body.drain()
            handler.close_connection = True
            return
        except Exception:
            with self._lock:
                self._errors.append(traceback.format_exc())
            response = _json({"error": "Internal error in the Hub stand-in"}, 500)
        body.drain()
        try:
            self._send(handler, record, response, budget)
        except (_Dropped, OSError):
            handler.close_connection = True

    def _route(self, url: SplitResult, record: RequestRecord, body: _RequestBody, headers: Message) -> _Response:
        user = self._authenticate(headers.get("Authorization"))
        record.user = user.name if user else None
        for method, pattern, endpoint, streams in self._routes:
            match = pattern.fullmatch(url.path) if method == record.method else None
            if match is None:
                continue
            call = _Call(record, user, parse_qs(url.query), body)
            args = {name: unquote(value) for name, value in match.groupdict().items() if value is not None}
            if streams:
                return endpoint(call, **args)
            body.read()
            with self._lock:
                return endpoint(call, **args)
        raise HubError(404, f"No such endpoint: {record.method} {record.path}")

    def _send(self, handler: _HubHandler, record: RequestRecord, response: _Response, budget: int | None) -> None:
        record.status = response.status
        handler.send_response(response.status)
        for name, value in response.headers.items():
            handler.send_header(name, value)
        if response.stream is not None:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", str(response.length if response.file else len(response.body)))
        handler.end_headers()
        if record.method == "HEAD":
            return
        writer = _BodyWriter(handler.wfile, record, budget)
        if response.stream is not None:
            for chunk in response.stream:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            writer.write(b"0\r\n\r\n")
            return
        if response.file is None:
            writer.write(response.body)
            return
        with response.file.open("rb") as blob:
            blob.seek(response.offset)
            left = response.length
            while left > 0:
                chunk = blob.read(min(left, CHUNK_SIZE))
                writer.write(chunk)
                left -= len(chunk)

    def _route_table(self) -> list[_Route]:
        api = r"/api/(?P<t>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
        files = r"/(?:(?P<t>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)"
        rev = r"(?P<rev>refs/pr/\d+|[^/]+)"  # clients quote revisions; a raw "refs/pr/N" is accepted too
        name = r"(?P<name>[^/]+)"
        hook = r"/api/settings/webhooks/(?P<hook_id>\w+)"
        jobs = r"/api/jobs/(?P<namespace>[^/]+)"
        job = rf"{jobs}/(?P<job_id>\w+)"
        table: list[tuple[str, str, Callable[..., _Response]]] = [
            ("GET", rf"{api}(?:/revision/{rev})?", self._repo_info),
            ("GET", rf"{api}/tree/{rev}(?:/(?P<path>.*))?", self._tree),
            ("POST", rf"{api}/paths-info/{rev}", self._paths_info),
            ("GET", rf"{api}/refs", self._refs),
            ("GET", rf"{api}/commits/{rev}", self._commits),
            ("POST", rf"{api}/preupload/{rev}", self._preupload),
            ("POST", rf"{api}/commit/{rev}", self._commit),
            ("POST", rf"{api}/branch/{name}", self._create_branch),
            ("DELETE", rf"{api}/branch/{name}", self._delete_branch),
            ("POST", rf"{api}/tag/{rev}", self._create_tag),
            ("DELETE", rf"{api}/tag/{name}", self._delete_tag),
            ("GET", rf"{api}/discussions", self._list_discussions),
            ("POST", rf"{api}/discussions", self._create_discussion),
            ("GET", rf"{api}/discussions/(?P<num>\d+)", self._discussion_details),
            ("POST", rf"{api}/discussions/(?P<num>\d+)/comment", self._comment),
            ("POST", rf"{api}/discussions/(?P<num>\d+)/status", self._change_status),
            ("POST", rf"{api}/discussions/(?P<num>\d+)/merge", self._merge),
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("DELETE", r"/api/repos/delete", self._delete_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", r"/api/settings/webhooks", self._list_webhooks),
            ("POST", r"/api/settings/webhooks", self._create_webhook),
            ("GET", hook, self._get_webhook),
            ("POST", hook, self._update_webhook),
            ("DELETE", hook, self._delete_webhook),
            ("POST", rf"{hook}/(?P<action>enable|disable)", self._toggle_webhook),
            ("HEAD", rf"{files}/resolve/{rev}/(?P<path>.+)", self._resolve),
            ("GET", rf"{files}/resolve/{rev}/(?P<path>.+)", self._resolve),
            ("POST", rf"{files}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("GET", r"/api/jobs/hardware", self._jobs_hardware),
            ("POST", rf"{jobs}", self._run_job),
            ("GET", rf"{jobs}", self._list_jobs),
            ("GET", rf"{job}", self._inspect_job),
            ("POST", rf"{job}/cancel", self._cancel_job),
        ]
        upload = r"/lfs-upload/(?P<t>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})"
        routes = [(method, re.compile(path), endpoint, False) for method, path, endpoint in table]
        return [
            *routes,
            ("PUT", re.compile(upload), self._lfs_upload, True),  # streams the body to disk
            ("GET", re.compile(rf"{job}/logs"), self._job_logs, True),  # streams events while the job runs
        ]

    # Auth and lookups (called with the lock held)

    def _authenticate(self, header: str | None) -> User | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        user = self._users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _user_named(self, name: str) -> User | None:
        return next((user for user in self._users.values() if user.name == name), None)

    @staticmethod
    def _can_write_namespace(user: User | None, namespace: str) -> bool:
        return user is not None and (namespace == user.name or namespace in user.orgs)

    def _can_read(self, user: User | None, repo: Repo) -> bool:
        return not repo.private or self._can_write_namespace(user, repo.namespace)

    def _can_download(self, user: User | None, repo: Repo) -> bool:
        return not repo.gated or (
            user is not None and (self._can_write_namespace(user, repo.namespace) or user.name in repo.granted)
        )

    @staticmethod
    def _require_user(call: _Call) -> User:
        if call.user is None:
            raise HubError(401, "You must be authenticated to do this")
        return call.user

    def _check_write(self, call: _Call, repo: Repo, ref: str | None = None) -> User:
        """Owners (and org members) write anywhere in a repo; a pull request's author writes to its ref."""
        user = self._require_user(call)
        if self._can_write_namespace(user, repo.namespace):
            return user
        if ref is not None and ref.startswith("refs/pr/"):
            if self._discussion(repo, ref.rsplit("/", 1)[1]).author == user.name:
                return user
        raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")

    def _get(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"No {repo_type} repo {repo_id}") from None

    def _find(self, call: _Call, t: str, repo_id: str) -> Repo:
        """The repo, if the caller may see it: missing and private-to-others look the same, as on the Hub."""
        call.record.repo_id = repo_id
        repo = self._repos.get((REPO_TYPES[t], repo_id))
        if repo is None or not self._can_read(call.user, repo):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    @staticmethod
    def _at(repo: Repo, rev: str) -> Commit:
        """Resolve a branch, tag, `refs/...` name, or full or short (7+ hex) commit sha."""
        sha = repo.refs.get(rev) or repo.refs.get(f"refs/heads/{rev}") or repo.refs.get(f"refs/tags/{rev}")
        if sha is None and re.fullmatch(r"[0-9a-f]{7,40}", rev):
            matches = [candidate for candidate in repo.commits if candidate.startswith(rev)]
            sha = matches[0] if len(matches) == 1 else None
        if sha is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[sha]

    @staticmethod
    def _branch_ref(repo: Repo, rev: str) -> str:
        """The full ref of a branch or pull request that commits can go to."""
        for ref in (rev, f"refs/heads/{rev}"):
            if ref in repo.refs and ref.startswith(("refs/heads/", "refs/pr/")):
                return ref
        raise HubError(404, f"Branch not found: {rev}", "RevisionNotFound")

    @staticmethod
    def _discussion(repo: Repo, num: str | int) -> Discussion:
        if not 0 < int(num) <= len(repo.discussions):
            raise HubError(404, f"Discussion #{num} not found in {repo.repo_id}")
        return repo.discussions[int(num) - 1]

    def _web_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # Storage

    def _blob_path(self, sha256: str) -> Path:
        return self._blob_dir / sha256[:2] / sha256

    def _store(self, data: bytes, lfs: bool) -> FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{sha256}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return FileEntry(sha256, len(data), lfs, git_oid(lfs_pointer(sha256, len(data)) if lfs else data))

    def _make_repo(self, repo_type: str, repo_id: str, private: bool, gated: Gating) -> Repo:
        repo = Repo(repo_type, repo_id, private, gated)
        files = {".gitattributes": self._store(GITATTRIBUTES, lfs=False)}
        repo.refs["refs/heads/main"] = self._new_commit(repo, None, files, "initial commit", "", repo.namespace).sha
        self._repos[(repo_type, repo_id)] = repo
        self._notify(repo, "repo", "create")
        return repo

    @staticmethod
    def _new_commit(
        repo: Repo, parent: str | None, files: dict[str, FileEntry], title: str, message: str, author: str
    ) -> Commit:
        seed = f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{title}\0{uuid.uuid4()}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, author, _now(), files)
        repo.commits[commit.sha] = commit
        return commit

    def _add_commit(
        self, repo: Repo, ref: str, parent: str, files: dict[str, FileEntry], title: str, message: str, author: str
    ) -> Commit:
        commit = self._new_commit(repo, parent, files, title, message, author)
        if ref.startswith("refs/pr/"):
            pull_request = self._discussion(repo, ref.rsplit("/", 1)[1])
            pull_request.events.append(self._event(author, "commit", {"subject": title, "oid": commit.sha}))
        self._move_ref(repo, ref, commit.sha)
        return commit

    def _move_ref(self, repo: Repo, ref: str, sha: str | None) -> None:
        """Point `ref` at `sha` (None deletes it) and tell the webhooks."""
        old = repo.refs.pop(ref, None) if sha is None else repo.refs.get(ref)
        if sha is not None:
            repo.refs[ref] = sha
        self._notify(repo, "repo.content", "update", updatedRefs=[{"ref": ref, "oldSha": old, "newSha": sha}])

    # Reading endpoints

    def _repo_info(self, call: _Call, t: str, repo: str, rev: str = "main") -> _Response:
        found = self._find(call, t, repo)
        commit = self._at(found, rev)
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if call.flag("blobs"):
                sibling |= {"size": entry.size, "blobId": entry.oid}
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, **entry.lfs_json()}
            siblings.append(sibling)
        info = {
            "_id": found.id,
            "id": found.repo_id,
            "author": found.namespace,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": found.created_at,
            "private": found.private,
            "gated": found.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if (card := self._card_data(commit)) is not None:
            info["cardData"] = card
        return _json(info)

    def _card_data(self, commit: Commit) -> dict[str, Any] | None:
        """The YAML front matter of README.md, which the Hub returns as `cardData`."""
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        match = re.match(r"---\n(.*?)\n---", self._blob_path(entry.sha256).read_text("utf-8", "replace"), re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None

    def _tree(self, call: _Call, t: str, repo: str, rev: str, path: str = "") -> _Response:
        found = self._find(call, t, repo)
        commit = self._at(found, rev)
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        below = [p for p in commit.files if p.startswith(prefix)]
        if path and not below:
            raise HubError(404, f"{path} is not a folder at {rev}", "EntryNotFound")
        files, folders = [], set()
        for p in below:
            parts = p[len(prefix) :].split("/")
            if call.flag("recursive"):
                files.append(p)
                folders.update(prefix + "/".join(parts[:depth]) for depth in range(1, len(parts)))
            elif len(parts) == 1:
                files.append(p)
            else:
                folders.add(prefix + parts[0])
        expand = call.flag("expand")
        return _json([self._path_json(found, commit, p, expand) for p in sorted(folders) + sorted(files)])

    def _paths_info(self, call: _Call, t: str, repo: str, rev: str) -> _Response:
        found = self._find(call, t, repo)
        commit = self._at(found, rev)
        form = parse_qs(call.body.read().decode())
        expand = form.get("expand", ["false"])[0].lower() == "true"
        paths = [p.strip("/") for p in form.get("paths", [])]
        present = [p for p in paths if p in commit.files or any(f.startswith(f"{p}/") for f in commit.files)]
        return _json([self._path_json(found, commit, p, expand) for p in present])

    def _path_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        entry = commit.files.get(path)
        if entry is None:
            out: dict[str, Any] = {"type": "directory", "path": path, "oid": self._folder_oid(commit, path), "size": 0}
        else:
            out = {"type": "file", "path": path, "size": entry.size, "oid": entry.oid}
            if entry.lfs:
                out["lfs"] = {"oid": entry.sha256, **entry.lfs_json()}
        if expand:
            last = self._last_commit(repo, commit, path)
            out["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return out

    @staticmethod
    def _folder_oid(commit: Commit, path: str) -> str:
        listing = "".join(f"{p}\0{e.oid}\n" for p, e in sorted(commit.files.items()) if p.startswith(f"{path}/"))
        return hashlib.sha1(listing.encode()).hexdigest()

    @staticmethod
    def _history(repo: Repo, commit: Commit) -> Iterator[Commit]:
        """The commit and its ancestors, newest first."""
        while True:
            yield commit
            if commit.parent is None:
                return
            commit = repo.commits[commit.parent]

    def _last_commit(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The newest commit that changed `path` (file or folder)."""

        def version(c: Commit) -> str:
            return c.files[path].oid if path in c.files else self._folder_oid(c, path)

        for older in islice(self._history(repo, commit), 1, None):
            if version(older) != version(commit):
                break
            commit = older
        return commit

    def _refs(self, call: _Call, t: str, repo: str) -> _Response:
        found = self._find(call, t, repo)

        def listed(prefix: str, strip: bool = True) -> list[dict[str, str]]:
            return [
                {"name": ref.removeprefix(prefix) if strip else ref, "ref": ref, "targetCommit": sha}
                for ref, sha in sorted(found.refs.items())
                if ref.startswith(prefix)
            ]

        refs = {"branches": listed("refs/heads/"), "tags": listed("refs/tags/"), "converts": []}
        if call.flag("include_prs"):
            refs["pullRequests"] = listed("refs/pr/", strip=False)
        return _json(refs)

    def _commits(self, call: _Call, t: str, repo: str, rev: str) -> _Response:
        found = self._find(call, t, repo)
        return _json([commit.json() for commit in self._history(found, self._at(found, rev))])

    def _whoami(self, call: _Call) -> _Response:
        user = self._require_user(call)
        return _json(
            {
                "type": "user",
                "id": _name_id(user.name),
                "name": user.name,
                "fullname": user.name,
                "orgs": [{"type": "org", "name": org, "id": _name_id(org)} for org in user.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": f"{user.name}-token", "role": "write"}},
            }
        )

    def _resolve(self, call: _Call, repo: str, rev: str, path: str, t: str = "models") -> _Response:
        found = self._find(call, t, repo)
        commit = self._at(found, rev)
        call.record.file = path
        headers = {"X-Repo-Commit": commit.sha}
        if not self._can_download(call.user, found):
            status = 401 if call.user is None else 403
            raise HubError(status, f"Access to {repo} is restricted: ask for access first", "GatedRepo", headers)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        headers |= {"ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
        span = _parse_range(call.record.range, entry.size)
        start, end = span or (0, entry.size - 1)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        blob = self._blob_path(entry.sha256)
        call.record.offset = start
        if path.endswith(".safetensors") and entry.size >= 8:
            with blob.open("rb") as content:
                call.record.data_start = 8 + int.from_bytes(content.read(8), "little")
        return _Response(206 if span else 200, headers=headers, file=blob, offset=start, length=end - start + 1)

    # Writing endpoints

    @staticmethod
    def _repo_type(body: dict[str, Any]) -> str:
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Unknown repo type: {repo_type}")
        return repo_type

    def _create_repo(self, call: _Call) -> _Response:
        user = self._require_user(call)
        body = call.json()
        namespace, repo_type = body.get("organization") or user.name, self._repo_type(body)
        if not self._can_write_namespace(user, namespace):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = self._make_repo(repo_type, repo_id, private, gated=False)
        return _json({"url": url, "name": repo_id, "id": repo.id})

    def _delete_repo(self, call: _Call) -> _Response:
        body = call.json()
        namespace = body.get("organization") or self._require_user(call).name
        repo = self._find(call, f"{self._repo_type(body)}s", f"{namespace}/{body['name']}")
        self._check_write(call, repo)
        del self._repos[(repo.repo_type, repo.repo_id)]
        self._notify(repo, "repo", "delete")
        return _json({})

    def _validate_yaml(self, call: _Call) -> _Response:
        return _json({"errors": [], "warnings": []})

    def _preupload(self, call: _Call, t: str, repo: str, rev: str) -> _Response:
        found = self._find(call, t, repo)
        if call.flag("create_pr"):
            self._require_user(call)  # anyone who can see a repo may open a pull request on it
        else:
            self._check_write(call, found, self._branch_ref(found, rev))
        commit = self._at(found, rev)
        answers = []
        for item in call.json().get("files", []):
            lfs = is_lfs(item["path"], item["size"], base64.b64decode(item.get("sample", "")))
            answer = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if (existing := commit.files.get(item["path"])) is not None:
                answer["oid"] = existing.etag  # lets the client skip files that did not change
            answers.append(answer)
        return _json({"files": answers, "commitOid": commit.sha})

    def _lfs_batch(self, call: _Call, repo: str, t: str = "models") -> _Response:
        found = self._find(call, t, repo)
        self._require_user(call)
        body = call.json()
        if body.get("operation") != "upload":
            raise HubError(400, "Only LFS uploads are supported: download files through /resolve")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                raise HubError(400, f"Invalid LFS oid: {oid}")
            item: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in found.lfs_oids:  # no actions: the object is already there
                self._announced_uploads[(found.repo_type, found.repo_id, oid)] = size
                item["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{t}/{found.repo_id}/{oid}"}}
            objects.append(item)
        answer = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _json(answer, content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, call: _Call, t: str, repo: str, oid: str) -> _Response:
        """Receive an announced LFS object, streaming it to disk; it must match its sha256 and size."""
        call.record.repo_id = repo
        key = (REPO_TYPES[t], repo, oid)
        with self._lock:
            size = self._announced_uploads.get(key)
        if size is None:
            raise HubError(404, f"No upload of {oid} was announced for {repo}")
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._blob_dir / f"upload-{uuid.uuid4().hex}.tmp"
        digest, received = hashlib.sha256(), 0
        with tmp.open("wb") as out:
            for chunk in call.body.chunks():
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        if received != size or digest.hexdigest() != oid:
            tmp.unlink()
            raise HubError(400, f"Uploaded content does not match sha256 {oid} and size {size}")
        self._blob_path(oid).parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(self._blob_path(oid))
        with self._lock:  # the announcement stays: a commit listing the same file twice uploads it twice
            if (target := self._repos.get(key[:2])) is not None:
                target.lfs_oids.add(oid)
        return _Response(200)

    def _commit(self, call: _Call, t: str, repo: str, rev: str) -> _Response:
        found = self._find(call, t, repo)
        user = self._require_user(call)
        try:
            lines = [json.loads(line) for line in call.body.read().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if header is None:
            raise HubError(400, "The commit payload has no header line")
        operations = [line for line in lines if line.get("key") != "header"]
        parent_sha = header.get("parentCommit")
        title, message = header.get("summary", ""), header.get("description", "")
        pr_url = None
        if call.flag("create_pr"):
            base_ref = self._branch_ref(found, rev)
            base = self._at(found, parent_sha) if parent_sha else found.commits[found.refs[base_ref]]
            files = self._apply(found, base.files, operations)
            pull_request = self._open_discussion(found, user.name, title, message, "open", base_ref, base.sha)
            ref, parent = f"refs/pr/{pull_request.num}", base.sha
            pr_url = f"{self._web_url(found)}/discussions/{pull_request.num}"
        else:
            ref = self._branch_ref(found, rev)
            self._check_write(call, found, ref)
            parent = found.refs[ref]
            if parent_sha and not parent.startswith(parent_sha):
                raise HubError(412, f"Parent commit {parent_sha} is not the head of {rev} ({parent})")
            files = self._apply(found, found.commits[parent].files, operations)
        commit = self._add_commit(found, ref, parent, files, title, message, user.name)
        out = {"success": True, "commitOid": commit.sha, "commitUrl": f"{self._web_url(found)}/commit/{commit.sha}"}
        return _json(out | ({"pullRequestUrl": pr_url} if pr_url else {}))

    def _apply(self, repo: Repo, files: dict[str, FileEntry], operations: list[dict[str, Any]]) -> dict[str, FileEntry]:
        """The tree after the commit's operations, or an error that leaves the repo untouched."""
        tree = dict(files)
        for operation in operations:
            key, value = operation.get("key"), operation.get("value", {})
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"Invalid path in repo: {path!r}")
            if key == "file":
                encoded = value["content"]
                data = base64.b64decode(encoded) if value.get("encoding") == "base64" else encoded.encode()
                tree[path] = self._store(data, lfs=False)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in repo.lfs_oids:
                    raise HubError(422, f"LFS object {oid} for {path} was never uploaded to {repo.repo_id}")
                size = self._blob_path(oid).stat().st_size
                if value.get("size", size) != size:
                    raise HubError(422, f"LFS object {oid} has size {size}, not {value['size']}")
                tree[path] = FileEntry(oid, size, True, git_oid(lfs_pointer(oid, size)))
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in tree if p.startswith(path.rstrip("/") + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del tree[p]
            else:
                raise HubError(400, f"Unsupported commit operation: {key}")
        return tree

    def _create_branch(self, call: _Call, t: str, repo: str, name: str) -> _Response:
        found = self._find(call, t, repo)
        self._check_write(call, found)
        if f"refs/heads/{name}" in found.refs:
            raise HubError(409, f"Branch {name} already exists")
        start = self._at(found, call.json().get("startingPoint") or "main")
        self._move_ref(found, f"refs/heads/{name}", start.sha)
        return _json({})

    def _delete_branch(self, call: _Call, t: str, repo: str, name: str) -> _Response:
        found = self._find(call, t, repo)
        self._check_write(call, found)
        if name == "main":
            raise HubError(403, "The default branch cannot be deleted")
        if f"refs/heads/{name}" not in found.refs:
            raise HubError(404, f"Branch not found: {name}", "RevisionNotFound")
        self._move_ref(found, f"refs/heads/{name}", None)
        return _json({})

    def _create_tag(self, call: _Call, t: str, repo: str, rev: str) -> _Response:
        found = self._find(call, t, repo)
        self._check_write(call, found)
        tag = call.json().get("tag", "")
        if not tag or f"refs/tags/{tag}" in found.refs:
            raise HubError(409, f"Tag {tag!r} already exists or is invalid")
        self._move_ref(found, f"refs/tags/{tag}", self._at(found, rev).sha)
        return _json({})

    def _delete_tag(self, call: _Call, t: str, repo: str, name: str) -> _Response:
        found = self._find(call, t, repo)
        self._check_write(call, found)
        if f"refs/tags/{name}" not in found.refs:
            raise HubError(404, f"Tag not found: {name}", "RevisionNotFound")
        self._move_ref(found, f"refs/tags/{name}", None)
        return _json({})

    # Discussions and pull requests

    @staticmethod
    def _event(author: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"id": _new_id(), "type": kind, "createdAt": _now(), "author": {"name": author}, "data": data}

    def _open_discussion(
        self,
        repo: Repo,
        author: str,
        title: str,
        description: str,
        status: str = "open",
        base_ref: str | None = None,
        base_sha: str | None = None,
    ) -> Discussion:
        """Open a discussion, or a pull request (with its `refs/pr/N` at `base_sha`) when `base_ref` is given."""
        discussion = Discussion(len(repo.discussions) + 1, title, author, status, base_ref, base_sha)
        discussion.events.append(self._comment_event(author, description))
        repo.discussions.append(discussion)
        if base_sha is not None:
            repo.refs[f"refs/pr/{discussion.num}"] = base_sha
        self._notify(repo, "discussion", "create", discussion=self._discussion_payload(repo, discussion))
        return discussion

    def _comment_event(self, author: str, text: str) -> dict[str, Any]:
        latest = {"raw": text, "html": text, "updatedAt": _now(), "author": {"name": author}}
        return self._event(author, "comment", {"edited": False, "hidden": False, "numEdits": 0, "latest": latest})

    def _post_comment(self, repo: Repo, discussion: Discussion, author: str, text: str) -> dict[str, Any]:
        event = self._comment_event(author, text)
        discussion.events.append(event)
        comment = {
            "id": event["id"],
            "author": {"id": _name_id(author)},
            "hidden": False,
            "content": text,
            "url": {"web": f"{self._web_url(repo)}/discussions/{discussion.num}#{event['id']}"},
        }
        self._notify(
            repo,
            "discussion.comment",
            "create",
            discussion=self._discussion_payload(repo, discussion),
            comment=comment,
        )
        return event

    def _set_status(self, repo: Repo, discussion: Discussion, author: str, status: str) -> dict[str, Any]:
        discussion.status = status
        event = self._event(author, "status-change", {"status": status})
        discussion.events.append(event)
        self._notify(repo, "discussion", "update", discussion=self._discussion_payload(repo, discussion))
        return event

    def _pr_changes(self, repo: Repo, pull_request: Discussion) -> tuple[dict[str, FileEntry | None], list[str]]:
        """What the PR changes since it started (None: deleted), and the files its target changed differently."""
        assert pull_request.base_ref is not None and pull_request.base_sha is not None
        start = repo.commits[pull_request.base_sha].files
        head = repo.commits[repo.refs[f"refs/pr/{pull_request.num}"]].files
        target = repo.commits[repo.refs[pull_request.base_ref]].files
        changes = {p: head.get(p) for p in start.keys() | head.keys() if start.get(p) != head.get(p)}
        conflicts = sorted(p for p, new in changes.items() if target.get(p) not in (start.get(p), new))
        return changes, conflicts

    def _discussion_json(self, repo: Repo, discussion: Discussion, details: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num": discussion.num,
            "title": discussion.title,
            "status": discussion.status,
            "createdAt": discussion.created_at,
            "isPullRequest": discussion.is_pr,
            "author": {"name": discussion.author},
            "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "pinned": False,
            "numComments": sum(event["type"] == "comment" for event in discussion.events),
        }
        if details:
            out["events"] = discussion.events
            out["filesWithConflicts"] = self._pr_changes(repo, discussion)[1] if discussion.is_pr else []
            if discussion.is_pr:
                out["changes"] = {"base": discussion.base_ref, "mergeCommitId": discussion.merge_commit}
        return out

    def _discussion_payload(self, repo: Repo, discussion: Discussion) -> dict[str, Any]:
        web = f"{self._web_url(repo)}/discussions/{discussion.num}"
        payload: dict[str, Any] = {
            "id": discussion.id,
            "num": discussion.num,
            "author": {"id": _name_id(discussion.author)},
            "url": {"web": web, "api": f"{self.url}/api/{repo.repo_type}s/{repo.repo_id}/discussions/{discussion.num}"},
            "title": discussion.title,
            "isPullRequest": discussion.is_pr,
            "status": discussion.status,
            "pinned": False,
        }
        if discussion.is_pr:
            payload["changes"] = {"base": discussion.base_ref, "mergeCommitId": discussion.merge_commit}
        return payload

    def _list_discussions(self, call: _Call, t: str, repo: str) -> _Response:
        found = self._find(call, t, repo)
        kind, status, author = call.param("type", "all"), call.param("status", "all"), call.param("author")
        listed = [
            d
            for d in reversed(found.discussions)
            if (kind == "all" or d.is_pr == (kind == "pull_request"))
            and (status == "all" or d.status == status)
            and (not author or d.author == author)
        ]
        start = int(call.param("p", "0")) * DISCUSSIONS_PAGE_SIZE
        page = listed[start : start + DISCUSSIONS_PAGE_SIZE]
        discussions = [self._discussion_json(found, d, details=False) for d in page]
        return _json({"discussions": discussions, "count": len(listed), "start": start})

    def _create_discussion(self, call: _Call, t: str, repo: str) -> _Response:
        found = self._find(call, t, repo)
        user = self._require_user(call)
        body = call.json()
        if not body.get("title", "").strip():
            raise HubError(400, "A discussion needs a title")
        title, description = body["title"], body.get("description", "")
        if body.get("pullRequest"):  # an empty draft pull request against main
            main = found.refs["refs/heads/main"]
            discussion = self._open_discussion(found, user.name, title, description, "draft", "refs/heads/main", main)
        else:
            discussion = self._open_discussion(found, user.name, title, description)
        return _json({"num": discussion.num, "url": f"{self._web_url(found)}/discussions/{discussion.num}"})

    def _discussion_details(self, call: _Call, t: str, repo: str, num: str) -> _Response:
        found = self._find(call, t, repo)
        return _json(self._discussion_json(found, self._discussion(found, num), details=True))

    def _comment(self, call: _Call, t: str, repo: str, num: str) -> _Response:
        found = self._find(call, t, repo)
        user = self._require_user(call)
        text = call.json().get("comment", "")
        if not text.strip():
            raise HubError(400, "A comment cannot be empty")
        return _json({"newMessage": self._post_comment(found, self._discussion(found, num), user.name, text)})

    def _change_status(self, call: _Call, t: str, repo: str, num: str) -> _Response:
        found = self._find(call, t, repo)
        discussion = self._discussion(found, num)
        user = self._require_user(call)
        if user.name != discussion.author:
            self._check_write(call, found)
        body = call.json()
        if body.get("status") not in ("open", "closed"):
            raise HubError(400, f"Invalid status: {body.get('status')}")
        if body.get("comment"):
            self._post_comment(found, discussion, user.name, body["comment"])
        return _json({"newStatus": self._set_status(found, discussion, user.name, body["status"])})

    def _merge(self, call: _Call, t: str, repo: str, num: str) -> _Response:
        """Apply what the PR changed onto its target branch as one commit; conflicting files refuse the merge."""
        found = self._find(call, t, repo)
        pull_request = self._discussion(found, num)
        user = self._check_write(call, found)
        if not pull_request.is_pr or pull_request.status not in ("open", "draft"):
            raise HubError(400, f"#{num} is not an open pull request")
        assert pull_request.base_ref is not None
        changes, conflicts = self._pr_changes(found, pull_request)
        if conflicts:
            raise HubError(409, f"Merge conflict in: {', '.join(conflicts)}")
        target = found.refs[pull_request.base_ref]
        tree = dict(found.commits[target].files)
        for path, entry in changes.items():
            if entry is None:
                tree.pop(path, None)
            else:
                tree[path] = entry
        if comment := call.json().get("comment"):
            self._post_comment(found, pull_request, user.name, comment)
        message = f"Merge pull request #{pull_request.num}"
        merge = self._add_commit(found, pull_request.base_ref, target, tree, pull_request.title, message, user.name)
        pull_request.merge_commit = merge.sha
        self._set_status(found, pull_request, user.name, "merged")
        return _json({})

    # Jobs

    def _jobs_hardware(self, call: _Call) -> _Response:
        return _json(list(JOB_HARDWARE))

    def _job_namespace(self, call: _Call, namespace: str) -> User:
        user = self._require_user(call)
        if not self._can_write_namespace(user, namespace):
            raise HubError(403, f"You don't have the rights to run jobs in {namespace}")
        return user

    def _job(self, call: _Call, namespace: str, job_id: str) -> HubJob:
        self._job_namespace(call, namespace)
        job = self._jobs.get(job_id)
        if job is None or job.owner != namespace:
            raise HubError(404, f"Job {job_id} not found")
        return job

    def _run_job(self, call: _Call, namespace: str) -> _Response:
        user = self._job_namespace(call, namespace)
        spec = call.json()
        if not spec.get("command") or not isinstance(spec["command"], list):
            raise HubError(400, "A job needs a command (a list of strings)")
        if not (spec.get("dockerImage") or spec.get("spaceId")):
            raise HubError(400, "A job needs a dockerImage or a spaceId")
        flavors = [hw["name"] for hw in JOB_HARDWARE]
        if spec.get("flavor") not in flavors:
            raise HubError(400, f"Invalid flavor {spec.get('flavor')!r}; expected one of {', '.join(flavors)}")
        job = HubJob(_new_id(), namespace, "user" if namespace == user.name else "org", spec)
        self._jobs[job.id] = job
        self._start_job(job)
        return _json(job.json(self.url))

    def _list_jobs(self, call: _Call, namespace: str) -> _Response:
        """The namespace's jobs, as the Hub filters them: `stage=S` (repeated: any of them) and `label=KEY=VALUE`
        (repeated: all of them)."""
        self._job_namespace(call, namespace)
        stages = set(call.query.get("stage", []))
        labels = [tuple(text.split("=", 1)) for text in call.query.get("label", [])]
        if any(len(pair) != 2 for pair in labels):
            raise HubError(400, "A label filter is written key=value")
        return _json([job.json(self.url) for job in self._jobs.values() if job.owner == namespace
                      and (not stages or job.stage in stages)
                      and all((job.spec.get("labels") or {}).get(key) == value for key, value in labels)])

    def _inspect_job(self, call: _Call, namespace: str, job_id: str) -> _Response:
        job = self._job(call, namespace, job_id)
        with job.changed:
            return _json(job.json(self.url))

    def _cancel_job(self, call: _Call, namespace: str, job_id: str) -> _Response:
        self._stop_job(self._job(call, namespace, job_id), "cancel")
        return _json({})

    def _job_logs(self, call: _Call, namespace: str, job_id: str) -> _Response:
        """Server-sent events, as the Hub streams them: every line so far, then new ones until the job ends
        (a keep-alive comment while it is silent). `tail=N` starts at the last N lines."""
        with self._lock:
            job = self._job(call, namespace, job_id)
        tail = call.param("tail")
        with job.changed:
            first = max(0, len(job.lines) - int(tail)) if tail else 0

        def events() -> Iterator[bytes]:
            sent = first
            while True:
                with job.changed:
                    if sent >= len(job.lines) and not job.finished:
                        job.changed.wait(KEEP_ALIVE_S)
                    lines, finished = job.lines[sent:], job.finished
                sent += len(lines)
                if lines:
                    yield b"".join(b"data: %s\n\n" % json.dumps({"timestamp": at, "data": text}).encode()
                                   for at, text in lines)
                elif finished:
                    return
                else:
                    yield b": keep-alive\n\n"

        return _Response(200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                         stream=events())

    def _start_job(self, job: HubJob) -> None:
        """Run the command in a folder of its own; environment variables and secrets go to its environment."""
        spec = job.spec
        folder = self.root / "jobs" / job.id
        folder.mkdir(parents=True)
        env = {**os.environ, **{k: str(v) for k, v in (spec.get("environment") or {}).items()},
               **{k: str(v) for k, v in (spec.get("secrets") or {}).items()}}
        env["PATH"] = os.pathsep.join([*map(str, self.jobs_path), env.get("PATH", "")])
        with job.changed:
            job.lines.append((_now(), f"===== Job started at {_now()} ====="))
            try:
                job.process = subprocess.Popen(job.command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               start_new_session=True)
            except OSError as err:
                self._finish_job(job, "ERROR", f"Could not start the command: {err}")
                return
            job.stage, job.started_at = "RUNNING", _now()
        threading.Thread(target=self._follow_job, args=(job,), name=f"hub-job-{job.id}", daemon=True).start()
        if timeout := spec.get("timeoutSeconds"):
            timer = threading.Timer(float(timeout), self._stop_job, args=(job, "timeout"))
            timer.daemon = True
            timer.start()

    def _follow_job(self, job: HubJob) -> None:
        process = job.process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            with job.changed:
                job.lines.append((_now(), raw.decode(errors="replace").rstrip("\r\n")))
                job.changed.notify_all()
        code = process.wait()
        with job.changed:
            if job.stop_reason == "cancel":
                self._finish_job(job, "CANCELED", None)
            elif job.stop_reason == "timeout":
                self._finish_job(job, "ERROR", f"Job timed out after {job.spec['timeoutSeconds']} seconds")
            elif code == 0:
                self._finish_job(job, "COMPLETED", None)
            else:
                self._finish_job(job, "ERROR", f"Job failed with exit code: {code}")

    @staticmethod
    def _finish_job(job: HubJob, stage: str, message: str | None) -> None:
        """(With `job.changed` held.)"""
        job.stage, job.message, job.finished_at = stage, message, _now()
        job.changed.notify_all()

    @staticmethod
    def _stop_job(job: HubJob, reason: str, grace: float = CANCEL_GRACE_S) -> None:
        """SIGTERM to the job's process group, SIGKILL after `grace`; the stage follows when the process ends."""
        with job.changed:
            if job.finished or job.stop_reason is not None:
                return
            job.stop_reason = reason
            if job.process is None:
                HubServer._finish_job(job, "CANCELED", None)
                return
            pid = job.process.pid

        def kill(sig: int) -> None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass

        if grace <= 0:
            kill(signal.SIGKILL)
            return
        kill(signal.SIGTERM)
        timer = threading.Timer(grace, lambda: None if job.finished else kill(signal.SIGKILL))
        timer.daemon = True
        timer.start()

    # Webhooks

    def _list_webhooks(self, call: _Call) -> _Response:
        user = self._require_user(call)
        return _json([hook.json() for hook in self._webhooks.values() if hook.owner == user.name])

    def _create_webhook(self, call: _Call) -> _Response:
        user = self._require_user(call)
        body = call.json()
        if not body.get("url"):
            raise HubError(400, "Only webhooks that POST to a URL are supported")
        domains = body.get("domains") or ["repo", "discussion"]
        hook = Webhook(_new_id(), user.name, body["url"], body.get("watched", []), domains, body.get("secret"))
        self._webhooks[hook.id] = hook
        return _json({"webhook": hook.json()})

    def _webhook(self, call: _Call, hook_id: str) -> Webhook:
        hook = self._webhooks.get(hook_id)
        if hook is None or hook.owner != self._require_user(call).name:
            raise HubError(404, f"Webhook {hook_id} not found")
        return hook

    def _get_webhook(self, call: _Call, hook_id: str) -> _Response:
        return _json({"webhook": self._webhook(call, hook_id).json()})

    def _update_webhook(self, call: _Call, hook_id: str) -> _Response:
        hook = self._webhook(call, hook_id)
        body = call.json()
        for key in ("url", "watched", "domains", "secret"):
            if key in body:
                setattr(hook, key, body[key])
        return _json({"webhook": hook.json()})

    def _delete_webhook(self, call: _Call, hook_id: str) -> _Response:
        del self._webhooks[self._webhook(call, hook_id).id]
        return _json({})

    def _toggle_webhook(self, call: _Call, hook_id: str, action: str) -> _Response:
        hook = self._webhook(call, hook_id)
        hook.disabled = action == "disable"
        return _json({"webhook": hook.json()})

    def _repo_payload(self, repo: Repo) -> dict[str, Any]:
        return {
            "type": repo.repo_type,
            "name": repo.repo_id,
            "id": repo.id,
            "private": repo.private,
            "owner": {"id": _name_id(repo.namespace)},
            "url": {"web": self._web_url(repo), "api": f"{self.url}/api/{repo.repo_type}s/{repo.repo_id}"},
            "headSha": repo.refs.get("refs/heads/main"),
            "tags": [],
        }

    def _notify(self, repo: Repo, scope: str, action: str, **extra: Any) -> None:
        """Queue a delivery to each enabled webhook that watches the repo, covers the event's domain
        ("repo" or "discussion") and whose owner can see the repo."""
        for hook in self._webhooks.values():
            if (
                hook.disabled
                or scope.split(".")[0] not in hook.domains
                or not hook.watches(repo)
                or not self._can_read(self._user_named(hook.owner), repo)
                or self._deliverer is None
            ):
                continue
            payload = {
                "event": {"action": action, "scope": scope},
                "repo": self._repo_payload(repo),
                **extra,
                "webhook": {"id": hook.id, "version": 3},
            }
            delivery = self._deliverer.submit(self._deliver, hook.id, hook.url, hook.secret, payload)
            self._queued_deliveries.append(delivery)

    def _deliver(self, hook_id: str, url: str, secret: str | None, payload: dict[str, Any]) -> None:
        """POST one payload, once: best effort, like the Hub, and recorded either way."""
        headers = {"Content-Type": "application/json"} | ({"X-Webhook-Secret": secret} if secret else {})
        request = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
        status, error = None, None
        try:
            with _NO_PROXY.open(request, timeout=5) as answer:
                status = answer.status
        except urllib.error.HTTPError as err:
            status = err.code
        except OSError as err:
            error = str(err)
        with self._lock:
            self._deliveries.append(Delivery(hook_id, url, payload, status, error))


@dataclass
class ReceivedWebhook:
    headers: dict[str, str]  # lower-cased names
    payload: dict[str, Any]


class WebhookReceiver:
    """A tiny local endpoint recording the webhook POSTs it receives, answering `status` to each."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[ReceivedWebhook] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.received.append(ReceivedWebhook(headers, json.loads(body)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Silenced: deliveries are in `received`."""

        self._httpd = _LocalHTTPServer(Handler)

    @property
    def url(self) -> str:
        return self._httpd.url

    def start(self) -> WebhookReceiver:
        self._httpd.serve_in_background("webhook-receiver")
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
