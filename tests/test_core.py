import pytest
import torch

from leakutils import Reconstruction, Update


def make_update():
    return Update({"w": torch.ones(2, 3), "b": torch.zeros(2)}, batch_size=1, loss=0.5, input_shape=(3,))


def test_update_getitem_and_missing_name():
    u = make_update()
    assert torch.equal(u["w"], torch.ones(2, 3))
    with pytest.raises(KeyError, match="has no gradient named 'nope'"):
        u["nope"]


def test_update_map_applies_and_drops_per_sample():
    u = Update({"w": torch.ones(2)}, 2, 0.1, (2,), per_sample={"w": torch.ones(2, 2)})
    v = u.map(lambda name, g: 3 * g)
    assert torch.equal(v["w"], torch.full((2,), 3.0)) and v.per_sample is None and v.batch_size == 2


def test_update_map_rejects_shape_change():
    with pytest.raises(ValueError, match="same shape"):
        make_update().map(lambda name, g: g.flatten()[:1])


def test_reconstruction_mask_shape_checked():
    with pytest.raises(ValueError, match="determined mask shape"):
        Reconstruction(images=torch.zeros(1, 4), labels=None, determined=torch.ones(1, 3, dtype=torch.bool))


def test_fraction_determined():
    mask = torch.tensor([[True, False, True, True]])
    r = Reconstruction(images=torch.zeros(1, 4), labels=None, determined=mask)
    assert r.fraction_determined == 0.75
