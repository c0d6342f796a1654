"""Benchmarks (never timed tests):

  python -m smtc_jax.bench step --config configs/X.py [--frozen] [--fed] [--trace_dir DIR] [--config.a.b=v]
  python -m smtc_jax.bench data --config configs/X.py --workdir DIR
  python -m smtc_jax.bench propagate --config configs/X.py [--frames 70] [--davis_out DIR]
  python -m smtc_jax.bench davis --config configs/X.py [--reference_metrics FILE]
  python -m smtc_jax.bench eval --config configs/X.py --workdir DIR [--config.eval.a=v]

`step` compiles and times the real jitted train step (median of --steps after
--warmup, block_until_ready; with --fed also the same step fed by the input
pipeline as the training loop runs it: `fed_step_s`), reads its FLOPs from XLA's
cost analysis (of the lowered whole-batch step: `step_flops`) and its
activation memory (temporary buffers) from XLA's memory analysis, measures this
machine's dense matmul peak in the same run, and prints the ratio (with
train.microbatch, `xla_temp_bytes` is the memory of a step that holds one
micro-batch of `microbatch_clips` clips per device at a time); with
--trace_dir it records a jax.profiler trace and lists the costliest XLA ops. `data`
times the grain input pipeline in clips/s (its steady state: the batches it made ahead
are drawn before the clock starts); `propagate` runs label propagation
and object discovery on a random 854x480 video (the model, our full-size proposals and
the authors' protocol's per-frame candidates timed apart; with --davis_out it also writes
that video as a DAVIS folder and a filelist, to time other code on it); `davis` times J and F of a
480p sequence against the DAVIS team's own implementation when its file is
given (and reports their largest difference); `eval` runs `--mode=eval` on DIR as
main does and reports the seconds of each of its stages. Each ends with one JSON line.
"""

import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", "/tmp/smtc_bench", "Where data is generated / read.")
flags.DEFINE_integer("steps", 10, "Timed iterations (after warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed iterations first.")
flags.DEFINE_bool("frozen", False, "Time the frozen-encoder step (grad_iter stage).")
flags.DEFINE_bool("fed", False, "step: also time the step fed by the input pipeline as the "
                  "training loop runs it (data from --workdir), next to the step alone.")
flags.DEFINE_integer("matmul_size", 0, "Side of the peak-measuring matmul (0 = by backend).")
flags.DEFINE_string("trace_dir", "", "step: also record a jax.profiler trace of --trace_steps "
                    "steps there and report the XLA ops that took longest, by kind and shape.")
flags.DEFINE_integer("trace_steps", 2, "Steps recorded with --trace_dir.")
flags.DEFINE_integer("top_ops", 12, "Op groups reported with --trace_dir.")
flags.DEFINE_integer("frames", 70, "Frames of the 480p video of `propagate` and `davis`.")
flags.DEFINE_integer("objects", 3, "Objects of the `davis` sequence.")
flags.DEFINE_string("davis_out", "", "propagate: also write its video to this folder in the "
                    "DAVIS layout (JPEGImages/480p/bench, Annotations/480p/bench) with "
                    "filelist.txt (frames folder, annotations folder: the CRW/SMTC eval_prop.py list).")
flags.DEFINE_string("reference_metrics", "",
                    "davis2017-evaluation's davis2017/metrics.py or davisinteractive's "
                    "metrics/jaccard.py, to time and check `davis` against.")


def _flops_of(stage) -> float:
  analysis = stage.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _median_seconds(fn, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak(dtype, size: int) -> float:
  """FLOP/s of a large square matmul on the default device."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  f = jax.jit(lambda x, y: x @ y)
  seconds = _median_seconds(lambda: f(a, b), 2, 5)
  return 2.0 * size**3 / seconds


def peak_memory_bytes() -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process max RSS"


HLO_KINDS = ("convolution", "dot", "exponential", "erf", "reduce", "divide", "transpose")


def hlo_op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction: (shape, kind)} of a compiled module's HLO text, where kind is
  the opcode plus what its fused computation does, e.g. 'fusion[dot,transpose]'."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      current = header.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  kinds = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    calls = re.search(r"calls=%([\w.\-]+)", line)
    body = "\n".join(bodies.get(calls.group(1), [])) if calls else ""
    found = [k for k in HLO_KINDS if k == opcode or re.search(rf" {k}\(", body)]
    kinds[name] = (shape, f"{opcode}[{','.join(found)}]" if body else opcode)
  return kinds


def traced_op_seconds(trace_dir: str) -> dict[str, float]:
  """Total seconds per event name in the newest perfetto trace under trace_dir."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no trace")
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    events = json.load(f)["traceEvents"]
  seconds = collections.Counter()
  for event in events:
    if event.get("ph") == "X":
      seconds[event["name"]] += event["dur"] * 1e-6
  return seconds


def profile_ops(run_step, compiled, trace_dir: str, steps: int, top: int) -> list[dict]:
  """Trace `steps` calls of run_step; the `top` (kind, shape) groups of XLA ops
  by time per step, with their share of the traced op time."""
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(steps):
    jax.block_until_ready(run_step())
  jax.profiler.stop_trace()
  kinds = hlo_op_kinds(compiled.as_text())
  groups, counts = collections.Counter(), collections.Counter()
  for name, seconds in traced_op_seconds(trace_dir).items():
    if name in kinds:
      shape, kind = kinds[name]
      groups[(kind, shape)] += seconds / steps
      counts[(kind, shape)] += 1
  total = sum(groups.values())
  return [{"kind": kind, "shape": shape, "ops": counts[(kind, shape)],
           "ms_per_step": 1e3 * seconds, "share": seconds / total}
          for (kind, shape), seconds in groups.most_common(top)]


def random_batch(config, mesh) -> dict:
  """A global batch of random uint8 clips, both views: {'student', 'teacher'} (B, T, H, W, 3)."""
  from smtc_jax import sharding  # pylint: disable=g-import-not-at-top
  d = config.data
  rng = np.random.default_rng(0)
  shape = (d.batch_size, d.num_frames, *d.resolution, 3)
  return sharding.global_batch(
      {k: rng.integers(0, 256, shape, dtype=np.uint8) for k in ("student", "teacher")}, mesh)


def step_flops(config, model, optimizer, mesh, state_sharding, state, batch, frozen: bool) -> float:
  """FLOPs of one train step of the whole batch: XLA's cost analysis of the lowered
  (not yet optimised) step without micro-batches. Not the compiled step's: on GPUs
  it hands the matmuls to cuBLAS calls the analysis does not count, and a loop's
  body (the micro-batches) is counted once. On CPU the two agree to 0.1 %."""
  from smtc_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  whole = config.copy_and_resolve_references()
  whole.train.microbatch = 0
  step_fn = step_lib.compile_train_steps(whole, model, optimizer, mesh, state_sharding)[frozen]
  return _flops_of(step_fn.lower(state, batch))


def bench_step(config, *, workdir: str | None = None, frozen: bool = False, fed: bool = False,
               steps: int = 10, warmup: int = 2, trace_dir: str = "", trace_steps: int = 2,
               top_ops: int = 12, matmul_size: int = 0) -> dict:
  """The train step of `config` (the frozen-encoder one with `frozen`) timed over
  `steps` after `warmup`; with `fed`, also fed by the input pipeline on the data
  in `workdir`; with `trace_dir`, the `top_ops` costliest op groups of
  `trace_steps` traced steps; the matmul peak of `matmul_size` (0: by backend)."""
  if fed and workdir is None:
    raise ValueError("bench_step: fed=True reads its data from a workdir; none given")
  from smtc_jax import sharding  # pylint: disable=g-import-not-at-top
  from smtc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from smtc_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from smtc_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  sharding.check_batch_divisible(config.data.batch_size, mesh)
  microbatches = step_lib.microbatches_per_step(config, mesh)
  source = data_source(config, workdir) if fed else None  # bad data fails before compiling
  model, optimizer, state, state_sharding = state_lib.build(config, mesh)
  step_fn = step_lib.compile_train_steps(config, model, optimizer, mesh, state_sharding)[frozen]
  batch = random_batch(config, mesh)
  clips = config.data.batch_size
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = step_flops(config, model, optimizer, mesh, state_sharding, state, batch, frozen)
  analysis = compiled.memory_analysis()  # XLA's own plan: comparable across backends
  temp_bytes = float(getattr(analysis, "temp_size_in_bytes", float("nan")))
  holder = [state]

  def one():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics["loss"]

  step_s = _median_seconds(one, warmup, steps)
  fed_s = ({"fed_step_s": fed_step_seconds(compiled, holder,
                                            pipeline.training_iterator(config, source), mesh,
                                            steps, warmup)} if fed else {})
  top = profile_ops(one, compiled, trace_dir, trace_steps, top_ops) if trace_dir else []
  backend = jax.default_backend()
  size = matmul_size or (8192 if backend != "cpu" else 2048)
  peak_f32 = matmul_peak(jnp.float32, size)
  peak_bf16 = matmul_peak(jnp.bfloat16, size)
  memory, memory_kind = peak_memory_bytes()
  achieved = flops / step_s
  return {
      "bench": "step", "backend": backend, "devices": jax.device_count(),
      "frozen_encoder": frozen, "dtype": config.model.dtype, "batch": clips,
      "microbatches": microbatches,
      "microbatch_clips": clips // (mesh.shape[sharding.DATA_AXIS] * microbatches),
      "compile_s": compile_s, "step_s": step_s, "clips_per_s": clips / step_s, **fed_s,
      "step_flops": flops, "achieved_flops_per_s": achieved,
      "matmul_peak_f32": peak_f32, "matmul_peak_bf16": peak_bf16,
      "mfu_vs_f32_peak": achieved / peak_f32, "xla_temp_bytes": temp_bytes,
      "peak_memory_bytes": memory,
      "memory_kind": memory_kind, "top_ops": top,
  }


def data_source(config, workdir: str):
  """The training data of `config` in `workdir` (generated there for the synthetic
  source); a bad data config or a missing dataset fails here, as in the main job."""
  from smtc_jax import config_checks  # pylint: disable=g-import-not-at-top
  from smtc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  found = config_checks.check_data(config, "train")
  if found:
    raise config_checks.ConfigError("\n".join(found))
  return pipeline.make_source(config, workdir)


def fed_step_seconds(compiled, holder, iterator, mesh, steps: int, warmup: int) -> float:
  """Seconds a step takes in the training loop's pattern: each batch drawn from
  `iterator` and put on the mesh, then the step dispatched on holder[0] (the state,
  advanced in place), steps back to back and waited for once at the end (wall time
  over `steps` after `warmup`). Its difference to the step alone is what the host's
  input work costs the loop."""
  from smtc_jax import sharding  # pylint: disable=g-import-not-at-top

  def run(count):
    loss = None
    for _ in range(count):
      holder[0], metrics = compiled(holder[0], sharding.global_batch(next(iterator), mesh))
      loss = metrics["loss"]
    jax.block_until_ready(loss)

  run(warmup)
  start = time.perf_counter()
  run(steps)
  return (time.perf_counter() - start) / steps


def bench_data(config, *, workdir: str, steps: int = 10, warmup: int = 2) -> dict:
  """Clips/s the input pipeline makes on the data in `workdir`, in its steady state:
  after `warmup` batches the batches it made ahead are drawn untimed too, so the
  `steps` timed ones are made while timed."""
  from smtc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  iterator = pipeline.training_iterator(config, data_source(config, workdir))
  for _ in range(warmup + pipeline.buffered_batches(d.num_workers, d.prefetch)):
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  seconds = time.perf_counter() - start
  return {"bench": "data", "batch": config.data.batch_size, "workers": config.data.num_workers,
          "batches": steps, "seconds": seconds,
          "clips_per_s": config.data.batch_size * steps / seconds}


def write_davis_video(root: str, name: str, frames: np.ndarray, labels: np.ndarray) -> None:
  """frames (F, H, W, 3) uint8 as JPEGs and labels (F, H, W) as palette PNGs in the DAVIS
  layout under root, and root/filelist.txt naming the two folders."""
  from smtc_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.write_davis_frames(root, name, frames, labels, quality=95)
  images = os.path.join(root, synthetic.IMAGE_DIR, name)
  annotations = os.path.join(root, synthetic.ANNOTATION_DIR, name)
  with open(os.path.join(root, "filelist.txt"), "w") as f:
    f.write(f"{os.path.abspath(images)} {os.path.abspath(annotations)}\n")


def bench_propagate(config, *, frames: int, davis_out: str = "") -> dict:
  """Label propagation (and object discovery) on a random 480p-sized video of
  `frames` frames with the configured model at initialisation: frames/s and
  peak memory. `davis_out`: also write the video there in DAVIS's layout (for
  the authors' scripts)."""
  num_frames = frames
  from smtc_jax.evaluation import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (num_frames, 480, 854, 3), dtype=np.uint8)
  labels = np.zeros((num_frames, 480, 854), np.uint8)
  labels[:, 100:300, 200:500] = 1
  labels[:, 250:400, 550:800] = 2
  if davis_out:
    write_davis_video(davis_out, "bench", frames, labels)
  predictor = predictor_lib.Predictor(config)
  variables, _ = predictor_lib.untrained_variables(config)
  start = time.perf_counter()
  predictor_lib.propagate_masks(predictor, variables, frames, labels[0], 3)
  propagate_s = time.perf_counter() - start
  start = time.perf_counter()
  clips = predictor.clips(variables, frames)
  clips_s = time.perf_counter() - start
  start = time.perf_counter()
  predictor.proposals_of_clips(clips, frames.shape[:3])
  proposals_s = time.perf_counter() - start
  # What the authors' protocol scores (eval.protocol='authors', their eval_multi.py's
  # output): each frame's candidate masks on the token grid, no full-size label maps.
  start = time.perf_counter()
  predictor.candidates_of_clips(clips, frames.shape[0])
  candidates_s = time.perf_counter() - start
  discover_s = clips_s + proposals_s
  memory, memory_kind = peak_memory_bytes()
  return {"bench": "propagate", "frames": num_frames, "size": "854x480",
          "feature_grid": list(predictor.feature_size((480, 854))),
          "propagate_s": propagate_s, "propagate_frames_per_s": num_frames / propagate_s,
          "discover_s": discover_s, "discover_frames_per_s": num_frames / discover_s,
          "discover_model_s": clips_s, "discover_proposals_s": proposals_s,
          "discover_authors_protocol_s": clips_s + candidates_s,
          "peak_memory_bytes": memory, "memory_kind": memory_kind}


def moving_objects(frames: int, objects: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A 480x854 sequence of moving ellipses (ground truth) and a prediction that
  is the ground truth shifted a few pixels with speckle noise: (F, H, W) labels."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:480, 0:854]
  gt = np.zeros((frames, 480, 854), np.uint8)
  pred = np.zeros_like(gt)
  for k in range(1, objects + 1):
    cy, cx = rng.uniform(100, 380), rng.uniform(150, 700)
    ry, rx = rng.uniform(40, 100), rng.uniform(60, 140)
    vy, vx = rng.uniform(-2, 2, 2)
    for t in range(frames):
      inside = ((y - cy - vy * t) / ry)**2 + ((x - cx - vx * t) / rx)**2 <= 1
      gt[t][inside] = k
      pred[t][np.roll(inside, (3, -4), axis=(0, 1))] = k
  speckle = rng.uniform(size=gt.shape) < 0.002
  pred[speckle] = 0
  return gt, pred


def bench_davis(*, frames: int = 70, objects: int = 3, reference_metrics: str = "") -> dict:
  """Per-object, per-frame J and F of one 480p sequence of `frames` frames and
  `objects` objects: this module, and the reference implementation in the file
  `reference_metrics` when given (same masks, frame by frame as it works)."""
  from smtc_jax.evaluation import davis  # pylint: disable=g-import-not-at-top
  gt, pred = moving_objects(frames, objects)
  masks = [(gt == k, pred == k) for k in range(1, objects + 1)]
  start = time.perf_counter()
  ours = [(davis.j_measures(g, p), davis.f_measures(g, p)) for g, p in masks]
  ours_s = time.perf_counter() - start
  result = {"bench": "davis", "frames": frames, "objects": objects,
            "size": "854x480", "ours_s": ours_s,
            "ours_frames_per_s": frames / ours_s}
  if reference_metrics:
    j_ref, f_ref = davis.reference_measures(reference_metrics)
    start = time.perf_counter()
    ref = [(j_ref(g, p), f_ref(g, p)) for g, p in masks]
    ref_s = time.perf_counter() - start
    result.update({
        "reference": reference_metrics, "reference_s": ref_s,
        "reference_frames_per_s": frames / ref_s, "speedup": ref_s / ours_s,
        "max_abs_diff_j": max(float(np.max(np.abs(o[0] - r[0]))) for o, r in zip(ours, ref)),
        "max_abs_diff_f": max(float(np.max(np.abs(o[1] - r[1]))) for o, r in zip(ours, ref))})
  return result


def bench_eval(config, workdir: str) -> dict:
  """`--mode=eval` on workdir (its results written as main writes them), timed per
  stage: set-up, reading, each model's forward passes, proposals, propagation and
  scores, the trivial baseline, writing. The first forward of each size holds
  its compile."""
  from smtc_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  times = evaluate.StageTimes()
  start = time.perf_counter()
  evaluate.evaluate(config, workdir, timer=times)
  total = time.perf_counter() - start
  stages = [{"stage": stage, "s": seconds, "share": seconds / total}
            for stage, seconds in times.seconds.most_common()]
  return {"bench": "eval", "benchmark": config.eval.benchmark, "eval_s": total,
          "untimed_s": total - sum(times.seconds.values()), "stages": stages}


def _print(result: dict) -> None:
  for row in result.get("top_ops", []):
    print(f"{row['ms_per_step']:9.1f} ms {100 * row['share']:5.1f} %  x{row['ops']:<4d} "
          f"{row['kind']} {row['shape']}")
  for row in result.get("stages", []):
    print(f"{row['s']:9.1f} s {100 * row['share']:5.1f} %  {row['stage']}")
  for key, value in result.items():
    if key in ("top_ops", "stages"):
      continue
    if isinstance(value, float):
      value = f"{value:.4g}"
    print(f"{key:22s} {value}")
  print(json.dumps(result))


def main(argv):
  """The one reader of the flags: each bench gets them as arguments."""
  benches = {
      "step": lambda config: bench_step(
          config, workdir=FLAGS.workdir, frozen=FLAGS.frozen, fed=FLAGS.fed, steps=FLAGS.steps,
          warmup=FLAGS.warmup, trace_dir=FLAGS.trace_dir, trace_steps=FLAGS.trace_steps,
          top_ops=FLAGS.top_ops, matmul_size=FLAGS.matmul_size),
      "data": lambda config: bench_data(config, workdir=FLAGS.workdir, steps=FLAGS.steps,
                                        warmup=FLAGS.warmup),
      "propagate": lambda config: bench_propagate(config, frames=FLAGS.frames,
                                                  davis_out=FLAGS.davis_out),
      "davis": lambda _: bench_davis(frames=FLAGS.frames, objects=FLAGS.objects,
                                     reference_metrics=FLAGS.reference_metrics),
      "eval": lambda config: bench_eval(config, FLAGS.workdir)}
  if len(argv) != 2 or argv[1] not in benches:
    sys.exit(f"usage: python -m smtc_jax.bench {'|'.join(benches)} --config FILE [flags]")
  if argv[1] in ("eval", "propagate"):  # inference, as main runs it (xla_cpu.py)
    from smtc_jax import xla_cpu  # pylint: disable=g-import-not-at-top
    xla_cpu.use_inference_flags()
  _print(benches[argv[1]](FLAGS.config))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
