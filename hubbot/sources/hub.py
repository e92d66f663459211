"""Models on the Hub, read with HTTP range requests: headers at plan time, tensors while merging.

The revision is pinned to a commit sha when the source opens, so everything read afterwards
comes from one immutable snapshot. Fetched tensors go to a bounded on-disk cache keyed by
that sha, so a second merge of the same sources fetches nothing; small neighbouring tensors
are fetched in one request, and large ones in a few parallel ranges.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..errors import SourceError
from ..hub import HubOptions, _Transient, describe, with_retries
from ..model.format import TensorInfo, decode
from ..recipe.refs import ModelRef
from .base import Source

COALESCE_BYTES = 16 << 20  # neighbouring uncached tensors fetched in one request, up to this
PART_BYTES = 32 << 20  # a tensor above this is fetched as parallel ranges of this size


def _total(headers) -> int | None:
    """The file's full length from a 206 answer's Content-Range (`bytes 0-7/12345`)."""
    try:
        return int(headers.get("content-range", "").rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _complete(headers, offset: int, length: int, got: int) -> bool:
    """Whether a 206 answer holds all `length` bytes asked for, or all up to the end of the file."""
    if got == length:
        return True
    try:
        span, total = headers.get("content-range", "").split(" ", 1)[1].split("/")
        start, end = (int(x) for x in span.split("-"))
    except (IndexError, ValueError):
        return False
    return start == offset and end + 1 == int(total) and got == end - start + 1


class RangeCache:
    """Immutable byte ranges on disk, least recently used evicted past `limit` bytes."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, limit
        self.lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        self.total = sum(f.stat().st_size for f in self._entries())

    def _entries(self) -> list[Path]:
        return [f for f in self.root.glob("*/*") if ".tmp" not in f.name]

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def get(self, key: str) -> Path | None:
        p = self.path(key)
        if p.exists():
            os.utime(p)
            return p
        return None

    def put(self, key: str, data: bytes | bytearray | memoryview) -> Path:
        p = self.path(key)
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(p)
        with self.lock:
            self.total += len(data)
            if self.total > self.limit:
                self._evict(keep=p)
        return p

    def _evict(self, keep: Path) -> None:
        """Drop least recently used entries until under the limit (never the one just added)."""
        files = sorted((f.stat().st_mtime, f.stat().st_size, f) for f in self._entries() if f != keep)
        self.total = sum(size for _, size, _ in files) + keep.stat().st_size
        for _, size, f in files:
            if self.total <= self.limit:
                break
            f.unlink(missing_ok=True)
            self.total -= size


class HubSource(Source):
    """A model repo on the Hub at a pinned commit."""

    def __init__(self, ref: ModelRef, opts: HubOptions | None = None):
        super().__init__(ref)
        self.opts = opts or HubOptions.from_env()
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.info = with_retries(lambda: self.opts.api().model_info(ref.path, revision=ref.revision),
                                     str(ref), self.opts)
        except HfHubHTTPError as exc:
            raise SourceError(describe(exc, str(ref))) from None
        self.revision = self.info.sha
        self._files = sorted(s.rfilename for s in self.info.siblings or [])
        cache_root = self.opts.cache_dir or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hubbot"
        self.cache = RangeCache(cache_root / "ranges", self.opts.cache_bytes) if self.opts.cache_bytes else None
        self.bytes_fetched = 0
        self._lock = threading.Lock()
        self._session_headers = None
        self._sizes: dict[str, int] = {}

    def files(self) -> list[str]:
        return self._files

    def _url(self, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.ref.path, path, revision=self.revision, endpoint=self.opts.endpoint)

    def _headers(self) -> dict[str, str]:
        if self._session_headers is None:
            from huggingface_hub.utils import build_hf_headers

            self._session_headers = build_hf_headers(token=self.opts.token or False, library_name="hubbot")
        return dict(self._session_headers)

    def read_file(self, path: str) -> bytes:
        """A small file, whole (config, index, tokenizer)."""
        return bytes(self._get(path, None, None))

    def _get(self, path: str, offset: int | None, length: int | None) -> bytearray:
        """One GET, whole file or `length` bytes from `offset`, with retries."""
        from huggingface_hub import get_session
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.utils import hf_raise_for_status

        headers = self._headers()
        if offset is not None:
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        what = f"{self.label}: {path}"

        def fetch() -> bytearray:
            r = get_session().get(self._url(path), headers=headers, follow_redirects=True, timeout=60)
            hf_raise_for_status(r)
            data = bytearray(r.content)
            if offset is not None and (r.status_code != 206 or not _complete(r.headers, offset, length, len(data))):
                raise _Transient(f"asked for {length} bytes from {offset}, got {len(data)} (HTTP {r.status_code})")
            total = _total(r.headers) if offset is not None else len(data)
            if total is not None:
                self._sizes[path] = total
            return data

        try:
            data = with_retries(fetch, what, self.opts)
        except HfHubHTTPError as exc:
            raise SourceError(describe(exc, what)) from None
        with self._lock:
            self.bytes_fetched += len(data)
        return data

    def file_size(self, path: str) -> int | None:
        """Known once any range of the file was fetched (headers are read from byte 0)."""
        return self._sizes.get(path)

    def read_range(self, path: str, offset: int, length: int) -> bytearray:
        if length <= PART_BYTES:
            return self._get(path, offset, length)
        parts = [(o, min(PART_BYTES, offset + length - o)) for o in range(offset, offset + length, PART_BYTES)]
        out = bytearray(length)
        with ThreadPoolExecutor(max_workers=self.opts.parallel) as pool:
            for (o, n), data in zip(parts, pool.map(lambda p: self._get(path, *p), parts)):
                out[o - offset:o - offset + n] = data
        return out

    def _load_tensor_infos(self) -> dict[str, TensorInfo]:
        """Headers only: two small range requests per shard, shards in parallel."""
        paths = self.weight_files()
        with ThreadPoolExecutor(max_workers=self.opts.parallel) as pool:
            headers = list(pool.map(self.read_header, paths))
        return {name: info for found in headers for name, info in found.items()}

    def _key(self, info: TensorInfo) -> str:
        return f"{self.ref.path}@{self.revision}/{info.file}:{info.offset}+{info.nbytes}"

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """A tensor from the cache, fetching it (with its small uncached neighbours) if needed."""
        info = self.tensors()[name]
        if self.cache is None or info.nbytes > self.cache.limit:
            return super().read(name, rows)
        cached = self.cache.get(self._key(info))
        if cached is None:
            cached = self._fetch_into_cache(info)
        start, length = (0, info.nbytes) if rows is None else (info.row_range(*rows)[0] - info.offset,
                                                               info.row_range(*rows)[1])
        buf = bytearray(length)
        with open(cached, "rb") as f:
            f.seek(start)
            f.readinto(buf)
        return decode(buf, info, rows)

    def _fetch_into_cache(self, info: TensorInfo) -> Path:
        group = [info]
        end = info.offset + info.nbytes
        for other in sorted((t for t in self.tensors().values() if t.file == info.file and t.offset >= end),
                            key=lambda t: t.offset):
            if other.offset != end or end + other.nbytes - info.offset > COALESCE_BYTES:
                break
            if self.cache.get(self._key(other)) is not None:
                break
            group.append(other)
            end += other.nbytes
        data = self.read_range(info.file, info.offset, end - info.offset)
        view = memoryview(data)
        for t in group[1:]:
            self.cache.put(self._key(t), view[t.offset - info.offset:t.offset - info.offset + t.nbytes])
        return self.cache.put(self._key(info), view[:info.nbytes])
