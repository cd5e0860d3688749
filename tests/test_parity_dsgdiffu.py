"""DSGDiffu against the authors' own PyTorch code: `../shared/parity/dsgdiffu` (see its README).

DSGDiffu is FinePOSE plus graph attention, so every FinePOSE parity test runs here too, on this
fixture (they read this module's `PARITY_FAMILY`); below are the DSGDiffu-only ones: the
skeleton graph, the two torch-geometric key layouts and the graph attention itself.
"""

import jax
import numpy as np
import pytest

from posediff_jax.convert import common
from posediff_jax.convert import finepose as convert
from posediff_jax.models import dsgdiffu as dsgdiffu_models
# pylint: disable=unused-import
from tests.test_parity_finepose import (
    config, converted, family, params, text,
    test_aggregation_of_the_sampled_poses, test_checkpoint_without_clip_says_where_to_get_it,
    test_converter_accepts_every_key_prefix, test_converter_checks_sizes_and_family,
    test_converter_report_and_text_state, test_denoiser_forward,
    test_fixture_settings_are_the_ones_this_family_hard_codes,
    test_flip_and_model_predictions_fliping, test_fresh_params_match_the_converted_tree,
    test_training_loss_has_gradients_where_upstream_has,
    test_full_ddim_run_from_the_recorded_noise,
    test_full_size_key_list_converts_with_the_default_config, test_prompt_selection_and_its_errors,
    test_text_branch, test_text_tiling_quirk_and_its_corrected_variant, test_training_path)
# pylint: enable=unused-import
from tests.test_parity_finepose import _state_dict

PARITY_FAMILY = "dsgdiffu"  # the conftest fixtures root, io and fixture_json read it


def test_skeleton_graph_is_upstreams(fixture_json, config):
  edge_index = dsgdiffu_models.graph_edge_index(config.model.graph)
  np.testing.assert_array_equal(edge_index, fixture_json["graph_edge_index"])
  assert fixture_json["torch_geometric_version"].startswith("2.")
  # 3DHP: 17 self-loops and the 16 listed bones both ways.
  mpi = dsgdiffu_models.graph_edge_index("3dhp")
  assert mpi.shape == (2, 17 + 2 * 16) and len(set(map(tuple, mpi.T))) == mpi.shape[1]
  with pytest.raises(ValueError, match="unknown skeleton graph 'humaneva15'"):
    dsgdiffu_models.graph_edge_index("humaneva15")


def _pyg24(sd):
  """The same state dict in torch-geometric 2.4's layout (the weight under two names)."""
  out = {}
  for key, value in sd.items():
    if key.endswith(".lin.weight"):
      out[key.replace(".lin.", ".lin_src.")] = value
      out[key.replace(".lin.", ".lin_dst.")] = value.copy()
    else:
      out[key] = value
  return out


def test_both_torch_geometric_layouts_convert_to_the_same_params(root, config, converted):
  sd = _state_dict(root)
  old = _pyg24(sd)
  assert sum(k.endswith(".lin_src.weight") for k in old) == len(convert.GAT_PREFIXES)
  params, report, _ = convert.convert_denoiser(old, config.model, config.diffusion,
                                               family="dsgdiffu")
  jax.tree.map(np.testing.assert_array_equal, converted[0], params)
  assert report.gat_layout == "lin_src/lin_dst" and converted[1].gat_layout == "lin"
  key = next(k for k in old if k.endswith("STEgat.lin_dst.weight"))
  differ = dict(old, **{key: old[key] + 1.0})
  with pytest.raises(common.ConversionError, match="differ"):
    convert.convert_denoiser(differ, config.model, config.diffusion, family="dsgdiffu")
  half = {k: v for k, v in old.items() if k != key}
  with pytest.raises(common.ConversionError, match="without"):
    convert.convert_denoiser(half, config.model, config.diffusion, family="dsgdiffu")
  both = dict(old, **{key.replace("lin_dst", "lin"): old[key]})
  with pytest.raises(common.ConversionError, match="both"):
    convert.convert_denoiser(both, config.model, config.diffusion, family="dsgdiffu")


def _gat_reference(x, kernel, att_src, att_dst, bias, edges):
  """PyG GATConv(heads=1) in numpy, edge by edge: self-loops replaced by one per node."""
  z = x @ kernel
  incoming = {i: [i] for i in range(x.shape[0])}
  for source, target in edges:
    if source != target:
      incoming[target].append(source)
  out = np.empty_like(z)
  for i, sources in incoming.items():
    scores = np.array([z[j] @ att_src + z[i] @ att_dst for j in sources])
    scores = np.where(scores > 0, scores, 0.2 * scores)
    weights = np.exp(scores - scores.max())
    out[i] = (weights / weights.sum()) @ z[sources]
  return out + bias


def test_graph_attention_matches_an_edge_list_reference():
  rng = np.random.default_rng(0)
  # Repeated edges count twice in PyG's softmax; nodes past the graph only see themselves.
  edges = ((0, 0), (1, 0), (2, 0), (0, 1), (1, 2), (1, 2), (3, 1))
  gat = dsgdiffu_models.GraphAttention(features=6, edges=edges)
  # Two node matrices: the graph acts on the flagged one; the other only sees itself.
  x = rng.normal(size=(2, 7, 6)).astype(np.float32)
  mix = np.array([True, False])
  variables = gat.init(jax.random.PRNGKey(0), x, mix)
  p = jax.tree.map(np.asarray, variables["params"])
  p["bias"] = rng.normal(size=6).astype(np.float32)
  expected = _gat_reference(x[0].astype(np.float64), p["lin"]["kernel"], p["att_src"][0, 0],
                            p["att_dst"][0, 0], p["bias"], edges)
  out = gat.apply({"params": p}, x, mix)
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[1], x[1] @ p["lin"]["kernel"] + p["bias"], rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="name 4 nodes"):
    gat.apply({"params": p}, x[:, :3], mix)
