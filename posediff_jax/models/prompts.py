"""FinePOSE and DSGDiffu text prompts: token ids, prompt assembly and the per-action CLIP cache.

FinePOSE (spec video_family.md §2.2) and DSGDiffu (§3) describe each clip by its Human3.6M action
name and six fixed "pre-text" words. Each prompt segment is a block of context vectors `ctx_<name>`
followed by the first few CLIP token embeddings of a word; the 77-token concatenation goes through
CLIP's text tower (`posediff_jax.models.clip_text`). CLIP and the context vectors are frozen
upstream (the whole branch runs under `torch.no_grad`), so the CLIP output is one constant
[77, W] tensor per action: `text_cache` computes them once, at conversion time, and the denoisers
only ever see `clip_features [A, 77, W]` and `eot_index [A]`.

Everything here is data or pure functions; no file is read at run time.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posediff_jax.models import clip_text as clip_models

CONTEXT_LENGTH = 77
START_OF_TEXT = 49406
END_OF_TEXT = 49407
PADDING = 0

# CLIP BPE ids of `clip.tokenize(word, truncate=True)` without the zero padding, copied from
# shared/specs/clip_prompt_tokens.json (produced with openai/CLIP's simple_tokenizer).
ACTION_TOKEN_IDS: dict[str, tuple[int, ...]] = {
    "Directions": (49406, 16440, 49407),
    "Discussion": (49406, 5060, 49407),
    "Eating": (49406, 4371, 49407),
    "Greeting": (49406, 17754, 49407),
    "Phoning": (49406, 745, 5197, 49407),
    "Photo": (49406, 1125, 49407),
    "Posing": (49406, 10518, 49407),
    "Purchases": (49406, 21887, 49407),
    "Sitting": (49406, 4919, 49407),
    "SittingDown": (49406, 42988, 653, 1136, 49407),
    "Smoking": (49406, 9038, 49407),
    "Waiting": (49406, 2680, 49407),
    "WalkDog": (49406, 8588, 1929, 49407),
    "Walking": (49406, 3941, 49407),
    "WalkTogether": (49406, 8588, 1952, 49407),
    # S1's names in the Martinez-archive conversion of data_3d_h36m.npz (spec §13).
    "TakingPhoto": (49406, 648, 2365, 1125, 49407),
    "WalkingDog": (49406, 12644, 1929, 49407),
}
# The 15 Human3.6M actions as VideoPose3D's npz files name them (the default cache rows).
H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing",
                "Purchases", "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking",
                "WalkTogether")
# The pre-text of both models and both datasets, in prompt order; ids from the same json.
PRE_TEXT_WORDS = ("A person", "speed", "head", "body", "arm", "leg")
PRE_TEXT_TOKEN_IDS: dict[str, tuple[int, ...]] = {
    "A person": (49406, 320, 2533, 49407),
    "speed": (49406, 4163, 49407),
    "head": (49406, 1375, 49407),
    "body": (49406, 1774, 49407),
    "arm": (49406, 4793, 49407),
    "leg": (49406, 4924, 49407),
}

FAMILIES = ("finepose", "dsgdiffu")
DATASETS = ("h36m", "3dhp")
# 3DHP prompts have no action text; upstream reads the text feature at this fixed position.
EOT_INDEX_3DHP = 76
# The name of the single 3DHP cache row.
NO_ACTION = ""

# Prompt layout per (family, dataset): (ctx name, ctx rows, token source, embedded tokens kept).
# A source is a pre-text index 0..5 or "action". Upstream spells these as remain_len / ctx sizes.
_LAYOUTS: dict[tuple[str, str], tuple[tuple[str, int, Any, int], ...]] = {
    ("finepose", "h36m"): (
        ("subject", 3, 0, 4), ("verb", 8, "action", 4), ("speed", 6, 1, 4), ("head", 6, 2, 4),
        ("body", 6, 3, 4), ("arm", 10, 4, 4), ("leg", 10, 5, 4)),
    ("dsgdiffu", "h36m"): (
        ("subject", 0, 0, 7), ("verb", 0, "action", 12), ("speed", 6, 1, 4), ("head", 6, 2, 4),
        ("body", 6, 3, 4), ("arm", 10, 4, 4), ("leg", 10, 5, 4)),
    ("finepose", "3dhp"): (
        ("subject", 5, 0, 4), ("speed", 8, 1, 4), ("head", 8, 2, 4), ("body", 8, 3, 4),
        ("arm", 12, 4, 4), ("leg", 12, 5, 4)),
    # Upstream quirk: this layout is 66 tokens and crashes against the 77 positions (spec §3.4).
    ("dsgdiffu", "3dhp"): (
        ("subject", 2, 0, 4), ("speed", 0, 1, 4), ("head", 8, 2, 4), ("body", 8, 3, 4),
        ("arm", 12, 4, 4), ("leg", 12, 5, 4)),
}


def _check_variant(family: str, dataset: str) -> None:
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def ctx_lengths(family: str, dataset: str) -> dict[str, int]:
  """{ctx name: rows} that a checkpoint of this variant carries (the `ctx_*` shapes' first axis)."""
  _check_variant(family, dataset)
  return {name: rows for name, rows, _, _ in _LAYOUTS[(family, dataset)]}


def pad_tokens(ids: Sequence[int], length: int = CONTEXT_LENGTH) -> np.ndarray:
  """int32 [length]: `ids` followed by zero padding, as `clip.tokenize` returns them."""
  if len(ids) > length:
    raise ValueError(f"pad_tokens: {len(ids)} token ids do not fit a context of {length}")
  out = np.full((length,), PADDING, np.int32)
  out[:len(ids)] = ids
  return out


def action_prompt_name(action_key: str) -> str:
  """The prompt word of a Human3.6M action key: the text before the first space.

  "Directions 1" -> "Directions", "WalkDog" -> "WalkDog" (upstream `action.split(' ')[0]`).

  Raises:
    ValueError: an empty key, or one that starts with a space.
  """
  if not isinstance(action_key, str) or not action_key.split(" ")[0]:
    raise ValueError(f"action_prompt_name: expected an action key like 'Directions 1', got "
                     f"{action_key!r}")
  return action_key.split(" ")[0]


def action_tokens(action: str) -> np.ndarray:
  """int32 [77] CLIP token ids of an action name or key ("Walking", "Walking 1").

  Raises:
    ValueError: a name without embedded token ids (listing the known names).
  """
  name = action_prompt_name(action)
  if name not in ACTION_TOKEN_IDS:
    raise ValueError(f"no CLIP token ids for action {name!r} (from {action!r}); known actions: "
                     f"{', '.join(ACTION_TOKEN_IDS)}")
  return pad_tokens(ACTION_TOKEN_IDS[name])


def pre_text_tokens() -> np.ndarray:
  """int32 [6, 77] CLIP token ids of the pre-text words, in `PRE_TEXT_WORDS` order."""
  return np.stack([pad_tokens(PRE_TEXT_TOKEN_IDS[w]) for w in PRE_TEXT_WORDS])


def eot_index(tokens: Any = None, *, dataset: str = "h36m") -> np.ndarray:
  """Where upstream reads the pooled text feature (spec §2.2, quirk §11.5).

  Human3.6M: argmax of the *action's own* token ids, i.e. its end-of-text position (2 for most
  actions, 3 for Phoning / WalkDog / WalkTogether, 4 for SittingDown), applied to the assembled
  77-token prompt. 3DHP: always 76.

  Args:
    tokens: int [..., 77] action token ids (h36m); for 3dhp optional, only its batch shape is used.
    dataset: "h36m" or "3dhp".

  Returns:
    int32 [...] (a 0-d array for 3dhp without tokens).
  """
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
  if dataset == "3dhp":
    shape = () if tokens is None else np.shape(tokens)[:-1]
    return np.full(shape, EOT_INDEX_3DHP, np.int32)
  if tokens is None:
    raise ValueError("eot_index: Human3.6M needs the action token ids [..., 77]")
  tokens = np.asarray(tokens)
  if tokens.ndim < 1 or tokens.shape[-1] != CONTEXT_LENGTH:
    raise ValueError(f"eot_index: tokens have shape {list(tokens.shape)}, expected "
                     f"[..., {CONTEXT_LENGTH}]")
  return np.argmax(tokens, axis=-1).astype(np.int32)


def assemble_prompt(token_embedding_fn: Callable[[Any], jax.Array],
                    ctx: Mapping[str, Any], action_tokens: Any, pre_tokens: Any, *,
                    family: str = "finepose", dataset: str = "h36m") -> jax.Array:
  """The 77 prompt embeddings that upstream's `encode_text` feeds CLIP, before the positions.

  FinePOSE on Human3.6M (spec §2.2): ctx_subject(3) + E("A person")[0:4], ctx_verb(8) +
  E(action)[0:4], then ctx_speed(6), ctx_head(6), ctx_body(6), ctx_arm(10), ctx_leg(10), each
  followed by E(its pre-text word)[0:4]. DSGDiffu on Human3.6M (§3.2): no subject / verb
  context, E("A person")[0:7] and E(action)[0:12], the rest as FinePOSE. 3DHP (§2.4, §3.4) has no
  action segment: FinePOSE uses ctx lengths 5, 8, 8, 8, 12, 12 with [0:4] slices.

  DSGDiffu on 3DHP is broken as released: ctx lengths 2, 0, 8, 8, 12, 12 with [0:4] slices make 66
  tokens, which upstream adds to the 77 positional embeddings and crashes. Fix chosen here: the
  prompt is padded to 77 with the embedding of the padding token (id 0), as `clip.tokenize` pads.
  Because CLIP's attention is causal, positions 0..65 of the CLIP output equal those of running the
  66-token prompt; positions 66..76 (and the fixed read-out position 76) see the padding.

  Args:
    token_embedding_fn: ids int [..., 77] -> [..., 77, W], CLIP's token embedding (e.g.
      `ClipTextTransformer.embed_tokens` bound to params).
    ctx: {name: [n, W]} context vectors (`convert.clip_text.ctx_from_state_dict`); the names and
      row counts must be those of `ctx_lengths(family, dataset)` (a zero-row entry may be absent).
    action_tokens: int [77] the action's token ids (h36m); ignored (may be None) for 3dhp.
    pre_tokens: int [6, 77] the pre-text token ids (`pre_text_tokens()`).
    family: "finepose" or "dsgdiffu".
    dataset: "h36m" or "3dhp".

  Returns:
    [77, W] prompt embeddings without the positional embedding (`ClipTextTransformer` adds it).

  Raises:
    ValueError: unknown family / dataset, ctx names or shapes that do not fit the variant, or token
      arrays of the wrong shape.
  """
  _check_variant(family, dataset)
  layout = _LAYOUTS[(family, dataset)]
  expected = {name: rows for name, rows, _, _ in layout}
  unexpected = sorted(set(ctx) - set(expected))
  if unexpected:
    raise ValueError(f"assemble_prompt: ctx has {unexpected}, which {family} on {dataset} does not "
                     f"use (expected {sorted(expected)})")
  pre_tokens = np.asarray(pre_tokens)
  if pre_tokens.shape != (len(PRE_TEXT_WORDS), CONTEXT_LENGTH):
    raise ValueError(f"assemble_prompt: pre_tokens have shape {list(pre_tokens.shape)}, expected "
                     f"[{len(PRE_TEXT_WORDS)}, {CONTEXT_LENGTH}]")
  embedded_pre = token_embedding_fn(pre_tokens)
  width = embedded_pre.shape[-1]
  embedded_action = None
  if dataset == "h36m":
    action_tokens = np.asarray(action_tokens)
    if action_tokens.shape != (CONTEXT_LENGTH,):
      raise ValueError(f"assemble_prompt: action_tokens have shape {list(action_tokens.shape)}, "
                       f"expected [{CONTEXT_LENGTH}]")
    embedded_action = token_embedding_fn(action_tokens)
  pieces = []
  for name, rows, token_source, kept in layout:
    vectors = ctx.get(name)
    if vectors is None and rows == 0:
      vectors = jnp.zeros((0, width), jnp.float32)
    if vectors is None:
      raise ValueError(f"assemble_prompt: ctx_{name} [{rows}, W] is missing ({family} on "
                       f"{dataset})")
    if tuple(np.shape(vectors)) != (rows, width):
      raise ValueError(f"assemble_prompt: ctx_{name} has shape {list(np.shape(vectors))}, "
                       f"expected [{rows}, {width}] for {family} on {dataset}")
    words = embedded_action if token_source == "action" else embedded_pre[token_source]
    pieces += [jnp.asarray(vectors, jnp.float32), jnp.asarray(words[:kept], jnp.float32)]
  prompt = jnp.concatenate(pieces, axis=0)
  if prompt.shape[0] < CONTEXT_LENGTH:
    padding = token_embedding_fn(np.full((CONTEXT_LENGTH - prompt.shape[0],), PADDING, np.int32))
    prompt = jnp.concatenate([prompt, jnp.asarray(padding, jnp.float32)], axis=0)
  return prompt


def text_cache(clip_params: Mapping[str, Any], clip_config: Mapping[str, int],
               ctx: Mapping[str, Any], *, family: str, dataset: str,
               actions: Sequence[str] | None = None) -> dict[str, Any]:
  """CLIP's text features of every action prompt, computed once.

  Args:
    clip_params: `ClipTextTransformer` params (`convert.clip_text.clip_params_from_state_dict`).
    clip_config: its keyword arguments (`convert.clip_text.infer_clip_config`).
    ctx: {name: [n, W]} context vectors of the checkpoint.
    family: "finepose" or "dsgdiffu".
    dataset: "h36m" or "3dhp".
    actions: Human3.6M action names or keys (default `H36M_ACTIONS`); must be None for 3dhp.

  Returns:
    {"actions": tuple of A prompt names (`(NO_ACTION,)` for 3dhp), "clip_features": float32
    [A, 77, W] = ln_final(transformer(prompt + positions)), "eot_index": int32 [A]}.

  Raises:
    ValueError: as `assemble_prompt`; unknown or repeated actions; actions given for 3dhp.
  """
  _check_variant(family, dataset)
  model = clip_models.ClipTextTransformer(**clip_config)
  pre = pre_text_tokens()
  if dataset == "3dhp":
    if actions is not None:
      raise ValueError("text_cache: 3DHP prompts have no action text; pass actions=None")
    names, tokens = (NO_ACTION,), [None]
  else:
    names = tuple(action_prompt_name(a) for a in (H36M_ACTIONS if actions is None else actions))
    if len(set(names)) != len(names):
      raise ValueError(f"text_cache: actions repeat a prompt name: {list(names)}")
    tokens = [action_tokens(n) for n in names]

  @jax.jit  # one compilation instead of one per eager slice / concatenation
  def features_of(params, ctx):
    def embed(ids):
      return model.apply({"params": params}, ids, method=model.embed_tokens)

    prompts = jnp.stack([assemble_prompt(embed, ctx, t, pre, family=family, dataset=dataset)
                         for t in tokens])
    return model.apply({"params": params}, prompts)

  features = features_of(clip_params, {k: jnp.asarray(v, jnp.float32) for k, v in ctx.items()})
  eot = (eot_index(np.stack(tokens)) if dataset == "h36m"
         else np.full((1,), EOT_INDEX_3DHP, np.int32))
  return {"actions": names, "clip_features": np.asarray(features, np.float32),
          "eot_index": eot.astype(np.int32)}
