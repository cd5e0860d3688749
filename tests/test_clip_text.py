"""Flax CLIP text tower, torch-free TorchScript reader, FinePOSE/DSGDiffu prompt assembly."""

import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posediff_jax import safe_load
from posediff_jax.convert import clip_text as convert_clip
from posediff_jax.convert import common
from posediff_jax.models import clip_text
from posediff_jax.models import prompts
from tests import torch_format
from tests.conftest import RunsCode, parity_dir

TINY = dict(vocab_size=50, context_length=9, width=16, num_layers=2, num_heads=2)


# --------------------------------------------------------------------------------------------------
# Random CLIP weights in torch layout, and an independent numpy forward of them.


def _random_clip_state_dict(rng, vocab_size, context_length, width, num_layers, num_heads=None,
                            dtype=np.float32):
  """{torch key: array} of a CLIP text tower (plus a token vision tower and the unused heads)."""
  del num_heads
  sd = {"token_embedding.weight": rng.normal(0, 0.5, (vocab_size, width)),
        "positional_embedding": rng.normal(0, 0.5, (context_length, width))}
  for i in range(num_layers):
    p = f"transformer.resblocks.{i}."
    sd.update({
        p + "attn.in_proj_weight": rng.normal(0, 0.3, (3 * width, width)),
        p + "attn.in_proj_bias": rng.normal(0, 0.1, (3 * width,)),
        p + "attn.out_proj.weight": rng.normal(0, 0.3, (width, width)),
        p + "attn.out_proj.bias": rng.normal(0, 0.1, (width,)),
        p + "ln_1.weight": 1 + rng.normal(0, 0.1, (width,)),
        p + "ln_1.bias": rng.normal(0, 0.1, (width,)),
        p + "mlp.c_fc.weight": rng.normal(0, 0.3, (4 * width, width)),
        p + "mlp.c_fc.bias": rng.normal(0, 0.1, (4 * width,)),
        p + "mlp.c_proj.weight": rng.normal(0, 0.2, (width, 4 * width)),
        p + "mlp.c_proj.bias": rng.normal(0, 0.1, (width,)),
        p + "ln_2.weight": 1 + rng.normal(0, 0.1, (width,)),
        p + "ln_2.bias": rng.normal(0, 0.1, (width,)),
    })
  sd.update({"ln_final.weight": 1 + rng.normal(0, 0.1, (width,)),
             "ln_final.bias": rng.normal(0, 0.1, (width,)),
             "text_projection": rng.normal(0, 0.1, (width, 8)),
             "logit_scale": np.array(4.6),
             "visual.class_embedding": rng.normal(0, 0.1, (width,)),
             "visual.conv1.weight": rng.normal(0, 0.1, (width, 3, 2, 2))})
  return {k: np.asarray(v, dtype) for k, v in sd.items()}


def _layer_norm(x, weight, bias, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _numpy_clip(sd, prompt, num_heads):
  """ln_final(transformer(prompt + pos)) of torch-layout weights, float64, batch-first [B, L, W]."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = np.asarray(prompt, np.float64) + sd["positional_embedding"]
  batch, length, width = x.shape
  head_dim = width // num_heads
  mask = np.triu(np.full((length, length), -np.inf), 1)
  layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
  for i in range(layers):
    p = f"transformer.resblocks.{i}."
    h = _layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
    qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
    q, k, v = (a.reshape(batch, length, num_heads, head_dim).transpose(0, 2, 1, 3)
               for a in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + mask
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attn = scores / scores.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    x = x + out @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = _layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
    h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    h = h / (1 + np.exp(-1.702 * h))
    x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
  return _layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"])


def _flax_clip(params, config, prompt):
  model = clip_text.ClipTextTransformer(**config)
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(prompt, jnp.float32)))


def test_clip_tower_matches_numpy_reference():
  rng = np.random.default_rng(0)
  sd = _random_clip_state_dict(rng, **TINY)
  config = convert_clip.infer_clip_config(sd, "", num_heads=TINY["num_heads"])
  assert config == TINY
  params, report = convert_clip.clip_params_from_state_dict(sd, "")
  assert set(report.unused) == {"text_projection", "logit_scale", "visual.class_embedding",
                                "visual.conv1.weight"}
  prompt = rng.normal(0, 1, (3, TINY["context_length"], TINY["width"]))
  np.testing.assert_allclose(_flax_clip(params, config, prompt),
                             _numpy_clip(sd, prompt, TINY["num_heads"]), atol=2e-5, rtol=1e-5)
  # embed_tokens is the plain table lookup.
  ids = np.array([[0, 3, 49, 7]])
  model = clip_text.ClipTextTransformer(**config)
  embedded = model.apply({"params": params}, ids, method=model.embed_tokens)
  np.testing.assert_array_equal(np.asarray(embedded), sd["token_embedding.weight"][ids])
  with pytest.raises(ValueError, match=r"\[0, 50\)"):
    model.apply({"params": params}, np.array([50]), method=model.embed_tokens)
  with pytest.raises(ValueError, match=r"expected \[\.\.\., 9, 16\]"):
    model.apply({"params": params}, jnp.zeros((1, 8, 16)))


def test_converter_prefix_and_strictness():
  rng = np.random.default_rng(1)
  prefix = convert_clip.CHECKPOINT_PREFIX
  sd = {prefix + k: v for k, v in _random_clip_state_dict(rng, **TINY).items()}
  sd["module.pose_estimator.head.1.weight"] = np.zeros((3, 16), np.float32)  # not CLIP: ignored
  params, report = convert_clip.clip_params_from_state_dict(sd, prefix)
  assert prefix + "visual.conv1.weight" not in report.unused  # reported without the prefix
  assert "visual.conv1.weight" in report.unused
  np.testing.assert_array_equal(params["resblocks_1"]["mlp_c_fc"]["kernel"],
                                sd[prefix + "transformer.resblocks.1.mlp.c_fc.weight"].T)
  with pytest.raises(common.ConversionError, match="no key starts with the CLIP prefix"):
    convert_clip.clip_params_from_state_dict(sd, "pose_estimator.clip_text.")
  bad = dict(sd, **{prefix + "transformer.resblocks.0.attn.bias_k": np.zeros((1, 1, 16))})
  with pytest.raises(common.ConversionError, match=r"resblocks\.0\.attn\.bias_k"):
    convert_clip.clip_params_from_state_dict(bad, prefix)
  short = dict(sd)
  del short[prefix + "ln_final.bias"]
  with pytest.raises(common.ConversionError, match="ln_final/bias"):
    convert_clip.clip_params_from_state_dict(short, prefix)


# --------------------------------------------------------------------------------------------------
# A torch-free writer of TorchScript archives: the pickle opcodes that torch's jit Pickler emits
# (protocol 2; modules as GLOBAL + NEWOBJ + BUILD of an attribute dict, tensors through
# torch._utils._rebuild_tensor_v2 and a ('storage', ...) persistent id), plus `code/` class headers.

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.int64): "LongStorage"}


class _Module:
  """A TorchScript module to write: class qualified name, attributes, declared params / buffers."""

  def __init__(self, qualified_name, attributes, parameters=(), buffers=()):
    self.qualified_name, self.attributes = qualified_name, dict(attributes)
    self.parameters, self.buffers = list(parameters), list(buffers)


class _Pickle:
  """Emits protocol-2 opcodes by hand."""

  def __init__(self):
    self.out, self.blobs = bytearray(b"\x80\x02"), {}

  def global_(self, module, name):
    self.out += b"c" + f"{module}\n{name}\n".encode()

  def string(self, text):
    raw = text.encode()
    self.out += b"X" + struct.pack("<I", len(raw)) + raw

  def integer(self, n):
    self.out += b"J" + struct.pack("<i", n)

  def int_tuple(self, values):
    self.out += b"("
    for v in values:
      self.integer(v)
    self.out += b"t"

  def value(self, v):
    if isinstance(v, _Module):
      self.global_(*v.qualified_name.rsplit(".", 1))
      self.out += b")\x81}("  # EMPTY_TUPLE NEWOBJ EMPTY_DICT MARK
      for name, attr in v.attributes.items():
        self.string(name)
        self.value(attr)
      self.out += b"ub"  # SETITEMS BUILD
    elif isinstance(v, np.ndarray):
      v = v.copy(order="C")  # np.ascontiguousarray would make 0-d arrays 1-d
      key = str(len(self.blobs))
      self.blobs[key] = v
      self.global_("torch._utils", "_rebuild_tensor_v2")
      self.out += b"(("
      self.string("storage")
      self.global_("torch", _STORAGE[v.dtype])
      self.string(key)
      self.string("cpu")
      self.integer(v.size)
      self.out += b"tQ"  # TUPLE BINPERSID
      self.integer(0)
      self.int_tuple(v.shape)
      self.int_tuple([s // v.itemsize for s in v.strides])
      self.out += b"\x89"  # requires_grad False
      self.global_("collections", "OrderedDict")
      self.out += b")R"  # backward hooks: OrderedDict()
      self.global_("torch.jit._pickle", "restore_type_tag")  # math bits, as torch >= 1.13 writes
      self.out += b"}"
      self.string("Dict[int, bool]")
      self.out += b"\x86R"  # TUPLE2 REDUCE
      self.out += b"tR"  # the argument tuple ; _rebuild_tensor_v2(...)
    elif v is None:
      self.out += b"N"
    elif isinstance(v, bool):
      self.out += b"\x88" if v else b"\x89"
    elif isinstance(v, int):
      self.integer(v)
    else:
      raise TypeError(type(v))


def _class_sources(root):
  """{code file: source} with a class header and declarations for every module class."""
  files, seen, stack = {}, set(), [root]
  while stack:
    module = stack.pop()
    for attr in module.attributes.values():
      if isinstance(attr, _Module):
        stack.append(attr)
    if module.qualified_name in seen:
      continue
    seen.add(module.qualified_name)
    path, name = module.qualified_name.rsplit(".", 1)
    lines = [f"class {name}(Module):",
             "  __parameters__ = [" + "".join(f'"{p}", ' for p in module.parameters) + "]",
             "  __buffers__ = [" + "".join(f'"{b}", ' for b in module.buffers) + "]"]
    lines += [f"  {a} : Tensor" for a in module.parameters + module.buffers]
    lines += ["  training : bool", "  def forward(self: __torch__.X) -> Tensor:",
              "    return torch.add(self.weight, 1)", ""]
    files.setdefault(f"code/{path.replace('.', '/')}.py", []).extend(lines)
  return {k: "\n".join(v) for k, v in files.items()}


def _write_torchscript(root, path, archive="ViT-B-32", code=True, data_pkl=None):
  writer = _Pickle()
  writer.value(root)
  writer.out += b"."
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{archive}/data.pkl", bytes(writer.out) if data_pkl is None else data_pkl)
    z.writestr(f"{archive}/constants.pkl", b"\x80\x02).")
    z.writestr(f"{archive}/version", "3\n")
    if code:
      for name, source in _class_sources(root).items():
        z.writestr(f"{archive}/{name}", source)
    for key, array in writer.blobs.items():
      z.writestr(f"{archive}/data/{key}", array.tobytes())


def _openai_layout(sd):
  """The module tree of OpenAI's scripted CLIP holding the weights of `sd`."""
  nn, clip = "__torch__.torch.nn.modules", "__torch__.clip.model"

  def linear(prefix, cls=f"{nn}.linear.Linear"):
    return _Module(cls, {"training": False, "weight": sd[prefix + ".weight"],
                         "bias": sd[prefix + ".bias"]}, ["weight", "bias"])

  def layer_norm(prefix, cls=f"{clip}.LayerNorm"):
    return _Module(cls, {"weight": sd[prefix + ".weight"], "bias": sd[prefix + ".bias"],
                         "training": False}, ["weight", "bias"])

  blocks = {}
  layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
  for i in range(layers):
    p = f"transformer.resblocks.{i}"
    width = sd[p + ".ln_1.weight"].shape[0]
    attn = _Module(f"{nn}.activation.MultiheadAttention", {
        "training": False, "in_proj_weight": sd[p + ".attn.in_proj_weight"],
        "in_proj_bias": sd[p + ".attn.in_proj_bias"], "q_proj_weight": None,
        "out_proj": linear(p + ".attn.out_proj", f"{nn}.linear.NonDynamicallyQuantizableLinear"),
        "_is_full_backward_hook": None}, ["in_proj_weight", "in_proj_bias", "q_proj_weight"])
    mlp = _Module(f"{nn}.container.___torch_mangle_2.Sequential", {
        "training": False, "c_fc": linear(p + ".mlp.c_fc"),
        "gelu": _Module(f"{clip}.QuickGELU", {"training": False}),
        "c_proj": linear(p + ".mlp.c_proj", f"{nn}.linear.___torch_mangle_3.Linear")})
    blocks[str(i)] = _Module(f"{clip}.ResidualAttentionBlock", {
        "training": False, "attn": attn,
        "ln_1": layer_norm(p + ".ln_1", f"{clip}.___torch_mangle_1.LayerNorm"), "mlp": mlp,
        "ln_2": layer_norm(p + ".ln_2"),
        # A tensor attribute that is neither parameter nor buffer: not part of the state dict.
        "attn_mask": np.triu(np.full((3, 3), -np.inf, np.float32), 1)})
  visual = _Module(f"{clip}.VisionTransformer", {
      "training": False, "class_embedding": sd["visual.class_embedding"],
      "conv1": _Module(f"{nn}.conv.Conv2d", {"weight": sd["visual.conv1.weight"],
                                             "training": False}, ["weight"])},
      ["class_embedding"])
  return _Module(f"{clip}.CLIP", {
      "training": False, "positional_embedding": sd["positional_embedding"],
      "text_projection": sd["text_projection"], "logit_scale": sd["logit_scale"],
      "input_resolution": np.array(224, np.int64), "context_length": np.array(77, np.int64),
      "vocab_size": np.array(49408, np.int64), "visual": visual,
      "transformer": _Module(f"{clip}.Transformer", {
          "training": False, "resblocks": _Module(f"{nn}.container.Sequential",
                                                  dict(training=False, **blocks))}),
      "token_embedding": _Module(f"{nn}.sparse.Embedding", {
          "training": False, "weight": sd["token_embedding.weight"]}, ["weight"]),
      "ln_final": layer_norm("ln_final")},
      ["positional_embedding", "text_projection", "logit_scale"],
      ["input_resolution", "context_length", "vocab_size"])


def test_openai_torchscript_archive_loads_and_runs(tmp_path):
  rng = np.random.default_rng(2)
  sd = _random_clip_state_dict(rng, **TINY, dtype=np.float16)  # OpenAI ships float16 weights
  path = tmp_path / "ViT-B-32.pt"
  _write_torchscript(_openai_layout(sd), path)
  assert safe_load.is_torchscript_archive(path)
  loaded = convert_clip.load_openai_clip(path)
  buffers = {"input_resolution", "context_length", "vocab_size"}
  assert set(loaded) == set(sd) | buffers
  assert list(loaded)[:6] == ["positional_embedding", "text_projection", "logit_scale",
                              "input_resolution", "context_length", "vocab_size"]
  for key, value in sd.items():
    assert loaded[key].dtype == np.float16 and loaded[key].shape == value.shape
    np.testing.assert_array_equal(loaded[key], value)
  assert int(loaded["vocab_size"]) == 49408
  params, report = convert_clip.clip_params_from_state_dict(loaded, "")
  assert set(report.unused) == buffers | {"text_projection", "logit_scale",
                                          "visual.class_embedding", "visual.conv1.weight"}
  config = convert_clip.infer_clip_config(loaded, "", num_heads=TINY["num_heads"])
  prompt = rng.normal(0, 1, (2, TINY["context_length"], TINY["width"]))
  np.testing.assert_allclose(_flax_clip(params, config, prompt),
                             _numpy_clip(sd, prompt, TINY["num_heads"]), atol=2e-5, rtol=1e-5)


def test_torchscript_reader_refuses_what_it_must(tmp_path):
  sd = _random_clip_state_dict(np.random.default_rng(3), **TINY)
  root = _openai_layout(sd)
  # A code-running global inside the module tree of a TorchScript archive.
  marker = tmp_path / "pwned"
  evil = tmp_path / "evil.pt"
  _write_torchscript(root, evil, data_pkl=pickle.dumps({"visual": RunsCode(marker)}, protocol=2))
  with pytest.raises(safe_load.UnsafePickleError, match=r"evil\.pt.*system"):
    convert_clip.load_openai_clip(evil)
  assert not marker.exists()
  # A __torch__ name is a class stub only: calling it with arguments builds nothing.
  reduce_args = b"\x80\x02c__torch__.clip.model\nCLIP\nX\x01\x00\x00\x00x\x85R."
  odd = tmp_path / "odd.pt"
  _write_torchscript(root, odd, data_pkl=reduce_args)
  with pytest.raises(ValueError, match=r"odd\.pt.*corrupt"):
    safe_load.load_torchscript_state_dict(odd)
  bad_name = tmp_path / "name.pt"
  _write_torchscript(root, bad_name, data_pkl=b"\x80\x02c__torch__.a b\nC\n)\x81.")
  with pytest.raises(safe_load.UnsafePickleError, match="malformed TorchScript class name"):
    safe_load.load_torchscript_state_dict(bad_name)
  # The torch.save reader does not take TorchScript classes, and says what to use instead.
  good = tmp_path / "good.pt"
  _write_torchscript(root, good)
  with pytest.raises(safe_load.UnsafePickleError, match="load_torchscript_state_dict"):
    safe_load.load_torch_checkpoint(good)
  # Classes whose declarations are missing from code/.
  no_code = tmp_path / "no_code.pt"
  _write_torchscript(root, no_code, code=False)
  with pytest.raises(ValueError, match=r"source of TorchScript class '__torch__\.clip\.model"):
    safe_load.load_torchscript_state_dict(no_code)
  # A plain torch.save file is not a TorchScript archive; load_openai_clip still reads it.
  plain = tmp_path / "plain.pt"
  torch_format.save(sd, plain)
  with pytest.raises(ValueError, match="not a TorchScript archive"):
    safe_load.load_torchscript_state_dict(plain)
  assert set(convert_clip.load_openai_clip(plain)) == set(sd)
  with pytest.raises(FileNotFoundError, match="missing.pt"):
    convert_clip.load_openai_clip(tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------------
# Prompts.


def _fixture(family):
  folder = parity_dir(family)
  io = np.load(folder / "io.npz")
  state_dict = common.extract_state_dict(
      safe_load.load_torch_checkpoint(folder / "denoiser.pth"), folder / "denoiser.pth",
      dict_key="model_pos")
  return io, convert_clip.ctx_from_state_dict(state_dict, "pose_estimator.")


@pytest.mark.parametrize("family", ["finepose", "dsgdiffu"])
def test_prompt_assembly_matches_upstream(family):
  io, ctx = _fixture(family)
  table, positions = io["stub_token_table"], io["stub_positional_embedding"]

  def stub_embedding(ids):  # the fixture's stand-in for CLIP's token embedding
    return table[np.asarray(ids) % table.shape[0]]

  assert set(ctx) == set(prompts.ctx_lengths(family, "h36m"))
  for name, rows in prompts.ctx_lengths(family, "h36m").items():
    assert ctx[name].shape == (rows, table.shape[1])
  expected = np.transpose(io["text_assembled_clip_input"], (1, 0, 2))  # LND -> NLD
  for b in range(expected.shape[0]):
    prompt = prompts.assemble_prompt(stub_embedding, ctx, io["text_tokens"][b],
                                     io["pre_text_tokens"][b], family=family, dataset="h36m")
    # The fixture saved the prompt after upstream added the positional embedding; ours stops
    # before it (ClipTextTransformer adds it), so the stub positions are added here.
    np.testing.assert_allclose(np.asarray(prompt) + positions, expected[b], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["finepose", "dsgdiffu"])
def test_token_constants_and_eot_match_upstream(family):
  io, _ = _fixture(family)
  np.testing.assert_array_equal(prompts.eot_index(io["text_tokens"]),
                                np.argmax(io["text_tokens"], axis=-1))
  names = [prompts.action_prompt_name(n) for n in ("Walking 1", "SittingDown")]
  np.testing.assert_array_equal(np.stack([prompts.action_tokens(n) for n in names]),
                                io["text_tokens"])
  for b in range(io["pre_text_tokens"].shape[0]):
    np.testing.assert_array_equal(prompts.pre_text_tokens(), io["pre_text_tokens"][b])
  np.testing.assert_array_equal(prompts.eot_index(io["text_tokens"], dataset="3dhp"),
                                np.full(io["text_tokens"].shape[:1], 76))


def test_action_names():
  assert prompts.action_prompt_name("Directions 1") == "Directions"
  assert prompts.action_prompt_name("WalkDog") == "WalkDog"
  assert [int(prompts.eot_index(prompts.action_tokens(a))) for a in
          ("Phoning", "SittingDown", "Eating")] == [3, 4, 2]
  with pytest.raises(ValueError, match="known actions"):
    prompts.action_tokens("Dancing 2")
  with pytest.raises(ValueError, match="action key"):
    prompts.action_prompt_name(" Walking")


@pytest.fixture(scope="module")
def real_vocab_clip():
  """A 1-layer, 8-wide CLIP text tower with the real vocabulary and context: (config, params)."""
  config = dict(vocab_size=clip_text.VOCAB_SIZE, context_length=prompts.CONTEXT_LENGTH, width=8,
                num_layers=1, num_heads=2)
  model = clip_text.ClipTextTransformer(**config)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 77, 8)))["params"]
  return config, jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("family,dataset", [("finepose", "h36m"), ("dsgdiffu", "h36m"),
                                            ("finepose", "3dhp"), ("dsgdiffu", "3dhp")])
def test_text_cache(family, dataset, real_vocab_clip):
  config, params = real_vocab_clip
  model = clip_text.ClipTextTransformer(**config)
  rng = np.random.default_rng(4)
  ctx = {n: rng.normal(0, 0.02, (rows, 8)).astype(np.float32)
         for n, rows in prompts.ctx_lengths(family, dataset).items()}
  actions = ("Walking 1", "SittingDown") if dataset == "h36m" else None
  cache = prompts.text_cache(params, config, ctx, family=family, dataset=dataset, actions=actions)
  num = 2 if dataset == "h36m" else 1
  assert cache["clip_features"].shape == (num, 77, 8) and cache["clip_features"].dtype == np.float32
  assert cache["eot_index"].dtype == np.int32
  if dataset == "h36m":
    assert cache["actions"] == ("Walking", "SittingDown")
    assert cache["eot_index"].tolist() == [2, 4]
  else:
    assert cache["actions"] == (prompts.NO_ACTION,) and cache["eot_index"].tolist() == [76]

  def embed(ids):
    return params["token_embedding"][np.asarray(ids)]

  tokens = prompts.action_tokens("SittingDown") if dataset == "h36m" else None
  prompt = prompts.assemble_prompt(embed, ctx, tokens, prompts.pre_text_tokens(), family=family,
                                   dataset=dataset)
  features = jax.jit(model.apply)({"params": params}, prompt[None])
  np.testing.assert_allclose(cache["clip_features"][-1], np.asarray(features)[0], atol=1e-6)
  if (family, dataset) == ("dsgdiffu", "3dhp"):  # upstream's 66 tokens, padded with token 0
    np.testing.assert_array_equal(np.asarray(prompt[66:]),
                                  np.repeat(np.asarray(params["token_embedding"][:1]), 11, 0))
  with pytest.raises(ValueError, match="ctx_arm has shape"):
    prompts.text_cache(params, config, dict(ctx, arm=np.zeros((3, 8), np.float32)),
                       family=family, dataset=dataset, actions=actions)
  if dataset == "3dhp":
    with pytest.raises(ValueError, match="no action text"):
      prompts.text_cache(params, config, ctx, family=family, dataset=dataset, actions=("Walking",))
