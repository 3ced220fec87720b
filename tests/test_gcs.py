"""Runs and files in a bucket, against a real GCS API served on 127.0.0.1 by the test.

The emulator (``gcp-storage-emulator``) speaks the GCS JSON API; the code reaches it through
gcsfs (``STORAGE_EMULATOR_HOST``) and TensorStore (``TENSORSTORE_GCS_HTTP_URL``). The test reads
the bucket back with gcsfs' core client, not with the code under test.
"""

import json
import os
import re
import socket
import struct

import pytest
from test_train import kill_when, run_train

BUCKET = "bucket"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _with_generation_headers(download):
  """The emulator's object download, plus the generation headers that GCS sends and TensorStore
  needs to rewrite an existing object (without them: "Malformed StorageGeneration")."""
  def handler(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj["metageneration"]
    except Exception:  # noqa: BLE001 - not found: the download itself answers 404
      pass
    return download(request, response, storage, *args, **kwargs)
  return handler


@pytest.fixture(scope="module")
def gcs():
  """``(env, gcsfs filesystem for the test)`` on an in-memory bucket; ``env`` (the emulator's
  address for gcsfs and TensorStore) is also set in this process, for the path layer's tests."""
  from gcp_storage_emulator.handlers import objects
  from gcp_storage_emulator.server import create_server
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(objects, "download", _with_generation_headers(objects.download))
    for k, v in env.items():   # before gcsfs is imported: it picks its class from them
      mp.setenv(k, v)
    from gcsfs.core import GCSFileSystem   # the core client: no gRPC probe of the bucket type
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
      yield env, GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)
    finally:
      server.stop()


def _objects(fs, prefix: str) -> set:
  fs.invalidate_cache()
  return set(fs.find(prefix))


def _records(data: bytes):
  """The payloads of a TFRecord file (TensorBoard events): [len u64][crc][payload][crc]..."""
  out, at = [], 0
  while at < len(data):
    (n,) = struct.unpack("<Q", data[at:at + 8])
    out.append(data[at + 12:at + 12 + n])
    at += 12 + n + 4
  assert at == len(data), "a truncated record"
  return out


def test_path_layer_in_a_bucket(gcs, tmp_path, monkeypatch):
  from infini_jax import paths
  _, fs = gcs
  monkeypatch.chdir(tmp_path)
  run = f"gs://{BUCKET}/unit"
  paths.makedirs(run)
  paths.write_text(f"{run}/eval/ppl.json", "{}")
  assert fs.cat(f"{BUCKET}/unit/eval/ppl.json") == b"{}"
  assert paths.isdir(f"{run}/eval") and paths.isfile(f"{run}/eval/ppl.json")
  assert not paths.isfile(f"{run}/eval") and not paths.exists(f"{run}/nothing")
  assert paths.listdir(run) == ["eval"] and paths.read_text(f"{run}/eval/ppl.json") == "{}"
  log = paths.Appender(f"{run}/metrics.jsonl", min_interval_s=3600)
  log.write("1\n")
  log.flush()   # the first flush uploads at once
  log.write("2\n")
  log.flush()   # within min_interval_s of the last upload: kept for later
  assert fs.cat(f"{BUCKET}/unit/metrics.jsonl") == b"1\n"
  log.close()
  assert fs.cat(f"{BUCKET}/unit/metrics.jsonl") == b"1\n2\n"
  again = paths.Appender(f"{run}/metrics.jsonl")   # a resumed run appends to what is there
  again.write(b"3\n")
  again.flush()
  assert fs.cat(f"{BUCKET}/unit/metrics.jsonl") == b"1\n2\n3\n"
  again.close()
  with pytest.raises(ValueError, match="Appender"):
    paths.open(f"{run}/metrics.jsonl", "a")
  assert os.listdir(tmp_path) == []


def test_sweep_summary_and_a_run_found_in_a_bucket(gcs, tmp_path, monkeypatch):
  import gin
  from infini_jax.commands import gin_flags, runs
  from infini_jax.commands.sweep import summary as sweep_summary
  _, fs = gcs
  monkeypatch.chdir(tmp_path)
  sweep = f"gs://{BUCKET}/sweep"
  run = f"{sweep}/lr_0.1"
  fs.pipe({
      f"{BUCKET}/sweep/sweep.json": json.dumps({
          "runs": [{"name": "lr_0.1", "bindings": {"LEARNING_RATE": 0.1}, "steps": 2}],
          "bindings": ["LEARNING_RATE"]}).encode(),
      f"{BUCKET}/sweep/lr_0.1/metrics.jsonl":
          b'{"step": 1, "kind": "train", "loss": 3.0}\n{"step": 2, "kind": "train", "loss": 2.5}\n',
      f"{BUCKET}/sweep/lr_0.1/config.gin": b"TRAIN_STEPS = 2\n",
      f"{BUCKET}/sweep/lr_0.1/checkpoints/2/commit_success.txt": b""})
  [row] = sweep_summary.summarize(sweep, "train_loss")
  assert (row["name"], row["status"], row["train_loss"]) == ("lr_0.1", "finished", 2.5)
  written = {f[len(BUCKET) + 1:] for f in _objects(fs, f"{BUCKET}/sweep")}
  assert {"sweep/results.csv", "sweep/results.md", "sweep/loss_curves.png"} <= written
  assert "lr_0.1,0.1,finished,2,2.5" in fs.cat(f"{BUCKET}/sweep/results.csv").decode()
  # What an evaluation given only --checkpoint=gs://... looks up, and gin reading the config there.
  assert runs.checkpoint_dir(run, None) == f"{run}/checkpoints"
  assert runs.run_config(f"{run}/checkpoints/2") == f"{run}/config.gin"
  assert runs.default_out(f"{run}/checkpoints/2") == f"{run}/eval"
  try:
    gin_flags.parse([f"{run}/config.gin"], [], [])
    assert gin.query_parameter("%TRAIN_STEPS") == 2
  finally:
    gin.clear_config()
  assert os.listdir(tmp_path) == []


def test_appender_on_a_local_disk_appends(tmp_path):
  from infini_jax import paths
  for text in ("a\n", "b\n"):
    log = paths.Appender(tmp_path / "run" / "metrics.jsonl", min_interval_s=3600)
    log.write(text)
    log.flush()   # locally every flush reaches the file
    assert (tmp_path / "run" / "metrics.jsonl").read_text().endswith(text)
    log.close()
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == "a\nb\n"


def test_run_in_a_bucket_killed_and_resumed_keeps_everything_there(gcs, tmp_path):
  from tensorboardX.proto import event_pb2
  env, fs = gcs
  run = f"{BUCKET}/run"
  # 30 steps: after the saves at 3 and 6 are seen, 24 steps and 8 saves are left before the run
  # would end on its own (with 10, a run was once killed only after saving its last step, and the
  # resumed run had nothing left to do). Every save is kept, so step 3 is still there when the
  # listing sees step 6.
  flags = ["--gin.TRAIN_STEPS=30", "--gin.train.checkpoint_every=3",
           "--gin.train.keep_checkpoints=10"]
  proc = run_train(f"gs://{run}", *flags, env=env, cwd=tmp_path, wait=False)
  # In a bucket orbax writes the step folder in place and commits it with this marker.
  committed = {f"{run}/checkpoints/{s}/commit_success.txt" for s in (3, 6)}
  # Each check lists the bucket through the emulator in this process: twice a second, not in a
  # tight loop that would hold up the run's own uploads.
  kill_when(proc, lambda: committed <= _objects(fs, run), "its checkpoints at steps 3 and 6",
            poll=0.5)
  assert f"{run}/checkpoints/3/commit_success.txt" in _objects(fs, run), \
      f"killed before its first checkpoint:\n{proc.stdout.read()[-3000:]}"
  resumed = run_train(f"gs://{run}", *flags, env=env, cwd=tmp_path)
  logged = re.search(r"^step\s+(\d+)", resumed.stdout, re.M)
  assert logged, f"the resumed run logged no step:\n{resumed.stdout[-2000:]}"
  first = int(logged.group(1))
  assert first > 3, f"did not resume from a checkpoint in the bucket:\n{resumed.stdout[-2000:]}"

  files = {f[len(run) + 1:] for f in _objects(fs, run)}
  assert {"config.gin", "metrics.jsonl", "checkpoints/30/commit_success.txt"} <= files, files
  assert "TRAIN_STEPS = 30" in fs.cat(f"{run}/config.gin").decode()
  rows = [json.loads(line) for line in fs.cat(f"{run}/metrics.jsonl").decode().splitlines()]
  # The killed run's lines were uploaded as logged and the resumed run appended to them.
  assert sorted({r["step"] for r in rows if r.get("kind") == "train"}) == list(range(1, 31))
  events = sorted(f for f in files if f.startswith("tensorboard/events.out.tfevents."))
  assert len(events) == 2, files   # one per run, each a whole file of records
  steps = [{e.step for e in map(event_pb2.Event.FromString, _records(fs.cat(f"{run}/{name}")))
            for v in e.summary.value if v.tag == "train/loss"} for name in events]
  # The resumed run closed its file: all its steps. The killed one had uploaded its file at the
  # first flush, then at most every TENSORBOARD_UPLOAD_S (60 s): what came after is lost.
  assert steps[1] == set(range(first, 31)), steps
  assert os.listdir(tmp_path) == [], "the run wrote into its working directory (a 'gs:' folder?)"
