"""Tokenizer round trip, task examples and history serialization, and the grain pipeline."""
import numpy as np
import pytest

from gensar_jax.config import load_config
from gensar_jax.data import pipeline
from gensar_jax.data.prompts import TEMPLATES
from gensar_jax.data.splits import REC, SEARCH
from gensar_jax.data.storage import open_samples
from gensar_jax.data.tasks import TASKS, ExampleBuilder
from gensar_jax.data.tokenizer import EOS_ID, PAD_ID, GenSARTokenizer, identifier_levels


@pytest.fixture(scope="module")
def setup(tiny_prepared):
  cfg = load_config("tiny").tasks
  levels, sem, col = identifier_levels(2, 2)
  size = load_config("tiny").identifiers.codebook_size
  tok = GenSARTokenizer(tiny_prepared.sp_model, levels, size)
  n = tiny_prepared.dataset.num_items
  rng = np.random.default_rng(0)
  sem_codes = rng.integers(0, size, (n, 4)).astype(np.int32)
  col_codes = np.concatenate([sem_codes[:, :2], rng.integers(0, size, (n, 2))], 1).astype(np.int32)
  data = tiny_prepared.dataset
  builder = ExampleBuilder(tok, [data.catalog.text(i) for i in range(n)], data.queries, sem_codes, col_codes, sem,
                           col, max_input_len=cfg.max_input_len, max_target_len=cfg.max_target_len,
                           max_text_tokens=cfg.max_text_tokens)
  return tok, builder, sem_codes, col_codes, tiny_prepared


def test_identifier_levels_per_mode():
  assert identifier_levels(1, 1, True) == (("shared_a", "semantic_a", "semantic_b", "collab_a", "collab_b"),
                                           ("shared_a", "semantic_a", "semantic_b"), ("shared_a", "collab_a", "collab_b"))
  levels, sem, col = identifier_levels(2, 2, mode="semantic")
  assert levels == sem == col == ("shared_a", "shared_b", "semantic_a", "semantic_b")


def test_tokenizer_layout_and_round_trip(setup):
  tok, *_ = setup
  assert tok.levels == ("shared_a", "shared_b", "semantic_a", "semantic_b", "collab_a", "collab_b")
  assert tok.rec_item_id == tok.sp_vocab_size and tok.id_offset == tok.sp_vocab_size + 3
  assert tok.vocab_size == tok.id_offset + 6 * tok.codebook_size
  np.testing.assert_array_equal(tok.level_offsets(["semantic_a", "collab_b"]),
                                [tok.id_offset + 2 * 16, tok.id_offset + 5 * 16])
  text = "<src_query> office chair ; <src_item> <shared_a_3> <shared_b_0> <semantic_a_15> <semantic_b_7>"
  ids = tok.encode(text)
  assert ids[0] == tok.src_query_id and ids[-4:] == [tok.id_offset + 3, tok.id_offset + 16, tok.id_offset + 47,
                                                     tok.id_offset + 55]
  assert tok.encode(tok.decode(ids)) == ids
  assert tok.decode(ids + [EOS_ID, 5, 6]) == tok.decode(ids)
  with pytest.raises(ValueError, match="unknown identifier token"):
    tok.encode("<collab_a_99>")


def test_history_serialization_exact(setup):
  tok, builder, sem, col, prepared = setup
  hist_kind = np.asarray([REC, SEARCH, REC, -1], np.int8)
  hist_item = np.asarray([3, 5, 7, -1], np.int32)
  hist_query = np.asarray([-1, 2, -1, -1], np.int32)
  record = {"item": 9, "query": 1, "hist_kind": hist_kind, "hist_item": hist_item, "hist_query": hist_query}
  inputs, target = builder.build("nrip", record, template=0)
  q = prepared.dataset.queries

  def ident(view, item):
    codes = (sem if view == "semantic" else col)[item]
    names = (["shared_a", "shared_b", "semantic_a", "semantic_b"] if view == "semantic"
             else ["shared_a", "shared_b", "collab_a", "collab_b"])
    return " ".join(f"<{n}_{c}>" for n, c in zip(names, codes))

  history = (f"<rec_item> {ident('collab', 3)} ; <src_query> {q[2]} ; <src_item> {ident('semantic', 5)} ; "
             f"<rec_item> {ident('collab', 7)}")
  expected = TEMPLATES["nrip"][0].format(history=history)
  assert tok.decode(inputs).split() == tok.decode(tok.encode(expected)).split()
  assert tok.decode(target) == f"<rec_item> {ident('collab', 9)}"
  _, target = builder.build("nsip", record)
  assert tok.decode(target) == f"<src_item> {ident('semantic', 9)}"
  _, target = builder.build("nsqp", record)
  assert tok.decode(target).split() == f"<src_query> {q[1]}".split()
  _, target = builder.build("desc2id", {"item": 4}, view=1)
  assert tok.decode(target) == ident("collab", 4)                       # no behaviour token
  inputs, target = builder.build("id2desc", {"item": 4}, view=0)
  assert ident("semantic", 4) in tok.decode(inputs)


def test_long_inputs_drop_oldest_history_first(setup):
  tok, builder, *_ = setup
  k = 10
  record = {"item": 1, "query": 0, "hist_kind": np.zeros(k, np.int8), "hist_item": np.arange(k, dtype=np.int32),
            "hist_query": np.full(k, -1, np.int32)}
  full, _ = builder.build("nrip", record)
  small = ExampleBuilder.__new__(ExampleBuilder)
  small.__dict__.update(builder.__dict__)
  small.max_input_len = len(full) - 3
  cut, _ = small.build("nrip", record)
  assert len(cut) <= small.max_input_len
  assert builder.col_ids[0].tolist() not in [cut[i:i + 4].tolist() for i in range(len(cut) - 3)]
  assert builder.col_ids[9].tolist() in [cut[i:i + 4].tolist() for i in range(len(cut) - 3)]


def test_features_are_shifted_and_padded(setup):
  _, builder, *_ = setup
  f = builder.to_features(np.asarray([5, 6, 7], np.int32), np.asarray([8, 9], np.int32))
  assert f["encoder_input_tokens"].shape == (builder.max_input_len,)
  assert f["decoder_target_tokens"][:4].tolist() == [8, 9, EOS_ID, PAD_ID]
  assert f["decoder_input_tokens"][:4].tolist() == [PAD_ID, 8, 9, EOS_ID]
  assert f["decoder_loss_weights"][:4].tolist() == [1, 1, 1, 0]


def _source(setup, seed=0, epochs=2):
  _, builder, _, _, prepared = setup
  sources = open_samples(prepared.tfds_dir)
  sizes = load_config("tiny").tasks.sizes.to_dict()
  available = {"nrip": len(sources["rec_train"]), "nsip": len(sources["search_train"]),
               "nsqp": len(sources["search_train"]), "desc2id": prepared.dataset.num_items,
               "id2desc": prepared.dataset.num_items, "adhoc": prepared.dataset.num_items}
  pseudo = [[np.asarray([10 + i % 5, 11], np.int32)] for i in range(prepared.dataset.num_items)]
  return pipeline.MixtureSource(builder, pipeline.default_fetchers(sources), available, sizes, epochs, seed, pseudo)


def test_epoch_mixture_sizes(setup):
  src = _source(setup)
  tasks, rows = pipeline.sample_epoch(src.available, src.sizes, 0, 0)
  counts = np.bincount(tasks, minlength=len(TASKS))
  assert counts[TASKS.index("nrip")] == src.available["nrip"]          # every rec row once
  assert counts[TASKS.index("nsip")] == 300 and counts[TASKS.index("adhoc")] == 50
  nrip_rows = rows[tasks == TASKS.index("nrip")]
  assert sorted(nrip_rows.tolist()) == list(range(src.available["nrip"]))


def test_epoch_tasks_drawn_with_replacement():
  """The reference draws NSIP rows and Desc2ID/ID2Desc items with replacement; other tasks are sampled
  without replacement (or every row, topped up when more are asked for)."""
  available, sizes = {"nrip": 5, "nsip": 50, "desc2id": 50}, {"nrip": -1, "nsip": 40, "desc2id": 40}
  tasks, rows = pipeline.sample_epoch(available, sizes, 0, 0, with_replacement=("nsip",))
  nsip = rows[tasks == TASKS.index("nsip")]
  desc = rows[tasks == TASKS.index("desc2id")]
  assert len(nsip) == 40 and len(np.unique(nsip)) < 40 and nsip.max() < 50    # repeats: 40 draws of 50
  assert len(desc) == 40 and len(np.unique(desc)) == 40
  with pytest.raises(ValueError, match=r"tasks.with_replacement=\('search',\): expected a subset of"):
    load_config("tiny", ["tasks.with_replacement=search"])      # refused when the config loads


def _batches(it, n):
  return [next(it) for _ in range(n)]


def test_pipeline_deterministic_and_restorable(setup):
  src = _source(setup)
  a = _batches(pipeline.make_train_iterator(src, 8), 6)
  b = _batches(pipeline.make_train_iterator(_source(setup), 8), 6)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert a[0]["encoder_input_tokens"].shape == (8, setup[1].max_input_len)
  assert a[0]["encoder_input_tokens"].dtype == np.int32
  c = _batches(pipeline.make_train_iterator(_source(setup, seed=1), 8), 1)
  assert not np.array_equal(c[0]["encoder_input_tokens"], a[0]["encoder_input_tokens"])
  it = pipeline.make_train_iterator(src, 8)
  _batches(it, 3)
  state = it.get_state()
  restored = pipeline.make_train_iterator(_source(setup), 8)
  restored.set_state(state)
  for x, y in zip(_batches(restored, 3), a[3:]):
    np.testing.assert_array_equal(x["decoder_target_tokens"], y["decoder_target_tokens"])


class _CountingSource:
  """A random-access source that counts single-record and batched reads."""

  def __init__(self, source):
    self.source, self.single, self.batched = source, 0, 0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.single += 1
    return self.source[i]

  def __getitems__(self, rows):
    self.batched += 1
    return self.source.__getitems__(rows)


def test_batches_read_stored_samples_in_one_batched_read_per_task(setup):
  """A single ArrayRecord read costs time that grows with the file: a batch must read each task's samples in
  one batched read, with the same examples as one by one."""
  _, builder, _, _, prepared = setup
  sources = dict(open_samples(prepared.tfds_dir))
  counted = {name: _CountingSource(sources[name]) for name in ("rec_train", "search_train")}
  src = _source(setup)
  one_by_one = [src.example(i) for i in range(16)]
  src.fetch = pipeline.default_fetchers({**sources, **counted})
  batch = pipeline.PaddedBatches(src, 16)[0]
  assert sum(c.single for c in counted.values()) == 0
  assert 1 <= sum(c.batched for c in counted.values()) <= 2
  for j, (inputs, targets, task) in enumerate(one_by_one):
    expected = pipeline.example_features(builder, j, inputs, targets, task)
    for key in expected:
      np.testing.assert_array_equal(batch[key][j], expected[key])


def test_worker_processes_give_the_same_batches_and_restore(setup):
  """`workers` > 0 builds batches in grain worker processes: the same batches in the same order, and the
  iterator state restores into a worker iterator."""
  a = _batches(pipeline.make_train_iterator(_source(setup), 8), 6)
  it = pipeline.make_train_iterator(_source(setup), 8, workers=2)
  b = _batches(it, 3)
  state = it.get_state()
  restored = pipeline.make_train_iterator(_source(setup), 8, workers=2)
  restored.set_state(state)
  b += _batches(restored, 3)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  with pytest.raises(ValueError, match="pipeline_workers"):
    pipeline.make_train_iterator(_source(setup), 8, length_buckets=(16,), workers=2)


def test_two_hosts_see_disjoint_shards_covering_the_data(setup):
  src = _source(setup, epochs=1)

  def indices(host, hosts):
    return np.concatenate([b["example_index"] for b in pipeline.make_train_iterator(src, 8, host, hosts)])

  host0, host1 = indices(0, 2), indices(1, 2)
  assert not set(host0.tolist()) & set(host1.tolist())
  assert ((host0 % 8) < 4).all() and ((host1 % 8) >= 4).all()   # each host: a contiguous half of every batch
  covered = np.sort(np.concatenate([host0, host1]))
  assert len(covered) >= len(src) - 8                  # only each host's last partial batch is dropped
  np.testing.assert_array_equal(covered, np.arange(len(covered)))


def test_too_small_vocabulary_is_a_clear_error():
  from gensar_jax.data.tokenizer import train_sentencepiece
  with pytest.raises(ValueError, match=r"data.vocab_size=100 is too small: SentencePiece needs at least \d+"):
    train_sentencepiece(["some text for the tokenizer"] * 10, 100)


def test_desc2id_and_id2desc_pair_each_item_with_both_identifier_views(setup):
  """The view varies per example (not `row % 2`, which pairs an item with one view)."""
  _, builder, *_ = setup
  src = _source(setup, epochs=6)
  views: dict[tuple[str, int], list] = {}
  for index in range(len(src)):
    epoch, pos = divmod(index, src.epoch_len)
    task_ids, rows = src._plan(epoch)
    task = TASKS[int(task_ids[pos])]
    if task not in ("desc2id", "id2desc"):
      continue
    row = int(rows[pos])
    f = src[index]
    ident = f["decoder_target_tokens"] if task == "desc2id" else f["encoder_input_tokens"]
    is_sem = np.isin(builder.sem_ids[row][2:], ident).all()   # the view-specific codes
    is_col = np.isin(builder.col_ids[row][2:], ident).all()
    assert is_sem != is_col, "exactly one view's specific codes appear in the example"
    views.setdefault((task, row), []).append(int(is_col))
  for task in ("desc2id", "id2desc"):
    repeated = [v for (t, _), v in views.items() if t == task and len(v) >= 3]
    both = sum(len(set(v)) == 2 for v in repeated)
    assert repeated and both >= 0.5 * len(repeated), \
        f"{task}: {both} of {len(repeated)} items drawn 3+ times were paired with both views"
    collab_share = np.mean([x for (t, _), v in views.items() if t == task for x in v])
    assert 0.35 < collab_share < 0.65


# ------------------------------------------------------------------------------- length-bucketed batches

BUCKETS, TARGET_BUCKETS = (16, 32, 48, 64), (8,)


def _bucketed(src, batch=8, window=4, host=0, hosts=1, buckets=BUCKETS):
  return pipeline.BucketedBatches(src, batch, buckets, TARGET_BUCKETS, window, host, hosts)


def test_window_batches_group_by_length_in_a_seeded_order():
  lengths = np.asarray([5, 1, 9, 3, 7, 2, 8, 4, 6, 0, 11, 10])
  rows = pipeline.window_batches(lengths, 4, seed=0, window=3)
  assert sorted(rows.ravel().tolist()) == list(range(12))                       # a permutation of the window
  maxima = sorted(lengths[r].max() for r in rows)
  assert maxima == [3, 7, 11]                                                   # each batch: 4 consecutive lengths
  np.testing.assert_array_equal(rows, pipeline.window_batches(lengths, 4, seed=0, window=3))
  orders = {tuple(lengths[pipeline.window_batches(lengths, 4, seed=s, window=3)[:, 0]]) for s in range(8)}
  assert len(orders) > 1                                                        # batch order depends on the seed
  np.testing.assert_array_equal(rows, np.argsort(lengths, kind="stable").reshape(3, 4)[
      np.random.default_rng([0, 7, 3]).permutation(3)])                        # the order before groups existed
  groups = np.asarray([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1])
  grouped = pipeline.window_batches(lengths, 4, seed=0, window=3, groups=groups)
  assert sorted(grouped.ravel().tolist()) == list(range(12))
  by_group = sorted((tuple(sorted(groups[r].tolist())), tuple(sorted(lengths[r].tolist()))) for r in grouped)
  assert by_group == [((0, 0, 0, 0), (0, 1, 2, 3)), ((0, 0, 0, 0), (4, 5, 6, 7)), ((0, 1, 1, 1), (8, 9, 10, 11))]
  assert pipeline.bucket_width(17, pipeline.bucket_widths((16, 32, 200), 96)) == 32
  np.testing.assert_array_equal(pipeline.bucket_widths((64, 16, 200), 96), [16, 64, 96])


def _strip(features, key, width):
  """The example's row of `key` cut to `width` after checking that nothing but padding lies beyond it."""
  row = features[key]
  assert not np.any(row[width:]), f"{key}: non-pad tokens beyond width {width}"
  return row[:width]


def test_bucketed_batches_hold_the_same_examples_and_tokens(setup):
  src = _source(setup)
  batches = _bucketed(src)
  widths = set()
  windows = {}
  for k in range(len(batches)):
    b = batches[k]
    s, t = b["encoder_input_tokens"].shape[1], b["decoder_target_tokens"].shape[1]
    widths.add((s, t))
    lengths = (b["encoder_input_tokens"] != 0).sum(1)
    targets = (b["decoder_loss_weights"] > 0).sum(1)
    smaller_s = [w for w in batches.input_widths if w < s]
    smaller_t = [w for w in batches.target_widths if w < t]
    assert lengths.max() <= s and (not smaller_s or lengths.max() > max(smaller_s))   # the smallest bucket that fits
    assert targets.max() <= t and (not smaller_t or targets.max() > max(smaller_t))
    for row, index in enumerate(b["example_index"]):
      full = src[int(index)]
      windows.setdefault(int(index) // (4 * 8), []).append(int(index))
      for key, width in (("encoder_input_tokens", s), ("decoder_input_tokens", t), ("decoder_target_tokens", t),
                         ("decoder_loss_weights", t)):
        np.testing.assert_array_equal(b[key][row], _strip(full, key, width), err_msg=f"{key} of example {index}")
      assert b["task"][row] == full["task"]
  # Every window holds exactly the examples the unbucketed batches of that window hold.
  for w, indices in windows.items():
    assert sorted(indices) == list(range(w * 32, w * 32 + len(indices)))
  assert sum(map(len, windows.values())) == len(batches) * 8 == (len(src) // 8) * 8
  # Long targets share batches: per window, no more wide-target batches than its long targets fill.
  for w in windows:
    wide = sum(batches[k]["decoder_target_tokens"].shape[1] > batches.target_widths[0] for k in range(4 * w, 4 * w + 4)
               if k < len(batches))
    long_targets = sum(int((src[i]["decoder_loss_weights"] > 0).sum()) > batches.target_widths[0] for i in windows[w])
    assert wide == -(-long_targets // 8)
  # A bounded set of compiled shapes, and bucketing does pad less than the maximum width.
  assert widths <= {(int(s), int(t)) for s in batches.input_widths for t in batches.target_widths}
  assert min(s for s, _ in widths) < setup[1].max_input_len


def test_bucketed_hosts_split_each_global_batch(setup):
  src = _source(setup, epochs=1)
  single = _bucketed(src)
  hosts = [_bucketed(src, host=h, hosts=2) for h in range(2)]
  for k in range(len(single)):
    whole = single[k]
    parts = [h[k] for h in hosts]
    for key in whole:
      assert parts[0][key].shape == parts[1][key].shape                 # every host picks the same widths
      half = len(whole[key]) // 2                                       # host h: the h-th contiguous block
      np.testing.assert_array_equal(parts[0][key], whole[key][:half])
      np.testing.assert_array_equal(parts[1][key], whole[key][half:])
    np.testing.assert_array_equal(np.sort(single.global_batch(k)), np.sort(whole["example_index"]))


def test_bucketed_iterator_is_deterministic_and_restorable(setup):
  def make(seed=0):
    return pipeline.make_train_iterator(_source(setup, seed=seed), 8, length_buckets=BUCKETS,
                                        target_buckets=TARGET_BUCKETS, bucket_window=4)
  a = _batches(make(), 7)
  b = _batches(make(), 7)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(_batches(make(seed=1), 1)[0]["example_index"], a[0]["example_index"])
  it = make()
  _batches(it, 5)                      # stops inside the second window
  restored = make()
  restored.set_state(it.get_state())
  for x, y in zip(_batches(restored, 2), a[5:]):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_bucketed_batch_has_the_loss_of_the_fully_padded_batch(setup):
  """Pad width changes nothing but masked positions: same loss as the batch padded to the maximum."""
  import jax
  from gensar_jax.model.t5 import T5, T5Config, init_params
  from gensar_jax.train.step import weighted_cross_entropy
  src = _source(setup)
  batches = _bucketed(src)
  bucketed = min((batches[k] for k in range(4)), key=lambda b: b["encoder_input_tokens"].shape[1])
  full = {key: np.stack([src[int(i)][key] for i in bucketed["example_index"]]) for key in bucketed}
  assert bucketed["encoder_input_tokens"].shape[1] < full["encoder_input_tokens"].shape[1]
  cfg = T5Config.tiny(setup[0].vocab_size, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                      num_decoder_layers=1, dropout_rate=0.0)
  params = init_params(cfg, jax.random.key(0))

  @jax.jit
  def loss(batch):
    logits = T5(cfg).apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    total, weight, _ = weighted_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    return total / weight

  keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
  np.testing.assert_allclose(loss({k: bucketed[k] for k in keys}), loss({k: full[k] for k in keys}), rtol=1e-5)


def test_train_stage_iterator_follows_the_tasks_config(setup):
  from gensar_jax.train.stage import loop_iterator
  tasks = load_config("tiny").tasks
  padded = next(loop_iterator(_source(setup), 8, tasks))
  assert padded["encoder_input_tokens"].shape == (8, tasks.max_input_len)
  tasks.length_buckets, tasks.target_buckets, tasks.bucket_window = BUCKETS, TARGET_BUCKETS, 4
  bucketed = next(loop_iterator(_source(setup), 8, tasks))
  np.testing.assert_array_equal(bucketed["example_index"], _bucketed(_source(setup))[0]["example_index"])


def test_adhoc_prompt_is_the_search_prompt_without_its_history_sentence(setup):
  """The reference fills NSIP's history sentence with nothing for ad-hoc samples, so the input starts at
  the query sentence; its template 0, written out here, is what our template 0 gives."""
  tok, builder, _, _, _ = setup
  query = np.asarray([10, 11, 12], np.int32)
  inputs, targets = builder.build("adhoc", {"item": 3, "pseudo_query": query}, template=0)
  authors = ("{history} The following is the user's search query {query}. Please predict the next item the user "
             "will click on after the search.").format(history="", query="<src_query>{query}").strip()
  before, after = authors.split("{query}")
  np.testing.assert_array_equal(inputs, np.concatenate([tok.encode(before), query, tok.encode(after)]))
  np.testing.assert_array_equal(targets, builder.search_target(3))
  for template in range(10):
    inputs, _ = builder.build("adhoc", {"item": 3, "pseudo_query": query}, template=template)
    assert "history" not in tok.decode(inputs.tolist()).lower()
    assert "{query}" in TEMPLATES["adhoc"][template] and "{history}" not in TEMPLATES["adhoc"][template]


def test_item_tasks_draw_from_the_items_with_interactions():
  """tasks.item_pool=interacted: Desc2ID / ID2Desc draw from the items of the kept rec and search rows, ad-hoc
  from those of the kept search rows (the notebook's `rec_item_set | src_item_set` and `src_item_set`)."""
  from authors_notebook import hand_made_dataset, notebook_replay_of
  from gensar_jax.data.splits import build_task_samples
  from gensar_jax.data.task_data import item_pools
  data = hand_made_dataset()
  rec, search = build_task_samples(data, history_len=5, min_events=3, reference_history=True)
  replay = notebook_replay_of(data)
  pools = item_pools({"rec": rec, "search": search}, data.num_items, "interacted")
  interacted = sorted(set(replay["rec_pool"]) | set(replay["search_pool"]))
  assert pools["desc2id"].tolist() == pools["id2desc"].tolist() == interacted
  assert pools["adhoc"].tolist() == sorted(set(replay["search_pool"]))
  assert all(p.tolist() == list(range(data.num_items))
             for p in item_pools({"rec": rec, "search": search}, data.num_items, "catalogue").values())
  with pytest.raises(ValueError, match="tasks.item_pool='items': expected one of"):
    load_config("tiny", ["tasks.item_pool=items"])


def test_item_task_rows_are_read_through_the_item_pool(setup):
  """Row r of an item task is the pool's r-th item: its target and (ad-hoc) its pseudo-query are that item's."""
  _, builder, _, _, prepared = setup
  sources = open_samples(prepared.tfds_dir)
  pool = np.arange(5, prepared.dataset.num_items, 7)
  pools = {"desc2id": pool, "id2desc": pool, "adhoc": pool}
  pseudo = [[np.asarray([10 + i % 50, 11 + i % 50], np.int32)] for i in range(prepared.dataset.num_items)]
  sizes = {"desc2id": 20, "id2desc": 20, "adhoc": 20}
  available = {task: len(pool) for task in sizes}
  src = pipeline.MixtureSource(builder, pipeline.default_fetchers(sources, pools), available, sizes, 1, 0, pseudo,
                               with_replacement=tuple(sizes))
  tasks, rows = pipeline.sample_epoch(available, sizes, 0, 0, tuple(sizes))
  for index, (task, row) in enumerate(zip(tasks, rows)):
    inputs, targets, _ = src.example(index)
    item = int(pool[row])
    if TASKS[task] == "adhoc":
      np.testing.assert_array_equal(targets, builder.search_target(item))
      assert any(inputs[i:i + 2].tolist() == [10 + item % 50, 11 + item % 50] for i in range(len(inputs) - 1))
    elif TASKS[task] == "id2desc":
      np.testing.assert_array_equal(targets, builder.item_text_ids[item])
    else:
      assert targets.tolist() in (builder.sem_ids[item].tolist(), builder.col_ids[item].tolist())


def test_per_epoch_task_sampling_is_the_authors():
  """The reference run (`finetune/run_amazon.py`): train_data_sample_num 0,100000,1000,1000,1000,1000 for
  SeqRec, PerSrc, QGen, AdHoc, Item2Index, Index2Item; 0 reads every row once, a positive number draws that
  many samples with `random.choice` (with replacement), Item2Index / Index2Item give 2 samples per draw and
  AdHoc `max_query_per_doc` (1 in the run)."""
  authors = {"nrip": 0, "nsip": 100_000, "nsqp": 1000, "adhoc": 1000, "desc2id": 1000, "id2desc": 1000}
  per_draw = {"nrip": 1, "nsip": 1, "nsqp": 1, "adhoc": 1, "desc2id": 2, "id2desc": 2}
  for name in ("electronics", "tiny"):
    tasks = load_config(name).tasks
    assert set(tasks.with_replacement) == {task for task, n in authors.items() if n > 0}
    assert tasks.item_pool == "interacted"
  sizes = load_config("electronics").tasks.sizes.to_dict()
  assert sizes == {task: -1 if n == 0 else n * per_draw[task] for task, n in authors.items()}
