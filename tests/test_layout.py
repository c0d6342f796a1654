"""The code's layout: imports run one way (no cycles; the library never imports
a job), and a training batch's and an evaluated video's walks cross few file
boundaries (calls from one smtc_jax file into another, counted with a profiler;
library frames in between are skipped). The bounds are today's counts: a change
that makes a walk chattier has to raise them on purpose."""

import ast
import collections
import linecache
import os
import sys

from configs import tiny
from smtc_jax import train
from smtc_jax.evaluation import evaluate

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smtc_jax")
# Modules that run a job (flags, the console, a workdir); nothing else imports them.
JOBS = {"smtc_jax.main", "smtc_jax.bench", "smtc_jax.train", "smtc_jax.pretrain",
        "smtc_jax.export", "smtc_jax.predict", "smtc_jax.convert", "smtc_jax.evaluation.probe"}
# Reads every option's allowed values, the jobs' too, before anything is built.
READS_JOBS = {"smtc_jax.config_checks"}
# Today's counts on this test's config (the default's: 11, and 151 on its 24-frame video).
TRAIN_WALK_BOUND = 11  # cross-file calls from the iterator's batch to the updated state
EVAL_WALK_BOUND = 135  # cross-file calls of --mode=eval on one 6-frame video, set-up included


def _module(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")]
  return rel.replace(os.sep, ".").removesuffix(".__init__")


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
  """{module: the smtc_jax modules it imports}: anywhere in the file, or only
  at module level (what runs when it is imported)."""
  graph = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      with open(path) as f:
        tree = ast.parse(f.read())
      found = set()
      for node in (tree.body if module_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
          found.update(a.name for a in node.names if a.name.startswith("smtc_jax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smtc_jax"):
          # `from smtc_jax.x import y`: y may be a module of package x or a name in x.
          for a in node.names:
            found.add(f"{node.module}.{a.name}")
            found.add(node.module)
      graph[_module(path)] = found
  return {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}


def test_imports_have_no_cycle_and_no_library_module_imports_a_job():
  graph = import_graph()
  assert "smtc_jax.training.step" in graph and "smtc_jax.models.vit" in graph
  for module, deps in graph.items():
    if module not in JOBS | READS_JOBS:
      assert not deps & JOBS, f"{module} imports the job(s) {sorted(deps & JOBS)}"
  # Cycles among the imports that run at import time (a command line's own
  # imports inside its main(), as photo_videos' of synthetic, are not).
  graph = import_graph(module_level_only=True)
  state = {}  # depth-first search: 1 on the stack, 2 done

  def visit(module, stack):
    state[module] = 1
    for dep in sorted(graph[module]):
      assert state.get(dep) != 1, f"import cycle: {' -> '.join(stack + [module, dep])}"
      if dep not in state:
        visit(dep, stack + [module])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [])


def _package_file(frame):
  name = frame.f_code.co_filename
  return name if name.startswith(PACKAGE + os.sep) else None


class CrossFileCalls:
  """sys.setprofile hook counting calls whose nearest smtc_jax caller lies in
  another file, made while `in_walk(frame)` holds for some frame on the stack."""

  def __init__(self, in_walk):
    self.in_walk, self.calls = in_walk, collections.Counter()

  def __call__(self, frame, event, arg):
    del arg
    if event != "call" or _package_file(frame) is None:
      return
    caller = frame.f_back
    while caller is not None and _package_file(caller) is None:
      caller = caller.f_back
    if caller is None or _package_file(caller) == _package_file(frame):
      return
    walk = frame
    while walk is not None and not self.in_walk(walk):
      walk = walk.f_back
    if walk is not None:
      self.calls[(os.path.relpath(_package_file(caller), PACKAGE),
                  os.path.relpath(_package_file(frame), PACKAGE), frame.f_code.co_name)] += 1

  def run(self, fn, *args):
    sys.setprofile(self)
    try:
      return fn(*args)
    finally:
      sys.setprofile(None)

  def outside_the_model(self) -> int:
    """The count, calls among the model package's own files left out."""
    return sum(n for (a, b, _), n in self.calls.items()
               if not (a.startswith("models") and b.startswith("models")))


def _in_batch_walk(frame) -> bool:
  """The loop's two statements a batch goes through: fetched, then stepped."""
  if frame.f_code.co_name != "train_loop" or _package_file(frame) is None:
    return False
  line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
  return "next(data_iter)" in line or "(state, batch)" in line


def _config():
  config = tiny.get_config()
  config.data.source, config.data.layout, config.data.num_workers = "synthetic", "davis", 0
  config.data.synthetic.num_train, config.data.synthetic.num_val = 2, 1
  config.data.synthetic.size, config.data.synthetic.num_frames = 32, 6
  config.data.batch_size = 2
  config.train.num_steps, config.train.eval_every = 1, 0
  config.train.async_checkpoints = False
  config.eval.discovery_resolution = ()
  return config


def test_a_batch_and_an_evaluated_video_cross_few_file_boundaries(tmp_path):
  config, workdir = _config(), str(tmp_path)
  training = CrossFileCalls(_in_batch_walk)
  training.run(train.train_and_evaluate, config, workdir)
  assert ("training/loop.py", "training/step.py", "train_step") in training.calls  # it counts
  assert 0 < training.outside_the_model() <= TRAIN_WALK_BOUND, sorted(training.calls.items())
  evaluation = CrossFileCalls(lambda frame: frame.f_code.co_name == "evaluate"
                              and _package_file(frame) is not None)
  evaluation.run(evaluate.evaluate, config, workdir)
  assert ("evaluation/evaluate.py", "evaluation/predictor.py", "trained_variables") in (
      evaluation.calls)
  assert 0 < evaluation.outside_the_model() <= EVAL_WALK_BOUND, sorted(evaluation.calls.items())
