"""Resuming the input through the real entry point: the global example sequence survives a change
in the number of processes (2 -> 1 -> 2), with example ids read from the examples' own text."""

import concurrent.futures
import glob
import json
import os

import numpy as np

from test_train import ROOT, free_port, run_train

DOCS = 42        # 2 held out for validation (text_files.validation_ids): 40 train examples
SEQ_LEN = 64


def _corpus(folder):
  """One example per document: "id0007 " and filler, shorter than SEQ_LEN bytes."""
  folder.mkdir()
  for i in range(DOCS):
    (folder / f"doc{i:02d}.txt").write_text(f"id{i:04d} " + "abcdefgh" * 5)
  return folder


def _train(model_dir, steps, processes, flags, trace):
  env = {"TRACE_DIR": str(trace)}
  if processes == 1:
    run_train(model_dir, f"--gin.TRAIN_STEPS={steps}", *flags, env=env)
    return
  port = free_port()
  procs = [run_train(model_dir, f"--gin.TRAIN_STEPS={steps}", *flags, wait=False,
                     env={**env, "INFINI_COORDINATOR": f"127.0.0.1:{port}",
                          "INFINI_NUM_PROCESSES": str(processes), "INFINI_PROCESS_ID": str(i)})
           for i in range(processes)]
  with concurrent.futures.ThreadPoolExecutor(processes) as pool:   # drain every pipe at once
    outputs = list(pool.map(lambda p: p.communicate(timeout=600)[0], procs))
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]


def _global_batches(trace, batch_size):
  """{global batch k: its example ids, row by row}, from every process's records."""
  rows = {}
  for path in glob.glob(str(trace / "*.jsonl")):
    with open(path) as f:
      for rec in map(json.loads, f):
        local = batch_size // rec["shards"]
        for r, example in enumerate(rec["ids"]):
          key = (rec["batch"], rec["shard"] * local + r)
          assert key not in rows, f"global batch {key[0]} row {key[1]} was read twice"
          rows[key] = example
  batches = {}
  for (k, r), example in sorted(rows.items()):
    batches.setdefault(k, []).append(example)
  return batches


def test_two_then_one_then_two_processes_continue_the_same_global_sequence(tmp_path):
  import trace_examples
  from infini_jax import data
  corpus, data_dir, trace = _corpus(tmp_path / "corpus"), tmp_path / "tfds", tmp_path / "trace"
  trace.mkdir()
  flags = [f"--gin_file={os.path.join(ROOT, 'tests', 'configs', 'trace_examples.gin')}",
           f"--gin.SEQ_LEN={SEQ_LEN}", "--gin.DataConfig.task='local'",
           f"--gin.DataConfig.corpus_pattern='{corpus}'", f"--gin.DataConfig.data_dir='{data_dir}'"]
  run = tmp_path / "run"
  for steps, processes in ((2, 2), (4, 1), (7, 2)):
    _train(run, steps, processes, flags, trace)
  batches = _global_batches(trace, 8)
  assert sorted(batches) == list(range(7)) and all(len(b) == 8 for b in batches.values())
  fed = [i for k in range(7) for i in batches[k]]
  # Within an epoch no example repeats and none is left out; the next epoch is another order.
  first, second = fed[:40], fed[40:]
  assert len(set(first)) == 40 and set(first) <= set(range(DOCS)) and -1 not in fed
  assert len(set(second)) == len(second) and set(second) <= set(first)
  assert second != first[:len(second)]
  # The same sequence, row for row, as one process reading without a break.
  cfg = data.DataConfig(task="local", corpus_pattern=str(corpus), data_dir=str(data_dir),
                        seq_len=SEQ_LEN, segment_len=16, batch_size=8)
  pipe = data.build_pipeline(cfg)
  straight = [trace_examples.example_id(row) for _ in range(7)
              for row in pipe.next_local()["inputs"]]
  assert fed == straight
  # Two processes resumed from its state (batch 7) read the global batch it reads next.
  halves = [data.build_pipeline(cfg, shard_index=i, num_shards=2, start_position=pipe.state())
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h.next_local()["inputs"] for h in halves]),
                                pipe.next_local()["inputs"])
