"""The one image decoder: every source (``--images``, sample folders, datasets, masks,
W&B and MLflow media) reads pixels through :func:`decode_image`.

Policy
------
- Only regular files are read: a FIFO, device, socket or folder is refused after
  ``os.stat`` and never opened for reading (a named pipe would block forever).
- One pixel limit (:data:`MAX_PIXELS`, or ``max_pixels``): larger images are
  refused from their header, before any pixel is decoded (decompression bombs).
- Pixels become float32: 8-bit / 255, 16-bit / 65535 — 16-bit grey *and* 16-bit
  colour (RGB/RGBA PNG and TIFF, which PIL alone reads at 8 bits) keep every
  bit; 32-bit integer grey / 65535 when it holds values above 255 (else / 255);
  float images ("F" mode, float TIFF) keep their values as stored (NaN and
  values outside [0, 1] are data: the ``image_degenerate`` check reports them).
- Grey stays (H, W); colour is (H, W, 3); palette/CMYK/YCbCr/... are converted
  to RGB. An alpha channel that is fully opaque is dropped; otherwise the image
  is composited over white (``alpha="drop"``: the colour is kept as stored, as
  a training pipeline's RGB conversion does). ``notes`` says what was done.
- ``raw=True`` returns the stored levels instead (palette indices, uint8/uint16
  channels, alpha kept): what masks need.
- Anything unreadable (unknown format, truncated, corrupt, unsupported layout)
  raises :class:`~diffdiag.errors.InputError` naming the file; no library
  warning escapes.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np

from ..errors import InputError

#: largest image accepted (pixels); larger ones are refused as possible decompression bombs
MAX_PIXELS = 64_000_000

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: 16-bit colour raw modes that PIL unpacks to 8 bits (their other byte is read with the swapped mode)
_DEEP_RGB = re.compile(r"^(RGB|RGBA|RGBX);16([BLN])$")
#: codecs for which re-decoding with another raw mode is known to be exact (PNG, raw and libtiff TIFF)
_DEEP_CODECS = ("zip", "raw", "libtiff")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode_image(source: ImageSource, *, max_pixels: int | None = None, name: str | None = None,
                 raw: bool = False, alpha: str = "white", notes: list[str] | None = None) -> np.ndarray:
    """Decode one image file (or its bytes) into an array.

    Parameters
    ----------
    source : str, PathLike or bytes
        A path to a regular file, or the encoded bytes.
    max_pixels : int, optional
        Refuse images with more pixels than this (default :data:`MAX_PIXELS`).
    name : str, optional
        How messages name the image (default: the path, or ``"<image bytes>"``).
    raw : bool
        Return the stored levels (see Returns) instead of float pixels.
    alpha : {"white", "drop"}
        A not fully opaque alpha channel: composite over white (default, how an
        image viewer shows a generated image), or ignore it and keep the colour as
        stored (what a training pipeline's ``convert("RGB")`` feeds the model).
    notes : list of str, optional
        Receives one line per conversion done (bit depth, alpha policy).

    Returns
    -------
    ndarray
        ``raw=False``: float32, shape (H, W) or (H, W, 3), in [0, 1] (float images
        as stored). ``raw=True``: the stored levels, shape (H, W) or (H, W, C) —
        palette indices for palette images, uint8/uint16 channels (alpha kept),
        bool for 1-bit, float for float images.

    Raises
    ------
    InputError
        Not a regular file, unreadable, truncated or corrupt, over the pixel
        limit, or a layout diffdiag cannot use; the message names the file.
    """
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', not {alpha!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<image bytes>"
        fh: IO[bytes] = io.BytesIO(bytes(source))
    else:
        label = name or str(source)
        fh = _open_regular(Path(source), label)
    out = [] if notes is None else notes
    with fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning, palette/EXIF chatter: no stderr noise
        try:
            return _decode(fh, label, limit, raw, alpha, out)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a hostile file makes a decoder raise
            raise InputError(f"image data is truncated or corrupt ({_short(exc)})", label) from None


def _open_regular(path: Path, label: str) -> IO[bytes]:
    """Open ``path`` for reading only when it is a regular file (checked before and after opening)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("no such file", label) from None
    except PermissionError:
        raise InputError("permission denied", label) from None
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror or type(exc).__name__})", label) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"is {_kind(st.st_mode)}, not a regular file (refused without reading it)", label)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a file swapped for a FIFO since the stat cannot hang us
    except PermissionError:
        raise InputError("permission denied", label) from None
    except OSError as exc:
        raise InputError(f"cannot open it ({exc.strerror or type(exc).__name__})", label) from None
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode):
        os.close(fd)
        raise InputError(f"is {_kind(st2.st_mode)}, not a regular file (refused without reading it)", label)
    return os.fdopen(fd, "rb")


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a plain file"


def _short(exc: BaseException, n: int = 160) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= n else msg[: n - 1] + "…"


def _megapixels(n: float) -> str:
    return f"{n / 1e6:.0f}" if n >= 1e7 else f"{n / 1e6:.3g}"


def _bomb(label: str, size: tuple[int, int] | BaseException, limit: int) -> InputError:
    if isinstance(size, BaseException):  # PIL refused it at open; its message has the pixel count
        m = re.search(r"\((\d+) pixels\)", str(size))
        what = f"{_megapixels(int(m.group(1)))} megapixels" if m else "larger"
    else:
        what = f"{size[0]}×{size[1]} = {_megapixels(size[0] * size[1])} megapixels"
    return InputError(f"image is {what}, over the {_megapixels(limit)} megapixel limit "
                      f"(refused as a possible decompression bomb)", label)


def _decode(fh: IO[bytes], label: str, limit: int, raw: bool, alpha: str, notes: list[str]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(fh)
    except Image.DecompressionBombError as exc:
        raise _bomb(label, exc, limit) from None
    except UnidentifiedImageError:
        fh.seek(0)
        if fh.read(4) in _TIFF_MAGIC:  # float RGB, 32-bit colour, ... TIFFs that PIL cannot represent
            return _decode_tiff(fh, label, limit, raw, alpha, notes)
        raise InputError("not a readable image (unknown or corrupt format)", label) from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise _bomb(label, (w, h), limit)
        if w < 1 or h < 1:
            raise InputError("image is empty", label)
        tile = list(getattr(im, "tile", None) or [])
        try:
            im.load()
        except Image.DecompressionBombError:
            raise _bomb(label, (w, h), limit) from None
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"image data is truncated or corrupt ({_short(exc)})", label) from None
        deep = _deep_colour(im, tile, fh)
        if deep is None and _DEEP_RGB.match(_rawmode(tile[0]) if len(tile) == 1 else ""):
            notes.append("16-bit colour read at 8 bits")
        if raw:
            return deep if deep is not None else np.array(im)
        return _to_float(im, deep, alpha, notes)


def _rawmode(t) -> str:
    args = t[3] if len(t) > 3 else None
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _with_rawmode(t, rawmode: str):
    args = t[3]
    args = rawmode if isinstance(args, str) else (rawmode,) + tuple(args[1:])
    return t._replace(args=args) if hasattr(t, "_replace") else (t[0], t[1], t[2], args)


def _deep_colour(im, tile: list, fh: IO[bytes]) -> np.ndarray | None:
    """The full 16-bit channels of a 16-bit RGB/RGBA/LA image that PIL decoded at 8 bits, else None.

    PIL unpacks 16-bit colour by keeping each sample's high byte. Decoding the same
    data again with the opposite byte order's raw mode keeps the low bytes instead
    (the PNG/TIFF unfiltering works on whole pixels, so it is unchanged); the two
    decodes together are the stored values, bit for bit. 16-bit grey+alpha has a
    32-bit pixel, which the plain 8-bit ``RGBA`` raw mode keeps whole.
    """
    from PIL import Image

    if len(tile) != 1 or tile[0][0] not in _DEEP_CODECS:
        return None
    rawmode = _rawmode(tile[0])
    m = _DEEP_RGB.match(rawmode)
    la = rawmode == "LA;16B" and im.mode == "RGBA"
    if not (m or la):
        return None
    if m:
        order = m.group(2)
        if order == "N":
            order = "L" if sys.byteorder == "little" else "B"
        other = f"{m.group(1)};16{'B' if order == 'L' else 'L'}"
    else:
        other = "RGBA"
    try:
        fh.seek(0)
        with Image.open(fh) as im2:
            if im2.mode != im.mode or im2.size != im.size:
                return None
            im2.tile = [_with_rawmode(t, other) for t in im2.tile]
            im2.load()
            second = np.asarray(im2)
    except Exception:  # noqa: BLE001 - the 8-bit decode stands
        return None
    if la:
        b = second.astype(np.uint16)
        return np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], axis=-1)
    first = np.asarray(im)
    if first.shape != second.shape:
        return None
    return first.astype(np.uint16) << 8 | second.astype(np.uint16)


def _alpha(a: np.ndarray, policy: str, notes: list[str]) -> np.ndarray:
    """(H, W, C+1) float in [0, 1] with alpha last -> (H, W) or (H, W, C) (module policy)."""
    color, alpha = a[..., :-1], a[..., -1:]
    if float(alpha.min()) >= 1.0:
        notes.append("alpha channel dropped (fully opaque)")
        out = color
    elif policy == "drop":
        notes.append("alpha channel ignored (not fully opaque; colour kept as stored)")
        out = color
    else:
        notes.append("composited over white (alpha not fully opaque)")
        out = color * alpha + (1.0 - alpha)
    return (out[..., 0] if out.shape[-1] == 1 else out).astype(np.float32)


def _to_float(im, deep: np.ndarray | None, alpha: str, notes: list[str]) -> np.ndarray:
    if deep is not None:
        notes.append("16-bit colour")
        a = deep.astype(np.float32) / np.float32(65535.0)
        if a.shape[-1] in (2, 4):
            return _alpha(a, alpha, notes)
        return a[..., :3]
    mode = im.mode
    if mode.startswith("I;16"):
        notes.append("16-bit grey")
        return np.asarray(im, dtype=np.float32) / np.float32(65535.0)
    if mode == "I":
        return _int_grey(np.asarray(im), notes)
    if mode == "F":
        notes.append("32-bit float, values kept as stored")
        return np.array(im, dtype=np.float32)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / np.float32(255.0)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode != "LA":
            im = im.convert("RGBA")
        return _alpha(np.asarray(im, dtype=np.float32) / np.float32(255.0), alpha, notes)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / np.float32(255.0)


def _int_grey(a: np.ndarray, notes: list[str]) -> np.ndarray:
    a = a.astype(np.float64)
    top = 65535.0 if a.max(initial=0) > 255 else 255.0
    notes.append("32-bit integer grey, scaled by 1/65535" if top > 255 else "integer grey")
    return np.clip(a / top, 0, 1).astype(np.float32)


def _decode_tiff(fh: IO[bytes], label: str, limit: int, raw: bool, alpha: str, notes: list[str]) -> np.ndarray:
    """TIFFs PIL cannot represent (float or 32-bit colour, odd sample layouts), through tifffile."""
    try:
        import tifffile
    except ImportError:
        raise InputError("not a readable image (a TIFF layout that needs the 'tifffile' package)", label) from None
    fh.seek(0)
    try:
        tif = tifffile.TiffFile(fh, name=os.path.basename(label) or "image.tif")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"not a readable image (corrupt TIFF: {_short(exc)})", label) from None
    with tif:
        if not tif.pages:
            raise InputError("not a readable image (a TIFF without images)", label)
        page = tif.pages[0]
        h, w = int(getattr(page, "imagelength", 0)), int(getattr(page, "imagewidth", 0))
        if w * h > limit:
            raise _bomb(label, (w, h), limit)
        if w < 1 or h < 1:
            raise InputError("image is empty", label)
        axes = page.axes
        try:
            a = page.asarray()
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"image data is truncated or corrupt ({_short(exc)})", label) from None
    if axes.startswith("S") and a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (2, 3, 4)):
        raise InputError(f"a TIFF of shape {tuple(a.shape)} (axes {axes}) is not an image diffdiag can use", label)
    if raw:
        return a
    if a.dtype.kind == "f":
        notes.append(f"{a.dtype.itemsize * 8}-bit float, values kept as stored")
        f = a.astype(np.float32)
    elif a.dtype == np.uint8 or a.dtype == np.bool_:
        f = a.astype(np.float32) / np.float32(255.0 if a.dtype == np.uint8 else 1.0)
    elif a.dtype == np.uint16:
        notes.append("16-bit colour" if a.ndim == 3 else "16-bit grey")
        f = a.astype(np.float32) / np.float32(65535.0)
    elif a.dtype.kind in "iu" and a.ndim == 2:
        return _int_grey(a, notes)
    elif a.dtype.kind in "iu":
        top = float(np.iinfo(a.dtype).max)
        notes.append(f"{a.dtype.itemsize * 8}-bit integer colour, scaled by 1/{top:.0f}")
        f = np.clip(a.astype(np.float64) / top, 0, 1).astype(np.float32)
    else:
        raise InputError(f"a TIFF of {a.dtype} samples is not an image diffdiag can use", label)
    if f.ndim == 3 and f.shape[-1] in (2, 4):
        return _alpha(f, alpha, notes)
    return f


__all__ = ["MAX_PIXELS", "decode_image"]
