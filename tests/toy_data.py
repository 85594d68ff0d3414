"""A synthetic copy task in the training format, for the tests of the training loop and the mesh."""
import grain
import numpy as np


def toy_copy_dataset(vocab_size: int, batch_size: int, encoder_length: int = 12, decoder_length: int = 5,
                     num_examples: int = 64, seed: int = 0, process_index: int = 0, process_count: int = 1):
  """A synthetic copy task (target = first encoder tokens, then eos) as a repeating grain `MapDataset` of
  batches in the training format, for the training-loop tests.

  `batch_size` is the global batch; process `process_index` of `process_count` gets its contiguous block
  of `batch_size // process_count` rows, so the processes' blocks in order form the global batch.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
  rng = np.random.default_rng(seed)
  encoder = rng.integers(3, vocab_size, size=(num_examples, encoder_length)).astype(np.int32)
  lengths = rng.integers(decoder_length, encoder_length + 1, size=num_examples)
  encoder[np.arange(encoder_length)[None, :] >= lengths[:, None]] = 0
  targets = np.concatenate([encoder[:, :decoder_length - 1], np.ones((num_examples, 1), np.int32)], axis=1)
  decoder_inputs = np.concatenate([np.zeros((num_examples, 1), np.int32), targets[:, :-1]], axis=1)
  weights = np.ones_like(targets, np.float32)

  def example(i):
    return {"encoder_input_tokens": encoder[i], "decoder_input_tokens": decoder_inputs[i],
            "decoder_target_tokens": targets[i], "decoder_loss_weights": weights[i], "example_id": np.int32(i)}

  rows = batch_size // process_count
  dataset = (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat().map(example)
             .batch(batch_size, drop_remainder=True))
  return dataset.map(lambda b: {k: v[process_index * rows:(process_index + 1) * rows] for k, v in b.items()})
