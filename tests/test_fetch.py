"""`gensar fetch` against a small HTTP server on 127.0.0.1 with Range support: fresh fetch, verified
re-fetch, resumed downloads, files that do not match the table or the manifest."""
import gzip
import hashlib
import http.server
import json
import logging
import shutil
import threading
from pathlib import Path

import pytest

from gensar_jax import cli
from gensar_jax.config import load_config
from gensar_jax.data import fetch as fetch_module
from gensar_jax.data import loaders
from gensar_jax.data.fetch import AI_QUERY_FILES, MANIFEST, fetch
from gensar_jax.io_utils import DataError

CATEGORY = "Cell_Phones_and_Accessories"
AI_DIR = f"reviews_{CATEGORY}_5.json.gz"


class Server:
  """Serves `root` on 127.0.0.1: GET with `Range: bytes=N-`, a log of (path, range) requests, and paths in
  `drop_once` answered with half their bytes before the connection closes, the first time."""

  def __init__(self, root: Path):
    self.root, self.requests, self.drop_once = root, [], set()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        path = self.path.lstrip("/")
        server.requests.append((path, self.headers.get("Range")))
        file = server.root / path
        if not file.is_file():
          self.send_error(404)
          return
        data = file.read_bytes()
        start = int(self.headers["Range"][len("bytes="):].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data) and start:
          self.send_response(416)
          self.send_header("Content-Range", f"bytes */{len(data)}")
          self.end_headers()
          return
        self.send_response(206 if start else 200)
        if start:
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if path in server.drop_once:
          server.drop_once.discard(path)
          self.wfile.write(body[:len(body) // 2])
          self.close_connection = True
          return
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def gets(self, name: str) -> list:
    return [rng for path, rng in self.requests if path.endswith(name)]


@pytest.fixture
def server(tmp_path, monkeypatch, shared_data):
  """The Amazon files (small synthetic ones) and the real Ai et al. Cell Phones files, as published."""
  root = tmp_path / "www"
  amazon, ai = root / "amazon", root / "ai" / AI_DIR
  amazon.mkdir(parents=True)
  reviews = [json.dumps({"reviewerID": f"U{i % 7}", "asin": f"B{i % 5}", "unixReviewTime": i, "reviewText": "x" * i})
             for i in range(300)]
  (amazon / f"reviews_{CATEGORY}_5.json.gz").write_bytes(gzip.compress("\n".join(reviews).encode(), mtime=0))
  meta = [repr({"asin": f"B{i}", "title": f"case {i}", "categories": [["Cell Phones", "Cases"]]}) for i in range(5)]
  (amazon / f"meta_{CATEGORY}.json.gz").write_bytes(gzip.compress("\n".join(meta).encode(), mtime=0))
  shutil.copytree(shared_data / "amazon_product_search_ai2017" / CATEGORY, ai)
  s = Server(root)
  s.thread.start()
  monkeypatch.setenv("GENSAR_AMAZON2014_URL", s.url + "amazon")
  monkeypatch.setenv("GENSAR_AI_QUERIES_URL", s.url + "ai/")
  monkeypatch.setattr(fetch_module, "RETRY_WAIT_S", 0.0)
  for name in ("no_proxy", "NO_PROXY"):               # a configured HTTP proxy must not see 127.0.0.1
    monkeypatch.setenv(name, "127.0.0.1,localhost")
  yield s
  s.httpd.shutdown()
  s.httpd.server_close()


def _config(tmp_path, name=CATEGORY):
  return load_config("tiny", ["data.source=amazon2014", f"data.name={name}", f"data.raw_dir={tmp_path / 'raw'}",
                              f"data.query_dir={tmp_path / 'queries'}"])


def _sha(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_fetch_then_a_refetch_that_only_verifies(tmp_path, server, caplog):
  config = _config(tmp_path)
  with caplog.at_level(logging.INFO, logger="gensar_jax.data.fetch"):
    paths = fetch(config)
  names = [f"reviews_{CATEGORY}_5.json.gz", f"meta_{CATEGORY}.json.gz", "query_text.txt.gz", "train.qrels.gz",
           "test.qrels.gz"]
  assert [p.name for p in paths] == names
  for path in paths:
    served = next(p for p in server.root.rglob(path.name) if p.is_file())
    assert path.read_bytes() == served.read_bytes()
  assert not list(tmp_path.rglob("*.part"))
  assert len(caplog.records) == 5                                   # one line per file
  assert "verified against the download table" in caplog.records[2].getMessage()      # the real query files
  assert "SHA-256 recorded in fetch.json" in caplog.records[0].getMessage()            # the Amazon files
  raw_manifest = json.loads((tmp_path / "raw" / MANIFEST).read_text())["files"]
  review = tmp_path / "raw" / names[0]
  assert raw_manifest[names[0]]["sha256"] == _sha(review) and raw_manifest[names[0]]["size"] == review.stat().st_size
  assert raw_manifest[names[0]]["url"] == server.url + "amazon/" + names[0]
  assert loaders.source_files(config.data) == [tmp_path / "raw" / names[0], tmp_path / "raw" / names[1],
                                               tmp_path / "queries" / "query_text.txt.gz",
                                               tmp_path / "queries" / "test.qrels.gz",
                                               tmp_path / "queries" / "train.qrels.gz"]
  assert len(loaders.load_ai_queries(tmp_path / "queries")) > 0

  requests = len(server.requests)
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="gensar_jax.data.fetch"):
    assert fetch(config) == paths
  assert len(server.requests) == requests                          # nothing downloaded again
  assert all("present and verified" in r.getMessage() for r in caplog.records)


def test_the_cli_fetches_and_prints_the_files(tmp_path, server, capsys):
  overrides = [arg for o in ("data.source=amazon2014", f"data.name={CATEGORY}", f"data.raw_dir={tmp_path / 'raw'}")
               for arg in ("--set", o)]
  assert cli.main(["fetch", "--config", "tiny", *overrides]) == 0
  assert capsys.readouterr().out.split() == [str(tmp_path / "raw" / f"reviews_{CATEGORY}_5.json.gz"),
                                             str(tmp_path / "raw" / f"meta_{CATEGORY}.json.gz")]


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, server, caplog):
  name = f"reviews_{CATEGORY}_5.json.gz"
  size = (server.root / "amazon" / name).stat().st_size
  server.drop_once.add(f"amazon/{name}")
  with caplog.at_level(logging.INFO, logger="gensar_jax.data.fetch"):
    fetch(_config(tmp_path))
  assert server.gets(name) == [None, f"bytes={size // 2}-"]     # the second request asks for the rest only
  assert (tmp_path / "raw" / name).read_bytes() == (server.root / "amazon" / name).read_bytes()
  messages = [r.getMessage() for r in caplog.records]
  assert any(f"{name} interrupted at {size // 2:,} bytes" in m for m in messages)
  assert any(f"{name}: downloaded {size:,} bytes" in m for m in messages)

  # A `.part` left by a process that was killed: the next fetch continues it.
  (tmp_path / "raw" / name).unlink()
  (tmp_path / "raw" / (name + ".part")).write_bytes((server.root / "amazon" / name).read_bytes()[:1000])
  fetch(_config(tmp_path))
  assert server.gets(name)[-1] == "bytes=1000-"
  assert (tmp_path / "raw" / name).read_bytes() == (server.root / "amazon" / name).read_bytes()


def test_files_that_do_not_match_are_refused_naming_the_file(tmp_path, server):
  fetch(_config(tmp_path))
  review = tmp_path / "raw" / f"reviews_{CATEGORY}_5.json.gz"
  recorded = _sha(review)
  data = bytearray(review.read_bytes())
  data[len(data) // 2] ^= 0xFF                                      # same size, one byte changed
  review.write_bytes(bytes(data))
  with pytest.raises(DataError, match=rf"{review}: SHA-256 {_sha(review)}, expected {recorded} \(from fetch.json "
                                      r"\(recorded at the first fetch\)\); the file is damaged"):
    fetch(_config(tmp_path))

  # The server sends other bytes than the table's for a file it knows: refused, nothing kept.
  queries = tmp_path / "other"
  query_text = server.root / "ai" / AI_DIR / "query_text.txt.gz"
  query_text.write_bytes(gzip.compress(b"cell phone\n"))
  size, sha = AI_QUERY_FILES[CATEGORY]["query_text.txt.gz"]
  config = load_config("tiny", ["data.source=synthetic", f"data.name={CATEGORY}", f"data.query_dir={queries}"])
  with pytest.raises(DataError, match=rf"{queries / 'query_text.txt.gz'}: {query_text.stat().st_size:,} bytes, "
                                      rf"expected {size:,} \(from the download table\)"):
    fetch(config)
  assert not list(queries.glob("query_text*"))
  query_text.write_bytes(b"\0" * size)                              # the table's size, another hash
  with pytest.raises(DataError, match=rf"query_text.txt.gz: SHA-256 {_sha(query_text)}, expected {sha}"):
    fetch(config)


def test_unknown_files_and_categories_are_clear_errors(tmp_path, server):
  with pytest.raises(DataError, match=r"/amazon/reviews_Nope_5.json.gz: HTTP 404"):
    fetch(load_config("tiny", ["data.source=amazon2014", "data.name=Nope", f"data.raw_dir={tmp_path / 'raw'}"]))
  with pytest.raises(DataError, match=r"data.name='Nope': Ai et al. published query files for \['CDs_and_Vinyl', "):
    fetch(_config(tmp_path, "Nope"))
  with pytest.raises(DataError, match="gensar fetch writes to a local or mounted directory"):
    fetch(load_config("tiny", ["data.source=amazon2014", "data.raw_dir=gs://bkt/raw"]))
  (server.root / "amazon" / "reviews_Html_5.json.gz").write_text("<html>moved</html>")
  with pytest.raises(DataError, match=r"reviews_Html_5.json.gz: not a gzip file \(starts with b'<h'\)"):
    fetch(load_config("tiny", ["data.source=amazon2014", "data.name=Html", f"data.raw_dir={tmp_path / 'raw'}"]))
