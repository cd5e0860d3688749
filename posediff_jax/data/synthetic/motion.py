"""The motion library: fifteen Human3.6M-like actions as joint-angle tracks over time.

Each action is a distinct family of motion: walking gaits along a path, pointing and waving,
hand-to-mouth cycles, sitting on a chair or the floor, bending, posing. `synthesize_sequence`
drives `body`'s skeleton with one of them; every (subject, action) draws from its own random
stream (`body.rng`), so a subset of subjects or actions reproduces the same motion as the full set.
"""

from typing import Callable

import numpy as np

from posediff_jax.data import h36m
from posediff_jax.data.synthetic import body

# The 15 Human3.6M actions, in the order of the upstream per-action table (the readers' own list).
ACTIONS = h36m.ACTIONS
DEFAULT_FRAME_RATE_HZ = 25.0  # half of Human3.6M's 50 Hz: fewer, more varied frames per second


# ----------------------------------------------------------------------------------------------
# Motion building blocks. Angles are in degrees, positions in metres, `t` in seconds.


_ANGLE_TRACKS = (
    "yaw", "pitch", "roll", "pelvis_tilt",
    "hip_flex_l", "hip_abd_l", "knee_l", "hip_flex_r", "hip_abd_r", "knee_r",
    "spine_bend", "spine_side", "spine_twist", "chest_bend", "chest_side", "chest_twist",
    "neck_bend", "neck_side", "neck_turn",
    "sh_flex_l", "sh_abd_l", "sh_rot_l", "elbow_l", "sh_flex_r", "sh_abd_r", "sh_rot_r", "elbow_r",
)


def _neutral(t: np.ndarray) -> dict[str, np.ndarray]:
  """A relaxed standing pose at the origin facing +x: every track `[T]`."""
  p = {name: np.zeros_like(t) for name in _ANGLE_TRACKS + ("x", "y")}
  for side in "lr":
    p[f"hip_flex_{side}"] += 2.0
    p[f"hip_abd_{side}"] += 3.0
    p[f"knee_{side}"] += 4.0
    p[f"sh_abd_{side}"] += 8.0
    p[f"elbow_{side}"] += 12.0
  p["neck_bend"] += 5.0
  return p


def _smooth(rng: np.random.Generator, t: np.ndarray, period_s: float, n: int = 3) -> np.ndarray:
  """A smooth random signal of unit RMS whose components have periods around `period_s`."""
  freqs = rng.uniform(0.6, 1.6, n) / period_s
  phases = rng.uniform(0, 2 * np.pi, n)
  amps = rng.normal(size=n)
  x = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
  return x / np.sqrt(0.5 * (amps ** 2).sum() + 1e-12)


def _smoothstep(x: np.ndarray) -> np.ndarray:
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _keyframes(rng: np.random.Generator, t: np.ndarray, hold_s: float, move_s: float,
               sample: Callable[[np.random.Generator], dict[str, float]]) -> dict[str, np.ndarray]:
  """Tracks that hold a sequence of random key poses and blend smoothly between them.

  Args:
    rng: random stream.
    t: `[T]` times.
    hold_s: mean time each key is held.
    move_s: mean time of a transition.
    sample: draws one key as {track: value}; every key must name the same tracks.

  Returns:
    {track: `[T]`}.
  """
  starts, keys, now = [], [sample(rng)], t[0] - rng.uniform(0, hold_s)
  while now <= t[-1]:
    now += hold_s * rng.uniform(0.6, 1.4)
    move = move_s * rng.uniform(0.7, 1.3)
    starts.append((now, move))
    keys.append(sample(rng))
    now += move
  out = {name: np.full_like(t, value) for name, value in keys[0].items()}
  for (start, move), key, previous in zip(starts, keys[1:], keys[:-1]):
    w = _smoothstep((t - start) / move)
    for name in out:
      out[name] += w * (key[name] - previous[name])
  return out


def _add(p: dict[str, np.ndarray], tracks: dict[str, np.ndarray], weight=1.0) -> None:
  for name, value in tracks.items():
    p[name] = p[name] + weight * value


def _spot(rng: np.random.Generator, radius: float = 0.6) -> tuple[float, float, float]:
  """A random standing place near the middle of the capture volume and a facing direction."""
  return (rng.uniform(-radius, radius), rng.uniform(-radius, radius), rng.uniform(-180, 180))


def _loop_path(rng: np.random.Generator, rx: float, ry: float):
  """An ellipse through the capture volume, as `distance -> (x, y, heading_deg)`."""
  cx, cy = rng.uniform(-0.2, 0.2, 2)
  angle = rng.uniform(0, np.pi)
  direction = rng.choice([-1.0, 1.0])
  s = np.linspace(0, 2 * np.pi, 721)
  ex, ey = rx * np.cos(direction * s), ry * np.sin(direction * s)
  px = cx + ex * np.cos(angle) - ey * np.sin(angle)
  py = cy + ex * np.sin(angle) + ey * np.cos(angle)
  arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(px), np.diff(py)))])
  start = rng.uniform(0, arc[-1])

  def at(distance: np.ndarray):
    d = (start + distance) % arc[-1]
    x, y = np.interp(d, arc, px), np.interp(d, arc, py)
    dx = np.interp(d, arc, np.gradient(px)) + 1e-12
    dy = np.interp(d, arc, np.gradient(py))
    return x, y, np.rad2deg(np.arctan2(dy, dx))

  return at


def _walk(p: dict[str, np.ndarray], rng: np.random.Generator, t: np.ndarray, speed: np.ndarray,
          path, arm_swing: float = 1.0) -> np.ndarray:
  """Adds a walking gait along `path` at `speed` m/s `[T]`; returns the gait amplitude `[T]`.

  The stride frequency grows with speed, the legs swing in antiphase with the knee flexing during
  swing, and each arm swings with the opposite leg while the pelvis and chest counter-rotate.
  """
  dt = np.diff(t, prepend=t[0])
  distance = np.cumsum(speed * dt)
  x, y, heading = path(distance)
  amp = np.clip(speed / 1.3, 0.0, 1.4)
  cadence_hz = 0.95 * np.sqrt(np.clip(speed / 1.3, 0.05, 2.0))
  phase = 2 * np.pi * np.cumsum(cadence_hz * dt) + rng.uniform(0, 2 * np.pi)
  p["x"], p["y"] = p["x"] + x, p["y"] + y
  p["yaw"] = p["yaw"] + heading + 5 * amp * np.sin(phase)
  p["chest_twist"] = p["chest_twist"] - 9 * amp * np.sin(phase)
  p["roll"] = p["roll"] + 3 * amp * np.sin(phase)
  p["spine_bend"] = p["spine_bend"] + 4 * amp
  for side, offset in (("l", 0.0), ("r", np.pi)):
    ph = phase + offset
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + amp * (24 * np.sin(ph) + 4)
    swing = np.maximum(0.0, np.cos(ph + 0.4)) ** 2
    stance = np.maximum(0.0, -np.cos(ph + 0.4)) * np.maximum(0.0, np.sin(ph))
    p[f"knee_{side}"] = p[f"knee_{side}"] + amp * (58 * swing + 12 * stance)
    # The arm swings forward with the opposite leg.
    p[f"sh_flex_{side}"] = p[f"sh_flex_{side}"] - arm_swing * amp * (20 * np.sin(ph) - 3)
    p[f"elbow_{side}"] = p[f"elbow_{side}"] + arm_swing * amp * (12 - 8 * np.sin(ph))
  return amp


def _stand_in_place(p, rng, t, drift_m=0.15, turn_deg=25.0):
  x0, y0, yaw0 = _spot(rng)
  # A slow drift (about 0.1 m/s at most), so shuffling in place without steps still looks natural.
  p["x"] = p["x"] + x0 + drift_m * _smooth(rng, t, 25.0)
  p["y"] = p["y"] + y0 + drift_m * _smooth(rng, t, 25.0)
  p["yaw"] = p["yaw"] + yaw0 + turn_deg * _smooth(rng, t, 6.0)


def _weight_shift(p, rng, t, amount_deg=4.0, period_s=5.0):
  """Shifts weight between the legs: the pelvis rolls and one knee relaxes."""
  shift = _smooth(rng, t, period_s)
  p["roll"] = p["roll"] + amount_deg * shift
  p["hip_abd_l"] = p["hip_abd_l"] - amount_deg * shift
  p["hip_abd_r"] = p["hip_abd_r"] + amount_deg * shift
  p["knee_l"] = p["knee_l"] + 3 * amount_deg * np.maximum(0, shift)
  p["knee_r"] = p["knee_r"] + 3 * amount_deg * np.maximum(0, -shift)
  p["chest_side"] = p["chest_side"] - 0.5 * amount_deg * shift


def _look_around(p, rng, t, turn_deg=25.0, nod_deg=8.0):
  p["neck_turn"] = p["neck_turn"] + turn_deg * _smooth(rng, t, 4.0)
  p["neck_bend"] = p["neck_bend"] + nod_deg * _smooth(rng, t, 3.0)


def _sit(p, rng, t, seat_lean_deg=0.0):
  """A seated pose: thighs near horizontal, shins near vertical, feet on the floor."""
  for side in "lr":
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 86 + rng.uniform(-5, 5) + 3 * _smooth(rng, t, 6)
    p[f"knee_{side}"] = p[f"knee_{side}"] + 84 + rng.uniform(-8, 8) + 4 * _smooth(rng, t, 6)
    p[f"hip_abd_{side}"] = p[f"hip_abd_{side}"] + rng.uniform(0, 10)
  p["spine_bend"] = p["spine_bend"] + seat_lean_deg + 5 * _smooth(rng, t, 7)


def _hand_to_mouth(rng, t, period_s, side):
  """One arm bringing the hand to the face and back, periodically: {track: [T]}."""
  phase = 2 * np.pi * t / period_s + rng.uniform(0, 2 * np.pi)
  lift = _smoothstep(0.5 + 0.9 * np.sin(phase))  # holds at the mouth and at rest for a while
  return {f"sh_flex_{side}": 10 + 30 * lift, f"sh_abd_{side}": 5 + 12 * lift,
          f"sh_rot_{side}": -10 * lift, f"elbow_{side}": 25 + 115 * lift}


def _arm_key(side, flex=(0, 20), abd=(5, 20), rot=(-10, 10), elbow=(5, 40)):
  def sample(rng):
    return {f"sh_flex_{side}": rng.uniform(*flex), f"sh_abd_{side}": rng.uniform(*abd),
            f"sh_rot_{side}": rng.uniform(*rot), f"elbow_{side}": rng.uniform(*elbow)}
  return sample


def _merge(*samplers):
  def sample(rng):
    out = {}
    for s in samplers:
      out.update(s(rng))
    return out
  return sample


def _set_arms(p, tracks):
  """Replaces the arm tracks named in `tracks` (the neutral arm pose is part of the keys)."""
  for name, value in tracks.items():
    p[name] = value


# ----------------------------------------------------------------------------------------------
# The 15 actions.


def _directions(p, rng, t):
  """Standing, turning and pointing with one arm at a time, head following the arm."""
  _stand_in_place(p, rng, t, drift_m=0.3, turn_deg=40)
  _weight_shift(p, rng, t)

  def key(rng):
    side = rng.choice(["l", "r", "none"])
    out = {}
    for s in "lr":
      point = s == side
      out.update({f"sh_flex_{s}": rng.uniform(60, 110) if point else rng.uniform(0, 15),
                  f"sh_abd_{s}": rng.uniform(0, 60) if point else rng.uniform(5, 15),
                  f"sh_rot_{s}": 0.0, f"elbow_{s}": rng.uniform(0, 20) if point else 15.0})
    out["neck_turn"] = {"l": 30.0, "r": -30.0, "none": 0.0}[side] * rng.uniform(0.5, 1.2)
    return out

  keys = _keyframes(rng, t, 2.0, 0.8, key)
  p["neck_turn"] = p["neck_turn"] + keys.pop("neck_turn")
  _set_arms(p, keys)


def _discussion(p, rng, t):
  """Standing and talking: both forearms gesture, the torso twists, the weight shifts."""
  _stand_in_place(p, rng, t, drift_m=0.2, turn_deg=30)
  _weight_shift(p, rng, t, 5.0, 4.0)
  _look_around(p, rng, t, 20, 10)
  p["chest_twist"] = p["chest_twist"] + 12 * _smooth(rng, t, 3.0)
  for side in "lr":
    p[f"sh_flex_{side}"] = p[f"sh_flex_{side}"] + 25 + 15 * _smooth(rng, t, 1.5)
    p[f"sh_abd_{side}"] = p[f"sh_abd_{side}"] + 10 + 8 * _smooth(rng, t, 2.0)
    p[f"elbow_{side}"] = p[f"elbow_{side}"] + 65 + 25 * _smooth(rng, t, 1.2)
    p[f"sh_rot_{side}"] = p[f"sh_rot_{side}"] + 15 * _smooth(rng, t, 2.0)


def _eating(p, rng, t):
  """Sitting at a table: one hand goes to the mouth again and again, the other rests on it."""
  _stand_in_place(p, rng, t, drift_m=0.0, turn_deg=3)
  _sit(p, rng, t, seat_lean_deg=15)
  _look_around(p, rng, t, 10, 6)
  eat, rest = ("r", "l") if rng.uniform() < 0.7 else ("l", "r")
  _set_arms(p, _hand_to_mouth(rng, t, rng.uniform(3.0, 4.5), eat))
  p[f"sh_flex_{rest}"] = 40 + 6 * _smooth(rng, t, 5)
  p[f"elbow_{rest}"] = 75 + 10 * _smooth(rng, t, 5)
  p["neck_bend"] = p["neck_bend"] + 12


def _greeting(p, rng, t):
  """Walking in, stopping and waving with a raised hand (or a short bow)."""
  v = np.interp(t, [t[0], t[0] + 0.4 * (t[-1] - t[0]), t[0] + 0.55 * (t[-1] - t[0]), t[-1]],
                [1.1, 1.1, 0.0, 0.0])
  amp = _walk(p, rng, t, v * rng.uniform(0.8, 1.1), _loop_path(rng, 1.1, 0.7))
  still = 1.0 - np.clip(amp / 0.8, 0, 1)
  side = rng.choice(["l", "r"])
  wave = 2 * np.pi * rng.uniform(1.5, 2.2) * t
  _add(p, {f"sh_flex_{side}": 30.0 + 0 * t, f"sh_abd_{side}": 75 + 15 * np.sin(0.5 * wave),
           f"sh_rot_{side}": 85.0 + 0 * t, f"elbow_{side}": 45 + 30 * np.sin(wave)}, still)
  p["spine_bend"] = p["spine_bend"] + still * 15 * np.maximum(0, _smooth(rng, t, 4))
  p["neck_bend"] = p["neck_bend"] - 8 * still


def _phoning(p, rng, t):
  """Strolling slowly with a phone at one ear; the free arm gestures, the head tilts."""
  v = 0.45 * np.clip(0.5 + _smooth(rng, t, 6), 0, 1)
  _walk(p, rng, t, v, _loop_path(rng, 0.7, 0.5), arm_swing=0.5)
  side = rng.choice(["l", "r"])
  free = "l" if side == "r" else "r"
  _set_arms(p, {f"sh_flex_{side}": 35 + 5 * _smooth(rng, t, 5),
                f"sh_abd_{side}": 35 + 5 * _smooth(rng, t, 5),
                f"sh_rot_{side}": 60.0 + 0 * t, f"elbow_{side}": 150 + 5 * _smooth(rng, t, 4)})
  p[f"sh_flex_{free}"] = p[f"sh_flex_{free}"] + 20 + 15 * _smooth(rng, t, 2)
  p[f"elbow_{free}"] = p[f"elbow_{free}"] + 40 + 30 * _smooth(rng, t, 2)
  p["neck_side"] = p["neck_side"] + (10 if side == "r" else -10)
  _look_around(p, rng, t, 15, 8)


def _photo(p, rng, t):
  """Holding a camera to the face with both hands, crouching and leaning to frame shots."""
  _stand_in_place(p, rng, t, drift_m=0.25, turn_deg=45)
  crouch = np.clip(_smooth(rng, t, 5), 0, 1)
  for side in "lr":
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 45 * crouch
    p[f"knee_{side}"] = p[f"knee_{side}"] + 75 * crouch
    _set_arms(p, {f"sh_flex_{side}": 65 + 10 * _smooth(rng, t, 4), f"sh_abd_{side}": 25 + 0 * t,
                  f"sh_rot_{side}": -20 + 0 * t, f"elbow_{side}": 125 + 10 * _smooth(rng, t, 4)})
  p["spine_bend"] = p["spine_bend"] + 10 + 12 * _smooth(rng, t, 4) + 20 * crouch
  p["neck_bend"] = p["neck_bend"] - 5 * crouch
  p["chest_twist"] = p["chest_twist"] + 10 * _smooth(rng, t, 5)


def _posing(p, rng, t):
  """Holding a series of showy poses: arms high or wide, one leg out, the torso leaning."""
  _stand_in_place(p, rng, t, drift_m=0.1, turn_deg=20)
  pose = _merge(
      _arm_key("l", (-30, 170), (0, 100), (-40, 90), (0, 130)),
      _arm_key("r", (-30, 170), (0, 100), (-40, 90), (0, 130)),
      lambda r: {"hip_abd_l": r.uniform(0, 22), "hip_abd_r": r.uniform(0, 22),
                 "knee_l": r.uniform(0, 35), "knee_r": r.uniform(0, 35),
                 "hip_flex_l": r.uniform(-10, 30), "hip_flex_r": r.uniform(-10, 30),
                 "chest_side": r.uniform(-20, 20), "spine_bend": r.uniform(-15, 25),
                 "chest_twist": r.uniform(-25, 25), "neck_side": r.uniform(-15, 15)})
  _set_arms(p, _keyframes(rng, t, 1.8, 0.7, pose))


def _purchases(p, rng, t):
  """Walking slowly with the hands in front, stopping to bend down and pick things up."""
  v = 0.7 * np.clip(0.4 + 1.2 * _smooth(rng, t, 8), 0, 1)
  amp = _walk(p, rng, t, v, _loop_path(rng, 1.0, 0.8), arm_swing=0.4)
  stopped = 1.0 - np.clip(amp / 0.3, 0, 1)
  bend = stopped * np.clip(_smooth(rng, t, 3) + 0.3, 0, 1.2)
  p["pelvis_tilt"] = p["pelvis_tilt"] + 35 * bend
  p["spine_bend"] = p["spine_bend"] + 30 * bend
  for side in "lr":
    # Hips back, knees over the feet: the legs lean forward while the trunk bends.
    p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 20 * bend
    p[f"knee_{side}"] = p[f"knee_{side}"] + 25 * bend
    p[f"sh_flex_{side}"] = p[f"sh_flex_{side}"] + 30 * (1 - bend) + 50 * bend
    p[f"elbow_{side}"] = p[f"elbow_{side}"] + 70 * (1 - bend)
  p["neck_bend"] = p["neck_bend"] + 15 + 10 * bend


def _sitting(p, rng, t):
  """Sitting on a chair, leaning back and forth, crossing the legs, hands on the lap or waving."""
  _stand_in_place(p, rng, t, drift_m=0.0, turn_deg=5)
  _sit(p, rng, t, seat_lean_deg=-5)
  cross = _smoothstep(1.5 * _smooth(rng, t, 10))  # one leg over the other for a while
  side = rng.choice(["l", "r"])
  p[f"hip_flex_{side}"] = p[f"hip_flex_{side}"] + 15 * cross
  p[f"hip_abd_{side}"] = p[f"hip_abd_{side}"] - 18 * cross
  p[f"knee_{side}"] = p[f"knee_{side}"] - 10 * cross
  p["spine_bend"] = p["spine_bend"] + 15 * _smooth(rng, t, 6)
  for s in "lr":
    p[f"sh_flex_{s}"] = p[f"sh_flex_{s}"] + 35 + 15 * np.maximum(0, _smooth(rng, t, 3))
    p[f"elbow_{s}"] = p[f"elbow_{s}"] + 50 + 30 * np.maximum(0, _smooth(rng, t, 2.5))
  _look_around(p, rng, t, 30, 10)


def _sitting_down(p, rng, t):
  """Going from standing into a deep squat and to sitting on the floor (leaning back) and back."""
  _stand_in_place(p, rng, t, drift_m=0.05, turn_deg=10)
  states = (
      dict(hip=2.0, knee=4.0, spine=0.0, arm_flex=5.0, elbow=12.0),      # standing
      dict(hip=105.0, knee=125.0, spine=35.0, arm_flex=45.0, elbow=30.0),  # deep squat
      dict(hip=80.0, knee=15.0, spine=-20.0, arm_flex=-40.0, elbow=5.0),   # on the floor
  )
  order = [0, 1, 2, 2, 1] if rng.uniform() < 0.5 else [2, 1, 0, 1, 2]
  counter = iter(range(10**6))

  def key(rng):
    s = dict(states[order[next(counter) % len(order)]])
    return {k: v + rng.uniform(-5, 5) for k, v in s.items()}

  k = _keyframes(rng, t, 1.6, 1.4, key)
  for side in "lr":
    p[f"hip_flex_{side}"] = k["hip"] + 3 * _smooth(rng, t, 4)
    p[f"knee_{side}"] = k["knee"] + 3 * _smooth(rng, t, 4)
    p[f"sh_flex_{side}"] = k["arm_flex"]
    p[f"elbow_{side}"] = k["elbow"]
    p[f"sh_abd_{side}"] = p[f"sh_abd_{side}"] + 10
  p["spine_bend"] = p["spine_bend"] + k["spine"]


def _smoking(p, rng, t):
  """Standing with one hand bringing a cigarette to the mouth, the other arm across the waist."""
  _stand_in_place(p, rng, t, drift_m=0.15, turn_deg=20)
  _weight_shift(p, rng, t, 5.0, 6.0)
  _look_around(p, rng, t, 25, 8)
  smoke = rng.choice(["l", "r"])
  other = "l" if smoke == "r" else "r"
  _set_arms(p, _hand_to_mouth(rng, t, rng.uniform(4.0, 6.0), smoke))
  _set_arms(p, {f"sh_flex_{other}": 20 + 0 * t, f"sh_abd_{other}": 5 + 0 * t,
                f"sh_rot_{other}": -55 + 0 * t, f"elbow_{other}": 95 + 5 * _smooth(rng, t, 5)})


def _waiting(p, rng, t):
  """Standing around: swaying, arms crossed, behind the back or hanging, looking about."""
  _stand_in_place(p, rng, t, drift_m=0.25, turn_deg=35)
  _weight_shift(p, rng, t, 6.0, 5.0)
  _look_around(p, rng, t, 40, 10)
  arms = rng.choice(["crossed", "behind", "hanging"], size=3)

  def key(rng):
    style = arms[rng.integers(0, 3)]
    out = {}
    for s in "lr":
      if style == "crossed":
        out.update({f"sh_flex_{s}": 25.0, f"sh_abd_{s}": 5.0, f"sh_rot_{s}": -70.0,
                    f"elbow_{s}": 110.0})
      elif style == "behind":
        out.update({f"sh_flex_{s}": -30.0, f"sh_abd_{s}": 15.0, f"sh_rot_{s}": 40.0,
                    f"elbow_{s}": 60.0})
      else:
        out.update({f"sh_flex_{s}": 0.0, f"sh_abd_{s}": 8.0, f"sh_rot_{s}": 0.0,
                    f"elbow_{s}": 12.0})
    return {k: v + rng.uniform(-5, 5) for k, v in out.items()}

  _set_arms(p, _keyframes(rng, t, 3.0, 1.0, key))
  p["spine_bend"] = p["spine_bend"] + 5 * _smooth(rng, t, 6)


def _walk_dog(p, rng, t):
  """Walking with stops and tugs, one arm held forward on the leash, the body leaning forward."""
  v = 1.1 * np.clip(0.6 + 0.8 * _smooth(rng, t, 5), 0, 1.3)
  _walk(p, rng, t, v, _loop_path(rng, 1.2, 0.9), arm_swing=0.6)
  side = rng.choice(["l", "r"])
  tug = np.clip(_smooth(rng, t, 1.5), 0, 1)
  _set_arms(p, {f"sh_flex_{side}": 35 + 15 * tug, f"sh_abd_{side}": 10 + 0 * t,
                f"sh_rot_{side}": 0 * t, f"elbow_{side}": 25 - 15 * tug})
  p["spine_bend"] = p["spine_bend"] + 8 + 6 * tug
  p["neck_bend"] = p["neck_bend"] + 12
  p["chest_twist"] = p["chest_twist"] + (8 if side == "l" else -8)


def _walking(p, rng, t):
  """A steady walk around the room on an elliptical path with a normal arm swing."""
  _walk(p, rng, t, np.full_like(t, rng.uniform(1.1, 1.4)), _loop_path(rng, 1.3, 0.9))
  _look_around(p, rng, t, 8, 4)


def _walk_together(p, rng, t):
  """A slower walk on an elongated loop, head and chest turned towards a companion."""
  v = np.full_like(t, rng.uniform(0.8, 1.0))
  _walk(p, rng, t, v, _loop_path(rng, 1.5, 0.35), arm_swing=0.5)
  companion = rng.choice([-1.0, 1.0])
  p["neck_turn"] = p["neck_turn"] + companion * (25 + 10 * _smooth(rng, t, 3))
  p["chest_twist"] = p["chest_twist"] + companion * 8
  side = "l" if companion > 0 else "r"
  p[f"elbow_{side}"] = p[f"elbow_{side}"] + 30 * np.maximum(0, _smooth(rng, t, 2))


_MOTIONS = {
    "Directions": _directions, "Discussion": _discussion, "Eating": _eating,
    "Greeting": _greeting, "Phoning": _phoning, "Photo": _photo, "Posing": _posing,
    "Purchases": _purchases, "Sitting": _sitting, "SittingDown": _sitting_down,
    "Smoking": _smoking, "Waiting": _waiting, "WalkDog": _walk_dog, "Walking": _walking,
    "WalkTogether": _walk_together,
}


def synthesize_sequence(subject: str, action: str, frames: int, *, seed: int = 0,
                        frame_rate_hz: float = DEFAULT_FRAME_RATE_HZ) -> np.ndarray:
  """The 3D motion of one (subject, action) sequence.

  Args:
    subject: one of `body.SUBJECTS`.
    action: one of `ACTIONS` (the base name, e.g. 'Walking').
    frames: number of frames T.
    seed: generator seed.
    frame_rate_hz: frames per second of the motion.

  Returns:
    float32 `[T, 32, 3]`, world metres.
  """
  body.check_names("subject", [subject], body.SUBJECTS)
  body.check_names("action", [action], ACTIONS)
  rng = body.rng(seed, body.SUBJECTS.index(subject), ACTIONS.index(action), 1)
  t = np.arange(frames, dtype=np.float64) / frame_rate_hz
  p = _neutral(t)
  _MOTIONS[action](p, rng, t)
  # A little individual tremor on every angle, so no two frames are exactly alike.
  for name in _ANGLE_TRACKS:
    p[name] = p[name] + 1.5 * _smooth(rng, t, 1.0)
  # Hinge joints stay within their anatomical range whatever the motion above asked for.
  for side in "lr":
    p[f"knee_{side}"] = np.clip(p[f"knee_{side}"], 0.0, 150.0)
    p[f"elbow_{side}"] = np.clip(p[f"elbow_{side}"], 0.0, 155.0)
  bones = body.subject_bone_lengths(subject, seed)
  pos17, glob = body.forward_kinematics(p, bones)
  return body.expand_to_32(pos17, glob, bones).astype(np.float32)
