"""`gensar fetch`: downloads the raw files a config reads into data.raw_dir and data.query_dir.

Known files: the Amazon 2014 per-category 5-core reviews and metadata (`data.source=amazon2014`,
`data.name=<Category>`) and Ai et al.'s query files for that category (when `data.query_dir` is set and
real queries are configured). A download goes to `<name>.part`, resumes from there with an HTTP Range
request after an interruption (within the run and in the next one), and is renamed to `<name>` once
complete and checked. Sizes and SHA-256 are checked against the table below where it knows them, else
against `fetch.json`, the manifest beside the files that records them at the first fetch; a file present
and verified is not downloaded again.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import tqdm

from gensar_jax.data.loaders import QUERY_FILE_NAMES, raw_file_names
from gensar_jax.io_utils import DataError, is_uri, read_json, write_json

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- where the files are
# Each base URL can be overridden by its environment variable (a mirror, a local copy, a test server).
#
# Amazon review data 2014 (McAuley et al., SIGIR'15; He & McAuley, WWW'16): the per-category files linked
# from https://mcauleylab.ucsd.edu/public_datasets/data/amazon/index_2014.html, named
# reviews_<Category>_5.json.gz and meta_<Category>.json.gz (the older mirror
# http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ has the same names). Their sizes and
# hashes are not published: the first fetch records them in fetch.json.
AMAZON2014_URL_ENV = "GENSAR_AMAZON2014_URL"
AMAZON2014_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon/categoryFiles/"
# Ai et al. (SIGIR'17) query files: github.com/QingyaoAi/Amazon-Product-Search-Datasets at commit 64907e5
# (2020-06-19), one directory per category named after its 5-core reviews file. Sizes from that commit's
# tree; SHA-256 of the files whose bytes were checked against it (train.qrels.gz of CDs, Electronics and
# Kindle were not: the first fetch records them).
AI_QUERIES_URL_ENV = "GENSAR_AI_QUERIES_URL"
AI_QUERIES_URL = ("https://raw.githubusercontent.com/QingyaoAi/Amazon-Product-Search-Datasets/"
                  "64907e59b4ce27738e61607f2d6b16b62dee92ac/")
AI_QUERY_FILES: dict[str, dict[str, tuple[int | None, str | None]]] = {   # category -> {file: (size, sha256)}
    "CDs_and_Vinyl": {
        "query_text.txt.gz": (5868, "ab7c4be1f6296caed170b9124121bfed31b46eec20c79ae32be73047d1fcfec0"),
        "train.qrels.gz": (None, None),
        "test.qrels.gz": (573694, "8f9dd20e8641a8d21aa1051bc3ce6569293d48ccd9ccb2f6b7636c6a40382ad0")},
    "Cell_Phones_and_Accessories": {
        "query_text.txt.gz": (1651, "3d3bff9537c320388f2b83d8cab887ad061b96a5138a9c3c9873e579e1e7027c"),
        "train.qrels.gz": (1404450, "bb5961f1bfd6acf905397629a7dd1d94f39b76420202a990e5027cb073f419f8"),
        "test.qrels.gz": (7406, "6ce823296e6f4b3f23303021abfc672506ea7e11545295f46b250e22f4686ab3")},
    "Electronics": {
        "query_text.txt.gz": (8510, "783ba9464eb5636cf3413d4f2f0927f76c04388d390fa2ea7f6aaa07bfd52e01"),
        "train.qrels.gz": (None, None),
        "test.qrels.gz": (59472, "91c55642c2fbefc3e89937de0a5240a50e84ca599e7c6b543acd5b35f955219e")},
    "Kindle_Store": {
        "query_text.txt.gz": (35945, "fb68c5996856094b9344032dc66c0d5341f729d8805792897a6da9e5265eb3b1"),
        "train.qrels.gz": (None, None),
        "test.qrels.gz": (2833533, "808ef355a5af19275867e8866dd2799f1f361ae7ff0a0878e42f0c6afa4aa2dd")},
}

MANIFEST = "fetch.json"
ATTEMPTS = 5               # tries per file; each resumes where the previous one stopped
RETRY_WAIT_S = 2.0         # times the attempt number
TIMEOUT_S = 60.0
CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Remote:
  """One file to fetch: its name in the target directory, its URL and, where known, its size and SHA-256."""
  name: str
  url: str
  size: int | None = None
  sha256: str | None = None


def _base_url(env: str, default: str) -> str:
  url = os.environ.get(env) or default
  return url if url.endswith("/") else url + "/"


def plan(data) -> list[tuple[str, str, list[Remote]]]:
  """What `gensar fetch` downloads for a `data` config section: [(setting, directory, [Remote, ...])]."""
  out = []
  if data.source == "amazon2014":
    if not data.get("raw_dir"):
      raise DataError("data.raw_dir is empty: set it to the directory the Amazon 2014 files go to")
    base = _base_url(AMAZON2014_URL_ENV, AMAZON2014_URL)
    names = [names[0] for names in raw_file_names("amazon2014", data.name)]
    out.append(("data.raw_dir", data.raw_dir, [Remote(name, base + name) for name in names]))
  elif data.source != "synthetic":
    log.warning("fetch: data.source=%s has no known download (gensar fetch knows amazon2014); put its files in "
                "data.raw_dir yourself", data.source)
  mode = data.get("queries", "auto")
  if data.get("query_dir") and mode != "generated":
    if data.name not in AI_QUERY_FILES:
      raise DataError(f"data.name={data.name!r}: Ai et al. published query files for {sorted(AI_QUERY_FILES)} "
                      "only; set data.queries=generated or data.query_dir=''")
    base = _base_url(AI_QUERIES_URL_ENV, AI_QUERIES_URL) + f"reviews_{data.name}_5.json.gz/"
    known = AI_QUERY_FILES[data.name]
    out.append(("data.query_dir", data.query_dir,
                [Remote(name, base + name, *known[name]) for name, *_ in QUERY_FILE_NAMES]))
  return out


# ------------------------------------------------------------------------------------------- checking

def sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(CHUNK):
      h.update(block)
  return h.hexdigest()


def expected_of(remote: Remote, recorded: dict | None) -> tuple[int | None, str | None, str]:
  """(size, sha256, where they come from): the table's where it knows them, else the manifest's."""
  if remote.sha256:
    return remote.size, remote.sha256, "the download table"
  if recorded:
    return recorded.get("size"), recorded.get("sha256"), f"{MANIFEST} (recorded at the first fetch)"
  return remote.size, None, "the download table"


def mismatch(path: Path, size: int, sha: str, expected: tuple[int | None, str | None, str]) -> str | None:
  """What differs between a file's size and SHA-256 and the expected ones, or None."""
  want_size, want_sha, source = expected
  if want_size is not None and size != want_size:
    return f"{path}: {size:,} bytes, expected {want_size:,} (from {source})"
  if want_sha is not None and sha != want_sha:
    return f"{path}: SHA-256 {sha}, expected {want_sha} (from {source})"
  return None


def not_gzip(path: Path, name: str) -> str | None:
  """A `.gz` download that does not start with the gzip magic bytes (e.g. an HTML error page), or None."""
  if not name.endswith(".gz"):
    return None
  with open(path, "rb") as f:
    head = f.read(2)
  return None if head == b"\x1f\x8b" else f"{path.parent / name}: not a gzip file (starts with {head!r})"


def _load_manifest(directory: Path) -> dict:
  path = directory / MANIFEST
  manifest = read_json(path) if path.exists() else {"files": {}}
  if not isinstance(manifest, dict) or not isinstance(manifest.setdefault("files", {}), dict):
    raise DataError(f"{path}: expected {{\"files\": {{<file name>: {{\"url\", \"size\", \"sha256\"}}}}}}")
  return manifest


# ------------------------------------------------------------------------------------------ downloading

def _total_size(response, offset: int) -> int | None:
  """The whole file's size from a 206's Content-Range or a 200's Content-Length."""
  content_range = response.headers.get("Content-Range", "")
  match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", content_range.strip())
  if match:
    return int(match.group(2))
  length = response.headers.get("Content-Length")
  return int(length) + offset if length is not None else None


def download(url: str, part: Path, size_hint: int | None = None, attempts: int = ATTEMPTS) -> None:
  """Downloads `url` into `part`, continuing from its current length (HTTP Range) and retrying after a
  dropped connection; raises DataError when the server refuses or every attempt fails."""
  error: Exception | None = None
  for attempt in range(1, attempts + 1):
    offset = part.stat().st_size if part.exists() else 0
    if size_hint is not None and offset == size_hint:
      return
    request = urllib.request.Request(url, headers={"User-Agent": "gensar-fetch",
                                                   **({"Range": f"bytes={offset}-"} if offset else {})})
    try:
      with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if offset and response.status != 206:       # the server ignored the range: start again
          offset = 0
        total = _total_size(response, offset)
        with open(part, "ab" if offset else "wb") as f, tqdm.tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
            leave=False, disable=None) as bar:
          while block := response.read(CHUNK):
            f.write(block)
            bar.update(len(block))
        got = part.stat().st_size
        if total is not None and got != total:
          raise http.client.IncompleteRead(b"", total - got)
        return
    except urllib.error.HTTPError as e:
      if e.code == 416 and offset:                   # nothing left after `offset`: complete, or too long
        match = re.fullmatch(r"bytes \*/(\d+)", (e.headers.get("Content-Range") or "").strip())
        if match and int(match.group(1)) == offset:
          return
        part.unlink()
        error = e
        continue
      if e.code < 500:
        raise DataError(f"{url}: HTTP {e.code} {e.reason} (check data.name, or the base URL's environment "
                        "variable)") from None
      error = e
    except (OSError, http.client.HTTPException) as e:   # a dropped connection, a reset, a timeout
      error = e
    got = part.stat().st_size if part.exists() else 0
    if attempt < attempts:
      log.warning("fetch: %s interrupted at %s bytes (%s: %s); resuming (attempt %d of %d)", part.name[:-5],
                  f"{got:,}", type(error).__name__, error, attempt + 1, attempts)
      time.sleep(RETRY_WAIT_S * attempt)
  got = part.stat().st_size if part.exists() else 0
  raise DataError(f"{url}: download failed after {attempts} attempts ({type(error).__name__}: {error}); {part} "
                  f"keeps the {got:,} bytes so far and `gensar fetch` resumes from there")


def fetch_file(remote: Remote, directory: Path, files: dict) -> str:
  """Fetches one file into `directory` unless it is there and verified; updates `files` (the manifest's
  entries) and returns what was done, for the log."""
  target, part = directory / remote.name, directory / (remote.name + ".part")
  expected = expected_of(remote, files.get(remote.name))
  if target.exists():
    size, sha = target.stat().st_size, sha256_file(target)
    problem = mismatch(target, size, sha, expected)
    if problem:
      raise DataError(f"{problem}; the file is damaged or not the published one: remove it and run `gensar fetch` "
                      "again")
    verified = expected[1] is not None
    files[remote.name] = {"url": remote.url, **files.get(remote.name, {}), "size": size, "sha256": sha}
    return (f"{remote.name}: present and verified ({size:,} bytes), skipped" if verified else
            f"{remote.name}: present, not downloaded; recorded its size and SHA-256 ({size:,} bytes)")
  start, resumed = time.time(), part.stat().st_size if part.exists() else 0
  download(remote.url, part, expected[0])
  size, sha = part.stat().st_size, sha256_file(part)
  problem = mismatch(target, size, sha, expected) or not_gzip(part, remote.name)
  if problem:
    part.unlink()
    raise DataError(f"{problem}; downloaded from {remote.url} and removed. Run `gensar fetch` again; if the "
                    f"published file changed, remove its entry from {directory / MANIFEST}")
  os.replace(part, target)
  files[remote.name] = {"url": remote.url, "size": size, "sha256": sha,
                        "fetched": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
  how = "verified against " + expected[2] if expected[1] else f"SHA-256 recorded in {MANIFEST}"
  resume = f", resumed from {resumed:,} bytes" if resumed else ""
  return f"{remote.name}: downloaded {size:,} bytes in {time.time() - start:.1f}s{resume}; {how}"


def fetch(config) -> list[Path]:
  """Fetches every file `plan` lists for the config; returns their paths. One log line per file."""
  paths = []
  for setting, directory, remotes in plan(config.data):
    if is_uri(directory):
      raise DataError(f"{setting}={directory}: gensar fetch writes to a local or mounted directory; fetch there "
                      "and copy the files to the bucket")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(directory)
    for remote in remotes:
      try:
        log.info("fetch: %s", fetch_file(remote, directory, manifest["files"]))
      finally:
        write_json(directory / MANIFEST, manifest)
      paths.append(directory / remote.name)
  if not paths:
    log.info("fetch: nothing to download for data.source=%s", config.data.source)
  return paths
