"""Read ``--images`` inputs: one image, or a reference/output pair (docs/CONTRACT.md §1–§2).

Policy
------
- Pixels become float32 in [0, 1]: 8-bit / 255, 16-bit / 65535, 32-bit
  float images ("F" mode TIFF) are kept as they are (non-finite values are
  data: the ``image_degenerate`` check reports them).
- Grey stays (H, W); RGB is (H, W, 3); palette/CMYK/other modes are converted
  to RGB. RGBA (and LA): a fully opaque alpha is dropped; otherwise the image
  is composited over white. Either way ``ImageInput.notes`` says so.
- A pair whose sizes differ: when the aspect ratios agree within 2 % the
  output is resized (anti-aliased) to the reference's size and the note
  ``"output resized from WxH to WxH"`` is carried into every finding's
  evidence; otherwise :class:`~diffdiag.errors.InputError` names both files.
  A grey image paired with an RGB one is expanded to RGB.
- Unreadable, truncated, or larger than :data:`MAX_PIXELS` (a decompression
  bomb) → :class:`~diffdiag.errors.InputError` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..model import ImageInput

#: largest image accepted (pixels); larger ones are refused as possible decompression bombs
MAX_PIXELS = 64 * 1024 * 1024
#: aspect-ratio tolerance for resizing a pair's output to its reference
ASPECT_TOLERANCE = 0.02


def read_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Decode one image file.

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
        Unreadable, truncated, or over :data:`MAX_PIXELS`.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    notes: list[str] = []
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im = Image.open(p)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise InputError(f"image is larger than the {MAX_PIXELS // 2 ** 20} megapixel limit "
                                 f"(refused as a possible decompression bomb)", p) from None
            except UnidentifiedImageError:
                raise InputError("not a readable image (unknown or corrupt format)", p) from None
            except OSError as exc:
                raise InputError(f"cannot open image ({exc})", p) from None
            with im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise InputError(f"image is {w}×{h} = {w * h / 1e6:.0f} megapixels, over the "
                                     f"{MAX_PIXELS // 2 ** 20} megapixel limit (refused as a possible "
                                     f"decompression bomb)", p)
                try:
                    im.load()
                except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                    raise InputError("image is over the pixel limit (possible decompression bomb)", p) from None
                except (OSError, SyntaxError, ValueError) as exc:
                    msg = str(exc) or type(exc).__name__
                    raise InputError(f"image data is truncated or corrupt ({msg})", p) from None
                arr = _to_array(im, notes)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if arr.ndim == 2 and min(arr.shape) < 1 or arr.size == 0:
        raise InputError("image is empty", p)
    return arr, notes


def _to_array(im, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        notes.append("16-bit grey")
        return (np.asarray(im, dtype=np.float32) / 65535.0).astype(np.float32)
    if mode == "I":
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        notes.append("32-bit integer grey, scaled by 1/65535" if top > 255 else "integer grey")
        return np.clip(a / top, 0, 1).astype(np.float32)
    if mode == "F":
        notes.append("32-bit float, values kept as stored")
        return np.asarray(im, dtype=np.float32).copy()
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA") if mode != "LA" else im
        a = np.asarray(im, dtype=np.float32) / 255.0
        color, alpha = a[..., :-1], a[..., -1:]
        if float(alpha.min()) >= 1.0:
            notes.append("alpha channel dropped (fully opaque)")
            out = color
        else:
            notes.append("composited over white (alpha not fully opaque)")
            out = color * alpha + (1.0 - alpha)
        return (out[..., 0] if out.shape[-1] == 1 else out).astype(np.float32)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


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
