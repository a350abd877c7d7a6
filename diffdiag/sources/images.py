"""Read ``--images`` inputs: one image, or a reference/output pair (docs/CONTRACT.md §1–§2).

Policy
------
- Pixels are decoded by :func:`diffdiag.sources.decode.decode_image` (its
  module docstring has the policy: bit depths, alpha, float images, the pixel
  limit, non-regular files); its notes land in ``ImageInput.notes``.
- A pair whose sizes differ: when the aspect ratios agree within 2 % the
  output is resized (anti-aliased) to the reference's size and the note
  ``"output resized from WxH to WxH"`` is carried into every finding's
  evidence; otherwise :class:`~diffdiag.errors.InputError` names both files.
  A grey image paired with an RGB one is expanded to RGB.
- Unreadable, truncated, or larger than :data:`MAX_PIXELS` (a decompression
  bomb) → :class:`~diffdiag.errors.InputError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..model import ImageInput
from .decode import MAX_PIXELS, decode_image  # noqa: F401 - MAX_PIXELS: re-exported

#: aspect-ratio tolerance for resizing a pair's output to its reference
ASPECT_TOLERANCE = 0.02


def read_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Decode one image file (through :func:`diffdiag.sources.decode.decode_image`).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    (array, notes)
        array: float32, (H, W) or (H, W, 3), in [0, 1] (float images as stored);
        notes: what the conversion did (alpha, bit depth).

    Raises
    ------
    InputError
        Not a regular file, unreadable, truncated, or over :data:`MAX_PIXELS`.
    """
    notes: list[str] = []
    arr = decode_image(path, notes=notes)
    return arr, notes


def _match(ref: np.ndarray, out: np.ndarray, ref_path: Path, out_path: Path, notes: list[str]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Bring a pair to one shape (see module policy)."""
    if ref.ndim != out.ndim:
        if ref.ndim == 2:
            ref = np.repeat(ref[..., None], 3, axis=2)
            notes.append("grey reference expanded to RGB")
        else:
            out = np.repeat(out[..., None], 3, axis=2)
            notes.append("grey output expanded to RGB")
    (rh, rw), (oh, ow) = ref.shape[:2], out.shape[:2]
    if (rh, rw) != (oh, ow):
        if abs((ow / oh) / (rw / rh) - 1.0) > ASPECT_TOLERANCE:
            raise InputError(f"the pair's sizes differ and so do their aspect ratios: reference {ref_path} is "
                             f"{rw}×{rh}, output {out_path} is {ow}×{oh} (resize or crop them to one size)")
        from skimage.transform import resize

        out = resize(out, ref.shape, order=1, anti_aliasing=(oh > rh), preserve_range=True).astype(np.float32)
        notes.append(f"output resized from {ow}x{oh} to {rw}x{rh} to match the reference")
    return ref, out


def load_image_input(path_in: str | Path, path_out: str | Path | None = None) -> ImageInput:
    """Read ``--images IN [OUT]``.

    Parameters
    ----------
    path_in : str or Path
        The lone image, or the reference of a pair.
    path_out : str or Path, optional
        The output (generated) image of the pair.

    Returns
    -------
    ImageInput
        ``image`` = the lone image or the output; ``reference`` = IN for a pair.

    Raises
    ------
    InputError
        Unreadable / truncated / oversized file, or a pair that cannot be matched.
    """
    a, notes = read_image(path_in)
    if path_out is None:
        return ImageInput(a, str(path_in), notes=notes)
    b, notes_out = read_image(path_out)
    notes = [f"reference: {n}" for n in notes] + [f"output: {n}" for n in notes_out]
    ref, out = _match(a, b, Path(path_in), Path(path_out), notes)
    return ImageInput(out, str(path_out), reference=ref, reference_path=str(path_in), notes=notes)
