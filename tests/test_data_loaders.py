"""Loaders on small files written in each real format, and their bad-input errors."""
import gzip
import json

import numpy as np
import pytest

from gensar_jax.data import loaders
from gensar_jax.io_utils import DataError


def _gz_lines(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _lcrec(tmp_path, items, inter, name="Toy"):
  with gzip.open(tmp_path / f"{name}.item.json.gz", "wt") as f:
    json.dump(items, f)
  (tmp_path / f"{name}.inter.json").write_text(json.dumps(inter))
  return tmp_path


def test_lcrec_2014_dialect_restores_root_and_cleans_html(tmp_path):
  items = {"0": {"title": "AT&amp;T Phone", "description": "", "brand": "AT&amp;T",
                 "categories": "Office Electronics, Telephones & Accessories"},
           "1": {"title": "Pen", "description": "blue &quot;ink&quot;", "brand": "", "categories": ""},
           "2": {"title": "", "description": "", "brand": "", "categories": "Office Electronics"}}
  raw = loaders.load_lcrec(_lcrec(tmp_path, items, {"u0": [0, 1, 2], "u1": [1, 0]}), "Toy", "auto", "Office Products")
  assert raw.catalog.titles == ["AT&T Phone", "Pen"]            # item 2 has no text: dropped
  assert raw.catalog.descriptions[1] == 'blue "ink"'
  assert raw.category_paths[0] == [("Office Products", "Office Electronics", "Telephones & Accessories")]
  assert raw.category_paths[1] == []
  assert raw.user_ids == ["u0", "u1"]
  np.testing.assert_array_equal(raw.purchases.user, [0, 0, 1, 1])
  np.testing.assert_array_equal(raw.purchases.item, [0, 1, 1, 0])
  np.testing.assert_array_equal(raw.purchases.time, [0, 1, 0, 1])   # position in the list is the time


def test_lcrec_2018_dialect_keeps_comma_space_inside_levels(tmp_path):
  items = {"7": {"title": "Planner", "description": "d",
                 "categories": "Office Products,Calendars, Planners & Personal Organizers,Planners"}}
  raw = loaders.load_lcrec(_lcrec(tmp_path, items, {"a": [7]}), "Toy")
  assert raw.category_paths[0] == [("Office Products", "Calendars, Planners & Personal Organizers", "Planners")]


def test_amazon2014_python_literal_meta(tmp_path):
  _gz_lines(tmp_path / "reviews_Toys_5.json.gz", [
      json.dumps({"reviewerID": "U1", "asin": "B2", "unixReviewTime": 20}),
      json.dumps({"reviewerID": "U1", "asin": "B1", "unixReviewTime": 10}),
      json.dumps({"reviewerID": "U2", "asin": "B1", "unixReviewTime": 5})])
  _gz_lines(tmp_path / "meta_Toys.json.gz", [
      repr({"asin": "B1", "title": "Ball", "description": "A red ball", "categories": [["Toys", "Balls"], ["Toys"]]}),
      repr({"asin": "B2", "title": "Kite", "categories": [["Toys", "Outdoor", "Kites"]]}),
      repr({"asin": "B3", "title": "never purchased"})])
  raw = loaders.load_amazon2014(tmp_path, "Toys")
  assert raw.catalog.item_ids == ["B1", "B2"]
  assert raw.category_paths[0] == [("Toys", "Balls"), ("Toys",)]
  np.testing.assert_array_equal(raw.purchases.item, [0, 1, 0])     # U1 sorted by time: B1 then B2
  np.testing.assert_array_equal(raw.purchases.time, [10, 20, 5])


def test_amazon2014_keeps_review_ratings_in_purchase_order(tmp_path):
  """data.reference_history's (time, rating) order needs the ratings ('overall'; NaN where missing)."""
  _gz_lines(tmp_path / "reviews_Toys_5.json.gz", [
      json.dumps({"reviewerID": "U1", "asin": "B2", "unixReviewTime": 20, "overall": 5.0}),
      json.dumps({"reviewerID": "U1", "asin": "B1", "unixReviewTime": 10, "overall": 3.0}),
      json.dumps({"reviewerID": "U2", "asin": "B1", "unixReviewTime": 5})])
  _gz_lines(tmp_path / "meta_Toys.json.gz", [repr({"asin": "B1", "title": "Ball"}), repr({"asin": "B2", "title": "Kite"})])
  raw = loaders.load_amazon2014(tmp_path, "Toys")
  np.testing.assert_array_equal(raw.purchases.rating, [3.0, 5.0, np.nan])
  assert loaders.load_lcrec(_lcrec(tmp_path, {"0": {"title": "t"}}, {"u": [0]}), "Toy").purchases.rating is None


def test_amazon2014_meta_is_parsed_safely(tmp_path):
  _gz_lines(tmp_path / "reviews_T_5.json.gz", [json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": 1})])
  _gz_lines(tmp_path / "meta_T.json.gz", ["{'asin': 'A', 'title': __import__('os').system('echo pwned')}"])
  with pytest.raises(DataError, match=r"meta_T.json.gz:1: malformed record"):
    loaders.load_amazon2014(tmp_path, "T")


def test_amazon2018_json_meta(tmp_path):
  _gz_lines(tmp_path / "Toys_5.json.gz", [json.dumps({"reviewerID": "U1", "asin": "B1", "unixReviewTime": 3})])
  _gz_lines(tmp_path / "meta_Toys.json.gz", [json.dumps({"asin": "B1", "title": "Ball &amp; bat",
                                                         "description": ["Great", "ball"], "category": ["Toys", "Balls"]})])
  raw = loaders.load_amazon2018(tmp_path, "Toys")
  assert raw.catalog.titles == ["Ball & bat"] and raw.catalog.descriptions == ["Great ball"]
  assert raw.category_paths == [[("Toys", "Balls")]]


def test_ai_query_files(tmp_path):
  _gz_lines(tmp_path / "query_text.txt.gz", ["cell phone case", "cell phone charger"])
  _gz_lines(tmp_path / "train.qrels.gz", ["U1_0 0 B1 1", "U1_1 0 B1 1", "U2_1 0 B9 1"])
  pairs = loaders.load_ai_queries(tmp_path)
  assert pairs == {("U1", "B1"): ["cell phone case", "cell phone charger"], ("U2", "B9"): ["cell phone charger"]}


def test_real_ai_query_files_parse(shared_data):
  pairs = loaders.load_ai_queries(shared_data / "amazon_product_search_ai2017" / "Cell_Phones_and_Accessories")
  # Counts verified in shared/data's README: 174,087 train + 667 test lines, 27,879 users, 10,428 items.
  assert sum(len(q) for q in pairs.values()) == 174_754
  assert len({u for u, _ in pairs}) == 27_879 and len({i for _, i in pairs}) == 10_428


@pytest.mark.parametrize("bad_line, message", [
    ('{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 3', r"reviews_T_5.json.gz:2: malformed record"),
    ('{"reviewerID": "U1", "unixReviewTime": 3}', r"reviews_T_5.json.gz:2: missing required field 'asin'"),
    ('{"reviewerID": "U1", "asin": "B1", "unixReviewTime": "x"}', r"reviews_T_5.json.gz:2: field 'unixReviewTime'"),
])
def test_bad_review_lines_name_file_line_and_field(tmp_path, bad_line, message):
  _gz_lines(tmp_path / "reviews_T_5.json.gz", [json.dumps({"reviewerID": "U", "asin": "B1", "unixReviewTime": 1}),
                                               bad_line])
  _gz_lines(tmp_path / "meta_T.json.gz", [repr({"asin": "B1", "title": "x"})])
  with pytest.raises(DataError, match=message):
    loaders.load_amazon2014(tmp_path, "T")


def test_item_without_metadata_is_an_error(tmp_path):
  with pytest.raises(DataError, match=r"1 item ids in purchase sequences have no metadata, e.g. \['5'\]"):
    loaders.load_lcrec(_lcrec(tmp_path, {"0": {"title": "a"}}, {"u": [0, 5]}), "Toy")


def test_missing_files_and_fields(tmp_path):
  with pytest.raises(DataError, match="directory not found"):
    loaders.load_lcrec(tmp_path / "nope", "Toy")
  with pytest.raises(DataError, match=r"none of \['Toy.item.json.gz', 'Toy.item.json'\] found"):
    loaders.load_lcrec(tmp_path, "Toy")
  with pytest.raises(DataError, match=r"item '0': missing required field 'title'"):
    loaders.load_lcrec(_lcrec(tmp_path, {"0": {"description": "x"}}, {"u": [0]}), "Toy")
  (tmp_path / "Bad.item.json").write_text('{"0": {"title": "a",}}')
  (tmp_path / "Bad.inter.json").write_text('{"u": [0]}')
  with pytest.raises(DataError, match=r"Bad.item.json:1: invalid JSON"):
    loaders.load_lcrec(tmp_path, "Bad")
