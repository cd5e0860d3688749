"""Cameras: the Human3.6M calibration table, the camera maths, and the MPI-INF-3DHP test cameras.

The Human3.6M numbers are the VideoPose3D constants (`common/h36m_dataset.py`), which DiffPose and
its successors copy unchanged. Camera frames follow VideoPose3D: `x_cam = R^-1 (x_world - t)` with
the rotation given as a unit quaternion `(w, x, y, z)`; lengths are metres.

`project_to_2d` / `project_to_2d_linear` project with a 9-entry intrinsic vector
`[fx, fy, cx, cy, k1, k2, k3, p1, p2]` (VideoPose3D `common/camera.py`); D3DP's JPMA uses them.
The two MPI-INF-3DHP test cameras (TS1-4 and TS5-6) are the mm values upstream `main_3dhp.py`
hard-codes, converted with `cam_mm_to_pix`.

Everything here is numpy. `qrot`, `qinverse`, `world_to_camera`, `camera_to_world`,
`project_to_pixels`, `project_to_2d` and `project_to_2d_linear` also accept jax arrays (and then
return jax arrays), so they run under `jax.jit`.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Camera:
  """One calibrated Human3.6M camera as seen from one subject's session.

  Attributes:
    id: the camera's serial number, e.g. '54138969'.
    res_w: image width in pixels.
    res_h: image height in pixels.
    center: principal point `(cx, cy)` in pixels.
    focal_length: `(fx, fy)` in pixels.
    radial_distortion: `(k1, k2, k3)`.
    tangential_distortion: `(p1, p2)`.
    orientation: camera-to-world rotation as a unit quaternion `(w, x, y, z)`.
    translation: camera position in world coordinates, metres.
    azimuth: viewing azimuth in degrees (only for visualisation).
  """
  id: str
  res_w: int
  res_h: int
  center: tuple[float, float]
  focal_length: tuple[float, float]
  radial_distortion: tuple[float, float, float]
  tangential_distortion: tuple[float, float]
  orientation: tuple[float, float, float, float]
  translation: tuple[float, float, float]
  azimuth: float = 0.0


# Intrinsics per camera (pixels), in the camera order every subject's list uses.
_INTRINSICS = {
    "54138969": dict(
        center=(512.54150390625, 515.4514770507812),
        focal_length=(1145.0494384765625, 1143.7811279296875),
        radial_distortion=(-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043),
        tangential_distortion=(-0.0009756988729350269, -0.00142447161488235),
        res_w=1000, res_h=1002, azimuth=70),
    "55011271": dict(
        center=(508.8486328125, 508.0649108886719),
        focal_length=(1149.6756591796875, 1147.5916748046875),
        radial_distortion=(-0.1942136287689209, 0.2404085397720337, 0.006819975562393665),
        tangential_distortion=(-0.0016190266469493508, -0.0027408944442868233),
        res_w=1000, res_h=1000, azimuth=-70),
    "58860488": dict(
        center=(519.8158569335938, 501.40264892578125),
        focal_length=(1149.1407470703125, 1148.7989501953125),
        radial_distortion=(-0.2083381861448288, 0.25548800826072693, -0.0024604974314570427),
        tangential_distortion=(0.0014843869721516967, -0.0007599993259645998),
        res_w=1000, res_h=1000, azimuth=110),
    "60457274": dict(
        center=(514.9682006835938, 501.88201904296875),
        focal_length=(1145.5113525390625, 1144.77392578125),
        radial_distortion=(-0.198384091258049, 0.21832367777824402, -0.008947807364165783),
        tangential_distortion=(-0.0005872055771760643, -0.0018133620033040643),
        res_w=1000, res_h=1002, azimuth=-110),
}
# Per subject, per camera (same order): orientation quaternion (w, x, y, z) and translation in mm.
_EXTRINSICS_MM = {
    "S1": (
        ((0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
         (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
        ((0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
         (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
        ((0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
         (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
        ((0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
         (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
    ),
    "S5": (
        ((0.1467377245426178, -0.162370964884758, -0.7551892995834351, 0.6178938746452332),
         (2097.3916015625, 4880.94482421875, 1605.732421875)),
        ((0.6159758567810059, -0.7626792192459106, -0.15728192031383514, 0.1189815029501915),
         (2031.7008056640625, -5167.93310546875, 1612.923095703125)),
        ((0.14291371405124664, -0.12907841801643372, 0.7678384780883789, -0.6110143065452576),
         (-1620.5948486328125, 5171.65869140625, 1496.43701171875)),
        ((0.5920479893684387, -0.7814217805862427, 0.1274748593568802, -0.15036417543888092),
         (-1637.1737060546875, -3867.3173828125, 1547.033203125)),
    ),
    "S6": (
        ((0.1337897777557373, -0.15692396461963654, -0.7571090459823608, 0.6198879480361938),
         (1935.4517822265625, 4950.24560546875, 1618.0838623046875)),
        ((0.6147197484970093, -0.7628812789916992, -0.16174767911434174, 0.11819244921207428),
         (1969.803955078125, -5128.73876953125, 1632.77880859375)),
        ((0.1529948115348816, -0.13529130816459656, 0.7646096348762512, -0.6112781167030334),
         (-1769.596435546875, 5185.361328125, 1476.993408203125)),
        ((0.5916101336479187, -0.7804774045944214, 0.12832270562648773, -0.1561593860387802),
         (-1721.668701171875, -3884.13134765625, 1540.4879150390625)),
    ),
    "S7": (
        ((0.1435241848230362, -0.1631336808204651, -0.7548328638076782, 0.6188824772834778),
         (1974.512939453125, 4926.3544921875, 1597.8326416015625)),
        ((0.6141672730445862, -0.7638262510299683, -0.1596645563840866, 0.1177929937839508),
         (1937.0584716796875, -5119.7900390625, 1631.5665283203125)),
        ((0.14550060033798218, -0.12874816358089447, 0.7660516500473022, -0.6127139329910278),
         (-1741.8111572265625, 5208.24951171875, 1464.8245849609375)),
        ((0.5912848114967346, -0.7821764349937439, 0.12445473670959473, -0.15196487307548523),
         (-1734.7105712890625, -3832.42138671875, 1548.5830078125)),
    ),
    "S8": (
        ((0.14110587537288666, -0.15589867532253265, -0.7561917304992676, 0.619644045829773),
         (2150.65185546875, 4896.1611328125, 1611.9046630859375)),
        ((0.6169601678848267, -0.7647668123245239, -0.14846350252628326, 0.11158157885074615),
         (2219.965576171875, -5148.453125, 1613.0440673828125)),
        ((0.1471444070339203, -0.13377119600772858, 0.7670128345489502, -0.6100369691848755),
         (-1571.2215576171875, 5137.0185546875, 1498.1761474609375)),
        ((0.5927824378013611, -0.7825870513916016, 0.12147816270589828, -0.14631995558738708),
         (-1476.913330078125, -3896.7412109375, 1547.97216796875)),
    ),
    "S9": (
        ((0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243),
         (2044.45849609375, 4935.1171875, 1481.2275390625)),
        ((0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801),
         (1990.959716796875, -5123.810546875, 1568.8048095703125)),
        ((0.13357827067375183, -0.1367100477218628, 0.7689454555511475, -0.6100738644599915),
         (-1670.9921875, 5211.98583984375, 1528.387939453125)),
        ((0.5879399180412292, -0.7823407053947449, 0.1427614390850067, -0.14794869720935822),
         (-1696.04345703125, -3827.099853515625, 1591.4127197265625)),
    ),
    "S11": (
        ((0.15232472121715546, -0.15442320704460144, -0.7547563314437866, 0.6191070079803467),
         (2098.440185546875, 4926.5546875, 1500.278564453125)),
        ((0.6189449429512024, -0.7600917220115662, -0.15300633013248444, 0.1255258321762085),
         (2083.182373046875, -4912.1728515625, 1561.07861328125)),
        ((0.14943228662014008, -0.15650227665901184, 0.7681233882904053, -0.6026304364204407),
         (-1609.8153076171875, 5177.3359375, 1537.896728515625)),
        ((0.5894251465797424, -0.7818877100944519, 0.13991211354732513, -0.14715361595153809),
         (-1590.738037109375, -3854.1689453125, 1578.017578125)),
    ),
}

H36M_CAMERA_IDS = tuple(_INTRINSICS)
# Subjects whose extrinsics were published; S2, S3 and S4 have none in the VideoPose3D table.
H36M_CALIBRATED_SUBJECTS = tuple(_EXTRINSICS_MM)

# DiffPose's hard-coded per-camera `camerad_para`: (fx, fy, cx, cy) in normalised screen units,
# rounded to 4 decimals. DiffPose passes it through its data pipeline but never uses it.
_DIFFPOSE_CAMERA_PARA = {
    "54138969": (2.2901, 2.2876, 0.0251, 0.0289),
    "55011271": (2.2994, 2.2952, 0.0177, 0.0161),
    "58860488": (2.2983, 2.2976, 0.0396, 0.0028),
    "60457274": (2.2910, 2.2895, 0.0299, 0.0018),
}


def _metres(mm: float) -> float:
  # VideoPose3D divides the float32 millimetres by 1000 in float32; keep exactly that value.
  return float(np.float32(mm) / np.float32(1000))


def h36m_cameras(subject: str) -> tuple[Camera, Camera, Camera, Camera]:
  """The four cameras of one Human3.6M subject, in the order of the data files' camera lists.

  Args:
    subject: 'S1', 'S5', 'S6', 'S7', 'S8', 'S9' or 'S11'.

  Returns:
    Four `Camera`s, ids in `H36M_CAMERA_IDS` order, translations in metres.

  Raises:
    ValueError: the subject is unknown or has no published extrinsics (S2, S3, S4).
  """
  if subject not in _EXTRINSICS_MM:
    why = ("has no published extrinsic calibration" if subject in ("S2", "S3", "S4")
           else "is not a Human3.6M subject")
    raise ValueError(f"h36m_cameras: subject {subject!r} {why}; known subjects: "
                     f"{', '.join(H36M_CALIBRATED_SUBJECTS)}")
  cameras = []
  for camera_id, (orientation, translation_mm) in zip(H36M_CAMERA_IDS, _EXTRINSICS_MM[subject]):
    intrinsics = _INTRINSICS[camera_id]
    cameras.append(Camera(
        id=camera_id, res_w=intrinsics["res_w"], res_h=intrinsics["res_h"],
        center=intrinsics["center"], focal_length=intrinsics["focal_length"],
        radial_distortion=intrinsics["radial_distortion"],
        tangential_distortion=intrinsics["tangential_distortion"],
        orientation=orientation, translation=tuple(_metres(t) for t in translation_mm),
        azimuth=float(intrinsics["azimuth"])))
  return tuple(cameras)


def _array_module(*arrays):
  """jax.numpy if any argument is a jax array (or tracer), else numpy."""
  if any(type(a).__module__.startswith(("jax", "jaxlib")) for a in arrays):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  # the data side never needs jax
    return jnp
  return np


def _float_dtype(x):
  dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.dtype(np.float64)
  return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _cross(xp, a, b):
  # Written out (not np.cross) so numpy and jax evaluate the same float32 expression.
  return xp.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                   a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                   a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def qrot(q, v):
  """Rotates vectors by unit quaternions.

  Args:
    q: `[..., 4]` quaternions `(w, x, y, z)`, assumed normalised.
    v: `[..., 3]` vectors; the leading axes broadcast against `q`'s.

  Returns:
    `[..., 3]` rotated vectors, `v + 2 (w (q_xyz x v) + q_xyz x (q_xyz x v))`.
  """
  if q.shape[-1] != 4 or v.shape[-1] != 3:
    raise ValueError(f"qrot: expected q [..., 4] and v [..., 3], got {q.shape} and {v.shape}")
  xp = _array_module(q, v)
  q_xyz = q[..., 1:]
  uv = _cross(xp, q_xyz, v)
  uuv = _cross(xp, q_xyz, uv)
  return v + 2 * (q[..., :1] * uv + uuv)


def qinverse(q):
  """The inverse `(w, -x, -y, -z)` of unit quaternions `[..., 4]`."""
  if q.shape[-1] != 4:
    raise ValueError(f"qinverse: expected quaternions [..., 4], got shape {q.shape}")
  xp = _array_module(q)
  return xp.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def _camera_arrays(x, cam: Camera):
  xp = _array_module(x)
  dtype = _float_dtype(x)
  if x.shape[-1] != 3:
    raise ValueError(f"camera {cam.id}: expected points [..., 3], got shape {x.shape}")
  return (xp, xp.asarray(x, dtype=dtype), xp.asarray(cam.orientation, dtype=dtype),
          xp.asarray(cam.translation, dtype=dtype))


def world_to_camera(x_world, cam: Camera):
  """World points to the camera frame, `qrot(q^-1, x - t)` as VideoPose3D does.

  Args:
    x_world: `[..., 3]` world coordinates in metres (float32 stays float32).
    cam: the camera.

  Returns:
    `[..., 3]` camera-frame coordinates in metres (not root-relative).
  """
  _, x, q, t = _camera_arrays(x_world, cam)
  return qrot(qinverse(q), x - t)


def camera_to_world(x_cam, cam: Camera):
  """Camera-frame points to world coordinates, `qrot(q, x) + t`; inverse of `world_to_camera`."""
  _, x, q, t = _camera_arrays(x_cam, cam)
  return qrot(q, x) + t


def project_to_pixels(x_cam, cam: Camera):
  """Projects camera-frame points to pixels with the Human3.6M distortion model.

  This is VideoPose3D's `project_to_2d` expressed in pixels instead of normalised units (the two
  differ only by the affine map of `normalize_screen_coordinates`).

  Args:
    x_cam: `[..., 3]` camera-frame points (z > 0 in front of the camera).
    cam: the camera.

  Returns:
    `[..., 2]` pixel coordinates `(x, y)`.
  """
  xp, x, _, _ = _camera_arrays(x_cam, cam)
  dtype = x.dtype
  # Like VideoPose3D, the normalised image-plane coordinates are clipped to [-1, 1] so that the
  # distortion polynomial cannot fold points far outside the field of view back into the image.
  plane = xp.clip(x[..., :2] / x[..., 2:], -1, 1)
  r2 = xp.sum(plane ** 2, axis=-1, keepdims=True)
  k = xp.asarray(cam.radial_distortion, dtype=dtype)
  p = xp.asarray(cam.tangential_distortion, dtype=dtype)
  radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
  tangential = xp.sum(p * plane, axis=-1, keepdims=True)
  distorted = plane * (radial + tangential) + p * r2
  return (xp.asarray(cam.focal_length, dtype=dtype) * distorted
          + xp.asarray(cam.center, dtype=dtype))


def normalize_screen_coordinates(x, w: int, h: int) -> np.ndarray:
  """Pixels to normalised screen units: `u = x / w * 2 - 1`, `v = y / w * 2 - h / w`.

  `[0, w]` maps to `[-1, 1]` and the aspect ratio is kept. The arithmetic is VideoPose3D's to the
  bit: `x / w * 2` in the input's float dtype, the offset subtracted in float64, and the result
  cast back to the input's float dtype (integers count as float64).

  Args:
    x: `[..., 2]` pixel coordinates.
    w: image width in pixels.
    h: image height in pixels.

  Returns:
    `[..., 2]` normalised coordinates.
  """
  x = np.asarray(x)
  if x.shape[-1] != 2:
    raise ValueError(f"normalize_screen_coordinates: expected [..., 2], got shape {x.shape}")
  dtype = _float_dtype(x)
  scaled = x.astype(dtype, copy=False) / dtype.type(w) * dtype.type(2)
  # Upstream quirk (spec §A.4): the offset is a float64 list, so the subtraction runs in float64.
  return (scaled.astype(np.float64) - np.array([1.0, h / w])).astype(dtype)


def image_coordinates(u, w: int, h: int) -> np.ndarray:
  """Normalised screen units back to pixels; the inverse of `normalize_screen_coordinates`.

  Args:
    u: `[..., 2]` normalised coordinates.
    w: image width in pixels.
    h: image height in pixels.

  Returns:
    `[..., 2]` pixel coordinates (computed in float64, returned in the input's float dtype).
  """
  u = np.asarray(u)
  if u.shape[-1] != 2:
    raise ValueError(f"image_coordinates: expected [..., 2], got shape {u.shape}")
  dtype = _float_dtype(u)
  return ((u.astype(np.float64) + np.array([1.0, h / w])) * w / 2).astype(dtype)


def normalized_intrinsics(cam: Camera) -> np.ndarray:
  """DiffPose's per-camera `camerad_para`: `[fx, fy, cx, cy]` in normalised screen units.

  These are DiffPose's own hard-coded values, which agree with `focal_length / w * 2` and the
  normalised `center` to 4 decimals.

  Args:
    cam: one of the four Human3.6M cameras.

  Returns:
    float32 `[4]`.
  """
  if cam.id not in _DIFFPOSE_CAMERA_PARA:
    raise ValueError(f"normalized_intrinsics: unknown camera id {cam.id!r}; expected one of "
                     f"{H36M_CAMERA_IDS}")
  return np.array(_DIFFPOSE_CAMERA_PARA[cam.id], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Intrinsic-vector projections (VideoPose3D `common/camera.py`), used by the JPMA reprojection.


def _intrinsic_for(points, intrinsic, xp, name: str):
  """Checks shapes and gives `intrinsic` singleton axes so it broadcasts against `points`."""
  if points.shape[-1] != 3:
    raise ValueError(f"{name}: expected points [..., 3], got shape {points.shape}")
  if intrinsic.shape[-1] != 9 or intrinsic.ndim > points.ndim - 1:
    raise ValueError(f"{name}: expected intrinsic [9] or [..., 9] whose leading axes are a prefix "
                     f"of the points' leading axes, got intrinsic {intrinsic.shape} for points "
                     f"{points.shape}")
  lead = intrinsic.shape[:-1]
  if points.shape[:len(lead)] != lead:
    raise ValueError(f"{name}: intrinsic leading axes {lead} do not match points "
                     f"{points.shape[:len(lead)]}")
  # Like upstream's unsqueeze(1) loop: the camera axes are a prefix, the rest broadcast.
  pad = (1,) * (points.ndim - 1 - len(lead))
  return xp.reshape(intrinsic, lead + pad + (9,))


def _image_plane(points, xp):
  # VideoPose3D clamps x/z and y/z to [-1, 1] so that points far off-axis cannot fold back.
  return xp.clip(points[..., :2] / points[..., 2:], -1, 1)


def project_to_2d(points, intrinsic):
  """VideoPose3D's `project_to_2d`: perspective projection with its distortion approximation.

  With XX = clamp(X_xy / Z, -1, 1), r2 = |XX|^2, radial = 1 + (k1 r2 + k2 r2^2 + k3 r2^3),
  tan = p·XX: uv = f * (XX * (radial + tan) + p * r2) + c. This is not OpenCV's model.

  Args:
    points: [..., J, 3] camera-frame points (z > 0); numpy or jax.
    intrinsic: [9] or [..., 9] `[fx, fy, cx, cy, k1, k2, k3, p1, p2]`; the leading axes of a
      batched intrinsic must be a prefix of the points' leading axes (one camera per item).

  Returns:
    [..., J, 2] projected coordinates, in the units of f and c (normalised screen units for the
    Human3.6M intrinsic vector, pixels for `cam_mm_to_pix`).
  """
  xp = _array_module(points, intrinsic)
  points = xp.asarray(points, dtype=_float_dtype(points))
  cam = _intrinsic_for(points, xp.asarray(intrinsic), xp, "project_to_2d").astype(points.dtype)
  f, c, k, p = cam[..., :2], cam[..., 2:4], cam[..., 4:7], cam[..., 7:]
  xx = _image_plane(points, xp)
  r2 = xp.sum(xx ** 2, axis=-1, keepdims=True)
  powers = xp.concatenate([r2, r2 ** 2, r2 ** 3], axis=-1)
  radial = 1 + xp.sum(k * powers, axis=-1, keepdims=True)
  tangential = xp.sum(p * xx, axis=-1, keepdims=True)
  return f * (xx * (radial + tangential) + p * r2) + c


def project_to_2d_linear(points, intrinsic):
  """VideoPose3D's `project_to_2d_linear`: uv = f * clamp(X_xy / Z, -1, 1) + c, no distortion.

  Args:
    points: [..., J, 3] camera-frame points; numpy or jax.
    intrinsic: [9] or [..., 9] as for `project_to_2d`; only the first four entries are used.

  Returns:
    [..., J, 2] projected coordinates.
  """
  xp = _array_module(points, intrinsic)
  points = xp.asarray(points, dtype=_float_dtype(points))
  cam = _intrinsic_for(points, xp.asarray(intrinsic), xp,
                       "project_to_2d_linear").astype(points.dtype)
  return cam[..., :2] * _image_plane(points, xp) + cam[..., 2:4]


def cam_mm_to_pix(focal_mm, centre_offset_mm, sensor_size_mm, image_size_px) -> np.ndarray:
  """A camera given in millimetres as a pixel intrinsic vector (upstream `main_3dhp.cam_mm_to_pix`).

  fx = f * w / sensor_w, fy = f * h / sensor_h, cx = offset_x * w / sensor_w + w / 2 and
  cy = offset_y * h / sensor_h + h / 2; the distortion entries are 0.

  Args:
    focal_mm: focal length in mm (a scalar, or (fx, fy)).
    centre_offset_mm: (x, y) principal-point offset from the sensor centre in mm.
    sensor_size_mm: (width, height) of the sensor in mm.
    image_size_px: (width, height) of the image in pixels.

  Returns:
    float32 [9] `[fx, fy, cx, cy, 0, 0, 0, 0, 0]` in pixels.
  """
  focal = np.broadcast_to(np.asarray(focal_mm, np.float64), (2,))
  offset = np.asarray(centre_offset_mm, np.float64)
  sensor = np.asarray(sensor_size_mm, np.float64)
  size = np.asarray(image_size_px, np.float64)
  for name, value in (("centre_offset_mm", offset), ("sensor_size_mm", sensor),
                      ("image_size_px", size)):
    if value.shape != (2,):
      raise ValueError(f"cam_mm_to_pix: {name} must be a pair (x, y), got shape {value.shape}")
  if np.any(sensor <= 0) or np.any(size <= 0):
    raise ValueError(f"cam_mm_to_pix: sensor_size_mm {sensor.tolist()} and image_size_px "
                     f"{size.tolist()} must be positive")
  # Upstream holds the mm values in a float32 tensor before converting them.
  focal = focal.astype(np.float32).astype(np.float64)
  offset = offset.astype(np.float32).astype(np.float64)
  px_per_mm = size / sensor
  intrinsic = np.zeros(9, np.float64)
  intrinsic[:2] = focal * px_per_mm
  intrinsic[2:4] = offset * px_per_mm + size / 2
  return intrinsic.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Mpi3dhpTestCamera:
  """The intrinsics upstream main_3dhp.py hard-codes for a group of MPI-INF-3DHP test sequences.

  Attributes:
    sequences: the test sequences ('TS1'...) that use this camera.
    focal_mm: focal length in mm.
    centre_offset_mm: principal-point offset from the sensor centre, mm.
    sensor_size_mm: (width, height) of the sensor, mm.
    image_size: (width, height) of the images, pixels; also the 2D normalisation size.
    projection: 'linear' (`project_to_2d_linear`) or 'distorted' (`project_to_2d`; all
      distortion coefficients are 0 here, so both give the same numbers).
  """
  sequences: tuple[str, ...]
  focal_mm: float
  centre_offset_mm: tuple[float, float]
  sensor_size_mm: tuple[float, float]
  image_size: tuple[int, int]
  projection: str

  @property
  def intrinsic(self) -> np.ndarray:
    """float32 [9] pixel intrinsic vector (`cam_mm_to_pix`)."""
    return cam_mm_to_pix(self.focal_mm, self.centre_offset_mm, self.sensor_size_mm,
                         self.image_size)

  def project(self, points):
    """[..., J, 3] camera-frame points (mm) to [..., J, 2] pixels with this camera's projection."""
    if self.projection == "linear":
      return project_to_2d_linear(points, self.intrinsic)
    return project_to_2d(points, self.intrinsic)


MPI3DHP_CAMERA_TS1_4 = Mpi3dhpTestCamera(
    sequences=("TS1", "TS2", "TS3", "TS4"), focal_mm=7.32506,
    centre_offset_mm=(-0.0322884, 0.0929296), sensor_size_mm=(10.0, 10.0),
    image_size=(2048, 2048), projection="linear")
MPI3DHP_CAMERA_TS5_6 = Mpi3dhpTestCamera(
    sequences=("TS5", "TS6"), focal_mm=8.770747185,
    centre_offset_mm=(-0.104908645, 0.104899704), sensor_size_mm=(10.0, 5.625),
    image_size=(1920, 1080), projection="distorted")
MPI3DHP_TEST_SEQUENCES = MPI3DHP_CAMERA_TS1_4.sequences + MPI3DHP_CAMERA_TS5_6.sequences


def mpi3dhp_test_camera(sequence: str) -> Mpi3dhpTestCamera:
  """The camera upstream uses for one MPI-INF-3DHP test sequence ('TS1' ... 'TS6')."""
  for camera in (MPI3DHP_CAMERA_TS1_4, MPI3DHP_CAMERA_TS5_6):
    if sequence in camera.sequences:
      return camera
  raise ValueError(f"mpi3dhp_test_camera: unknown test sequence {sequence!r}; expected one of "
                   f"{MPI3DHP_TEST_SEQUENCES}")
