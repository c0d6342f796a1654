"""XLA:CPU's inference flags (xla_cpu.py): set before the backend starts, kept
when the user set them, and in effect in what XLA compiles."""

import os
import subprocess
import sys

from smtc_jax import xla_cpu

PROGRAM = """
import os, sys
from smtc_jax import xla_cpu
print(xla_cpu.use_inference_flags())
import jax, jax.numpy as jnp
x = jnp.ones((2, 64, 32))
attention = jax.jit(lambda q: jnp.einsum("blm,bmc->blc", jax.nn.softmax(
    jnp.einsum("blc,bmc->blm", q, q), axis=-1), q))
print("__ynn_fusion" in attention.lower(x).compile().as_text())
print(os.environ["XLA_FLAGS"])
"""


def _run(xla_flags: str) -> list[str]:
  env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                       text=True, check=True)
  return out.stdout.splitlines()


def test_inference_flags_turn_ynnpack_fusions_off_before_the_backend_starts():
  in_effect, fused, flags = _run("--xla_cpu_max_isa=AVX2")
  assert in_effect == "True" and fused == "False"
  assert flags == f"--xla_cpu_max_isa=AVX2 {xla_cpu.INFERENCE_FLAGS}"


def test_a_users_own_choice_is_kept():
  in_effect, fused, flags = _run(f"{xla_cpu.YNN_FUSIONS}=+dot")
  assert in_effect == "False" and flags == f"{xla_cpu.YNN_FUSIONS}=+dot"


def test_without_them_xla_fuses_attention_into_ynnpack():
  # What the flags turn off exists in this jaxlib (else they would test nothing).
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  program = PROGRAM.replace("print(xla_cpu.use_inference_flags())", "print(None)")
  out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                       text=True, check=True).stdout.splitlines()
  assert out[1] == "True"
