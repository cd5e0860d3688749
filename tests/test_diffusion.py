"""Schedules, training helpers and the DDIM sampler vs brute force, the spec and the fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax.diffusion import ddim
from posediff_jax.diffusion import schedules
from tests.conftest import parity_dir

# DiffPose's schedule (spec §A.3): 51 linear betas from 1e-4 to 1e-3.
BETAS = schedules.linear_betas(1e-4, 1e-3, 51)
TABLE = schedules.alpha_bars_with_start(BETAS)


def _io():
  return np.load(parity_dir("diffpose") / "io.npz")


# ----------------------------------------------------------------------------------- schedules

def test_linear_schedule_matches_fixture_exactly():
  io = _io()
  assert BETAS.dtype == np.float32
  np.testing.assert_array_equal(BETAS, io["betas"])
  np.testing.assert_array_equal(TABLE, io["alpha_bar_tm1_to_T"])
  np.testing.assert_array_equal(schedules.alpha_bars(BETAS), TABLE[1:])


def test_linear_schedule_matches_spec_values():
  abar = schedules.alpha_bars(BETAS)
  assert TABLE[0] == 1.0
  np.testing.assert_allclose(BETAS, 1e-4 + 1.8e-5 * np.arange(51), rtol=1e-6)
  np.testing.assert_allclose(abar[0], 0.99990, atol=5e-6)
  np.testing.assert_allclose(abar[[6, 12, 24, 50]], [0.998922, 0.997299, 0.992129, 0.972331],
                             atol=5e-7)


def test_cosine_schedule_matches_video_spec():
  betas = schedules.cosine_betas(1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999) and np.all(betas >= 0)
  abar = schedules.alpha_bars(betas)
  assert abar.dtype == np.float64
  t = [0, 99, 199, 332, 499, 665, 899, 999]
  spec = [0.99996, 0.97209, 0.89871, 0.74334, 0.49384, 0.24734, 0.02409, 2.43e-9]
  np.testing.assert_allclose(abar[t], spec, rtol=1e-3)  # spec rounds to 3-5 digits


def test_schedule_bad_input_raises():
  with pytest.raises(ValueError, match="num_steps"):
    schedules.linear_betas(1e-4, 1e-3, 0)
  with pytest.raises(ValueError, match="1-D"):
    schedules.alpha_bars(np.zeros((2, 3), np.float32))


def test_antithetic_timesteps():
  key = jax.random.key(0)
  for batch in (1, 6, 7):
    t = np.asarray(schedules.antithetic_timesteps(key, batch, 51))
    assert t.shape == (batch,) and t.dtype == np.int32
    assert t.min() >= 0 and t.max() < 51
    half = batch // 2 + 1
    # Row half + i mirrors row i.
    np.testing.assert_array_equal(t[half:] + t[:batch - half], 50)
  np.testing.assert_array_equal(schedules.antithetic_timesteps(key, 64, 51),
                                schedules.antithetic_timesteps(key, 64, 51))


def test_q_sample_matches_numpy():
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(4, 17, 5)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 7, 25, 50])
  abar = schedules.alpha_bars(BETAS)
  a = abar[t][:, None, None]
  np.testing.assert_allclose(schedules.q_sample(x0, t, noise, abar),
                             x0 * np.sqrt(a) + noise * np.sqrt(1 - a), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- sampler

def _toy_eps(x, t):
  """An analytic stand-in for the model: eps(x, t) = 0.1 x + 0.01 t."""
  return 0.1 * x + 0.01 * t.reshape((-1,) + (1,) * (x.ndim - 1))


def _generalized_steps_ref(x, seq, table, eps_fn, eta=0.0, noise=None):
  """Upstream `generalized_steps` written out in float32 numpy."""
  seq_next = [-1] + list(seq[:-1])
  xs, x0_preds = [x], []
  for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
    at, an = table[i + 1], table[j + 1]
    xt = xs[-1]
    et = eps_fn(xt, np.full(xt.shape[0], i, np.float32)).astype(np.float32)
    x0 = (xt - et * np.sqrt(1 - at)) / np.sqrt(at)
    c1 = eta * np.sqrt((1 - at / an) * (1 - an) / (1 - at))
    c2 = np.sqrt((1 - an) - c1**2)
    z = noise[k] if noise is not None else np.zeros_like(xt)
    xs.append((np.sqrt(an) * x0 + c1 * z + c2 * et).astype(np.float32))
    x0_preds.append(x0)
  return np.stack(xs), np.stack(x0_preds)


def _start(batch=4, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 17, 5)).astype(np.float32)


@pytest.mark.parametrize("seq,eta", [((0, 12), 0.0), ((0, 12), 0.5), ((0, 5, 10, 15, 20, 25), 0.5)])
def test_ddim_matches_generalized_steps(seq, eta):
  x = _start()
  noise = np.random.default_rng(1).normal(size=(len(seq),) + x.shape).astype(np.float32)
  ref_xs, ref_x0 = _generalized_steps_ref(x, seq, TABLE, _toy_eps, eta, noise)
  final, xs, x0_preds = ddim.ddim_sample(_toy_eps, x, seq, TABLE, eta=eta, noise=noise,
                                         return_trajectory=True)
  assert xs.shape == (len(seq) + 1,) + x.shape and x0_preds.shape == (len(seq),) + x.shape
  np.testing.assert_allclose(xs, ref_xs, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(x0_preds, ref_x0, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(final, xs[-1])
  np.testing.assert_array_equal(xs[0], x)
  # a_n = 1 at the last step, so the final state is that step's x0 prediction.
  np.testing.assert_allclose(final, x0_preds[-1], rtol=1e-6, atol=1e-7)


def test_ddim_with_hypotheses_folded_into_batch():
  x = _start(3)
  hyp = 2
  x_rep = ddim.repeat_hypotheses(x, hyp)
  np.testing.assert_array_equal(x_rep, np.concatenate([x, x]))  # torch `repeat`: hypothesis-major
  noise = np.random.default_rng(2).normal(size=(2, 6, 17, 5)).astype(np.float32)
  ref_xs, _ = _generalized_steps_ref(np.asarray(x_rep), (0, 12), TABLE, _toy_eps, 0.5, noise)
  final = ddim.ddim_sample(_toy_eps, x_rep, (0, 12), TABLE, eta=0.5, noise=noise)
  mean = ddim.mean_over_hypotheses(final, hyp)
  np.testing.assert_allclose(mean, ref_xs[-1].reshape(2, 3, 17, 5).mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(ddim.mean_over_hypotheses(x_rep, hyp), x)
  with pytest.raises(ValueError, match="multiple"):
    ddim.mean_over_hypotheses(x_rep[:5], hyp)


def test_ddim_jit_equals_eager():
  x = _start()
  key = jax.random.key(3)

  def run(x, key):
    return ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, eta=0.5, key=key, return_trajectory=True)

  jitted = jax.jit(run)(x, key)
  with jax.disable_jit():
    eager = run(x, key)
  for a, b in zip(jitted, eager):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_ddim_key_noise_is_reproducible():
  x = _start()
  run = jax.jit(lambda key: ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, eta=0.5, key=key))
  np.testing.assert_array_equal(run(jax.random.key(0)), run(jax.random.key(0)))
  assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))
  # Step k draws from fold_in(key, k): injecting those draws gives the same result.
  key = jax.random.key(0)
  noise = jnp.stack([jax.random.normal(jax.random.fold_in(key, k), x.shape) for k in range(2)])
  np.testing.assert_allclose(run(key), ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, eta=0.5,
                                                        noise=noise), rtol=1e-6)
  # eta = 0 is deterministic: the key does not matter and is not needed.
  np.testing.assert_array_equal(ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, key=key),
                                ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE))


def test_ddim_x0_prediction():
  x = _start(seed=4)
  x0_fn = lambda x, t: 0.5 * x + 0.001 * t.reshape(-1, 1, 1)
  seq = (0, 12, 24)
  final, xs, x0_preds = ddim.ddim_sample(x0_fn, x, seq, TABLE, eta=0.0, prediction="x0",
                                         clip_x0=0.8, return_trajectory=True)
  # D3DP's step: eps from the clipped x0 and the unclipped x.
  ref = [x]
  for i, j in zip(reversed(seq), reversed([-1] + list(seq[:-1]))):
    at, an = float(TABLE[i + 1]), float(TABLE[j + 1])
    x0 = np.clip(x0_fn(ref[-1], np.full(4, i, np.float32)), -0.8, 0.8)
    eps = (np.sqrt(1 / at) * ref[-1] - x0) / np.sqrt(1 / at - 1)
    ref.append(np.sqrt(an) * x0 + np.sqrt(1 - an) * eps)
  np.testing.assert_allclose(xs, np.stack(ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(final, x0_preds[-1])
  assert np.abs(x0_preds).max() <= 0.8


def test_ddim_bad_input_raises():
  x = _start()
  with pytest.raises(ValueError, match="ascending"):
    ddim.ddim_sample(_toy_eps, x, (12, 0), TABLE)
  with pytest.raises(ValueError, match="ascending"):
    ddim.ddim_sample(_toy_eps, x, (0, 51), TABLE)
  with pytest.raises(ValueError, match="key"):
    ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, eta=0.5)
  with pytest.raises(ValueError, match="noise must have shape"):
    ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, eta=0.5, noise=np.zeros((1,) + x.shape))
  with pytest.raises(ValueError, match="alpha_bars_with_start"):
    ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE[1:])
  with pytest.raises(ValueError, match="prediction"):
    ddim.ddim_sample(_toy_eps, x, (0, 12), TABLE, prediction="v")
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda table: ddim.ddim_sample(_toy_eps, x, (0, 12), table))(TABLE)


def test_linspace_timesteps_match_video_spec():
  assert ddim.linspace_timesteps(1000, 10) == tuple(range(99, 1000, 100))
  assert ddim.linspace_timesteps(1000, 5) == (199, 399, 599, 799, 999)
  assert ddim.linspace_timesteps(1000, 3) == (332, 665, 999)
  assert ddim.linspace_timesteps(1000, 1) == (999,)


# ------------------------------------------------------- replaying the recorded upstream runs

def _replay(xs_ref, x0_ref, seq, eta, noise=None):
  """Runs our sampler with a lookup "model" returning the ε that upstream's states imply."""
  eps_by_t = {}
  for k, t in enumerate(reversed(seq)):
    at = TABLE[t + 1]
    eps_by_t[t] = (xs_ref[k] - np.sqrt(at) * x0_ref[k]) / np.sqrt(1 - at)

  def lookup(x, t):
    del x
    out = jnp.zeros(xs_ref.shape[1:], jnp.float32)
    for step, eps in eps_by_t.items():
      out = jnp.where(t[0] == step, eps, out)
    return out

  return ddim.ddim_sample(lookup, xs_ref[0], seq, TABLE, eta=eta, noise=noise,
                          return_trajectory=True)


def test_ddim_replays_upstream_stochastic_run():
  io = _io()
  seq = tuple(int(t) for t in io["stoch_seq"])
  _, xs, x0_preds = _replay(io["stoch_xs"], io["stoch_x0_preds"], seq, float(io["stoch_eta"]),
                            io["stoch_step_noise"])
  np.testing.assert_allclose(xs, io["stoch_xs"], atol=2e-5)
  np.testing.assert_allclose(x0_preds, io["stoch_x0_preds"], atol=2e-5)
  hyp = int(io["stoch_test_times"])
  np.testing.assert_allclose(ddim.mean_over_hypotheses(xs[-1], hyp), io["stoch_mean_uvxyz"],
                             atol=2e-5)


def test_ddim_replays_upstream_eval_run():
  io = _io()
  seq = tuple(int(t) for t in io["eval_seq"])
  _, xs, x0_preds = _replay(io["evalfix_ddim_xs"], io["evalfix_ddim_x0_preds"], seq, 0.0)
  np.testing.assert_allclose(xs, io["evalfix_ddim_xs"], atol=2e-5)
  np.testing.assert_allclose(x0_preds, io["evalfix_ddim_x0_preds"], atol=2e-5)
