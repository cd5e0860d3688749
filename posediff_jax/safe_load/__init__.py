"""Reading pickled files without running code from them, and without trusting what they declare.

PyTorch checkpoints (`.pth` / `.bin`, the zip format of torch >= 1.6) and the VideoPose3D-style
`.npz` files both hold pickles. A pickle can name any Python callable and have the loader call it,
so neither is ever read with `torch.load` or `np.load(allow_pickle=True)` here. Instead a
restricted unpickler resolves only an allowlist of names:

- containers: dict, OrderedDict, list, tuple, set, str, bytes, numbers, None;
- torch tensors, rebuilt as numpy arrays from the raw storages in the zip (torch is never imported);
- numpy arrays, dtypes and scalars, and numpy `RandomState` objects (D3DP saves one in its
  checkpoints).

Any other global in the stream raises `UnsafePickleError` naming the file and the global, before
anything from the file is called.

TorchScript archives (`torch.jit.save`, e.g. OpenAI's CLIP `ViT-B-32.pt`) are the same zip layout
with module objects in `data.pkl`: there a `__torch__.*` class name becomes an inert
`TorchScriptObject` that only holds the attributes the pickle sets, and
`load_torchscript_state_dict` flattens the module tree into `{dotted.name: array}` of the
parameters and buffers that the archive's `code/` declares (read as text; nothing in `code/` is
compiled or run).

What a file declares is checked against what it holds before anything is allocated or read: a
tensor's offset, sizes and strides must stay inside its storage (numpy's `as_strided` checks
nothing), a storage's byte length must match its element count, an `.npy` header's shape and dtype
must match its data length, and numpy arrays, dtypes and RNG states inside pickles are rebuilt
only from states numpy itself would write. Every way a damaged or hostile file can fail comes out
as `ReadError` (a `ValueError`), one line naming the file and the tensor or member.

The package's face is the names below. Inside: `reading` (the errors, limits and byte reads every
reader shares), `unpickler` (the restricted unpickler), `torch_files` (torch zip checkpoints and
TorchScript archives), `numpy_files` (`.npy` and `.npz`).
"""

# The public API, whatever module of the package holds each name.
from posediff_jax.safe_load.numpy_files import load_pickled_npy
from posediff_jax.safe_load.numpy_files import load_pickled_npz
from posediff_jax.safe_load.reading import ReadError
from posediff_jax.safe_load.reading import UnsafePickleError
from posediff_jax.safe_load.torch_files import is_torchscript_archive
from posediff_jax.safe_load.torch_files import load_torch_checkpoint
from posediff_jax.safe_load.torch_files import load_torchscript_state_dict
from posediff_jax.safe_load.unpickler import TorchScriptObject
