"""README.md, docs/ and the configs' docstrings stay honest: every documented
command's flags exist in the module it runs, every `--config.…` override and
every backticked config field exists in the config it names (configs/base.py
when none is named), every repository path named exists, and every relative
link resolves, anchors included. Reads text only: nothing is trained or run."""

import ast
import fnmatch
import importlib
import importlib.util
import os
import re

import pytest
from absl import app as absl_app  # noqa: F401  (defines absl's own flags)
from absl import flags
from absl import logging as absl_logging  # noqa: F401  (defines --alsologtostderr, ...)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    f"docs/{name}" for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
CONFIGS = sorted(f"configs/{name}" for name in os.listdir(os.path.join(ROOT, "configs"))
                 if name.endswith(".py") and name != "__init__.py")
MODULES = ["smtc_jax.main", "smtc_jax.bench", "smtc_jax.convert", "smtc_jax.evaluation.davis",
           "smtc_jax.data.photo_videos", "smtc_jax.evaluation.probe"]
FLAG_SOURCE = {"smtc_jax.evaluation.probe": "smtc_jax.main"}  # the probe reads main's flags
SECTIONS = ("seed", "model", "loss", "data", "eval", "optim", "train", "pretrain", "init",
            "predict")
FILE_SUFFIXES = (".py", ".sh", ".md", ".log", ".lock", ".txt", ".csv", ".json", ".jsonl", ".pth", ".tar")
QUICK_START = [
    "python3.11 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m smtc_jax.main "
    "--config configs/cpu_synthetic.py --workdir /tmp/smtc_cpu",
    "python3.11 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' && python -m pytest -q "
    "-n 2 tests",
]


def _read(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def _split_fences(text):
  """(prose with code blocks blanked, [lines of code blocks, continuations joined])."""
  prose, code, in_fence = [], [], False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      in_fence = not in_fence
      prose.append("")
      continue
    if in_fence:
      code.append(line)
    prose.append("" if in_fence else line)  # prose keeps its line numbers
  joined = []
  for line in code:
    if joined and joined[-1].endswith("\\"):
      joined[-1] = joined[-1][:-1] + " " + line.strip()
    else:
      joined.append(line)
  return "\n".join(prose), joined


def _spans(prose):
  """Inline code spans of markdown prose (a span may wrap onto the next line)."""
  return [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", prose)]


def _texts(path):
  """(command lines: code-block lines and inline spans, inline spans alone) of a doc or config."""
  if path.endswith(".py"):
    doc = ast.get_docstring(ast.parse(_read(path))) or ""
    _, lines = _split_fences("```\n" + doc + "\n```")
    return lines, []
  prose, lines = _split_fences(_read(path))
  spans = _spans(prose)
  return lines + spans, spans


def _module_flags(module):
  """Flag names a module defines (absl DEFINE_*, argparse add_argument), read
  from its source without importing it."""
  spec = importlib.util.find_spec(module)
  paths = [spec.origin]
  if spec.submodule_search_locations:
    paths = [os.path.join(d, f) for loc in spec.submodule_search_locations
             for d, _, fs in os.walk(loc) for f in fs if f.endswith(".py")]
  source = "".join(open(p, encoding="utf-8").read() for p in paths)
  names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", source))
  names |= {"no" + n for n in re.findall(r"DEFINE_bool(?:ean)?\(\s*[\"'](\w+)[\"']", source)}
  names |= set(re.findall(r"add_argument\(\s*[\"']--([\w-]+)[\"']", source))
  return names, source


ABSL_FLAGS = {name for module, fl in flags.FLAGS.flags_by_module_dict().items()
              if module.startswith("absl") for f in fl for name in (f.name, "no" + f.name)}
FLAGS_OF = {m: _module_flags(FLAG_SOURCE.get(m, m)) for m in MODULES}
ALL_FLAGS = set().union(*(names for names, _ in FLAGS_OF.values())) | ABSL_FLAGS | {"dry-run"}


def _config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _fields(config):
  """Every dotted path of a config, sections included."""
  out = set()

  def walk(d, prefix):
    for key, value in d.items():
      out.add(prefix + key)
      if isinstance(value, dict):
        walk(value, prefix + key + ".")
  walk(config.to_dict(), "")
  return out


FIELDS = {}


def _has_field(config_name, path):
  if config_name not in FIELDS:
    FIELDS[config_name] = _fields(_config(config_name))
  if "*" in path:
    return bool(fnmatch.filter(FIELDS[config_name], path))
  return path in FIELDS[config_name]


def _tokens(text):
  return [t.strip("[](),;") for t in text.split()]


def _problems_of_command(text):
  """What is wrong with the `python -m smtc_jax.X` commands and the overrides in one line."""
  problems = []
  for part in re.split(r"&&|;|\|", text.split(" -- ")[0]):
    tokens = _tokens(part.split(" #")[0])
    config = "base"
    for i, token in enumerate(tokens[:-1]):
      if token == "--config" and re.fullmatch(r"configs/\w+\.py", tokens[i + 1]):
        if os.path.exists(os.path.join(ROOT, tokens[i + 1])):
          config = tokens[i + 1][len("configs/"):-len(".py")]
        else:
          problems.append(f"{tokens[i + 1]} does not exist")
    module = None
    for i, token in enumerate(tokens[:-1]):
      if token == "-m" and tokens[i + 1].startswith("smtc_jax."):
        module = tokens[i + 1]
        if module not in FLAGS_OF:
          problems.append(f"{module} is not a documented entry point")
          module = None
        elif module == "smtc_jax.bench" and i + 2 < len(tokens):
          sub = tokens[i + 2]
          if not sub.startswith("-") and f'"{sub}"' not in FLAGS_OF[module][1]:
            problems.append(f"bench has no command {sub!r}")
    for token in tokens:
      if token.startswith("--config."):
        path = token[len("--config."):].split("=")[0]
        if not _has_field(config, path):
          problems.append(f"configs/{config}.py has no field {path!r} ({token})")
      elif token.startswith("--") and len(token) > 2 and module:
        name = token[2:].split("=")[0]
        if name not in FLAGS_OF[module][0] | ABSL_FLAGS:
          problems.append(f"{module} has no flag --{name}")
  return problems


def _problems_of_span(span):
  """Bare flags and config fields named in an inline code span."""
  if "python -m" in span or "smtc_jax." in span.split()[0]:
    return []  # a command: checked as one
  first = span.split()[0]
  if first.endswith(FILE_SUFFIXES) and not os.path.exists(os.path.join(ROOT, first)):
    return []  # another project's script (the authors' start_twostage.sh ...): its flags are its own
  problems = []
  for token in span.split():
    if "(" in token:
      continue  # a call, such as the authors' model.train()
    token = token.strip("[],;")
    if token.startswith("--") and not token.startswith(("--config.", "--xla_")) and len(token) > 2:
      name = token[2:].split("=")[0]
      if name not in ALL_FLAGS:
        problems.append(f"no entry point has a flag --{name}")
    elif (re.fullmatch(r"(%s)(\.[\w*]+)+(=\S*)?" % "|".join(SECTIONS), token)
          and not token.split("=")[0].endswith(FILE_SUFFIXES)):
      path = token.split("=")[0]
      if not _has_field("base", path):
        problems.append(f"configs/base.py has no field {path!r}")
    elif re.fullmatch(r"(smtc_jax|configs|tests|launch|docs)/[\w/.\-]*(::\w+)?", token):
      path = token.split("::")[0]
      if not os.path.exists(os.path.join(ROOT, path)):
        problems.append(f"{path} does not exist")
  return problems


@pytest.mark.parametrize("path", DOCS + CONFIGS)
def test_documented_commands_flags_and_config_fields_exist(path):
  lines, spans = _texts(path)
  problems = [p for line in lines for p in _problems_of_command(line)]
  problems += [p for span in spans for p in _problems_of_span(span)]
  assert not problems, f"{path}:\n" + "\n".join(sorted(set(problems)))


def test_every_config_docstring_gives_its_command():
  for path in CONFIGS:
    doc = ast.get_docstring(ast.parse(_read(path))) or ""
    assert f"--config {path}" in doc, f"{path}'s docstring gives no command that runs it"


def test_the_quick_start_commands_are_in_the_readme():
  readme = _read("README.md")
  for command in QUICK_START:
    assert command in readme


def _slug(heading):
  text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
  return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def _anchors(path):
  prose, _ = _split_fences(_read(path))
  seen, out = {}, set()
  for line in prose.splitlines():
    match = re.match(r"#+\s+(.*)", line)
    if match:
      slug = _slug(match.group(1))
      out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
      seen[slug] = seen.get(slug, 0) + 1
  return out


@pytest.mark.parametrize("path", DOCS)
def test_relative_links_resolve(path):
  prose, _ = _split_fences(_read(path))
  problems = []
  for target in re.findall(r"\]\(([^)\s]+)\)", prose):
    if re.match(r"[a-z]+:", target):
      continue
    file, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
    if not os.path.exists(os.path.join(ROOT, resolved)):
      problems.append(f"{target}: {resolved} does not exist")
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      problems.append(f"{target}: no heading #{anchor} in {resolved}")
  assert not problems, f"{path}:\n" + "\n".join(problems)
