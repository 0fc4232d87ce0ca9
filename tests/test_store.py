"""How the store encodes tensors for Redis (no Redis needed for this part)."""

import torch

from app.core.codecs import bytes_to_support, support_to_bytes, tensors_to_bytes
from models.research import omniglot


def test_image_support_is_stored_as_gray_levels_losslessly():
    ds = omniglot.load()
    support = {"x": ds.images[:20], "y": torch.arange(20)}
    data = support_to_bytes(support)
    back = bytes_to_support(data)
    assert torch.equal(back["x"], support["x"]) and back["x"].dtype == torch.float32
    assert torch.equal(back["y"], support["y"])
    assert len(data) < len(tensors_to_bytes(support)) / 3


def test_support_that_is_not_an_8_bit_image_stays_float():
    g = torch.Generator().manual_seed(0)
    for x in (torch.rand(5, 1, 28, 28, generator=g), torch.randn(5, 1, generator=g) * 5):
        support = {"x": x, "y": torch.randn(5, 1, generator=g)}
        back = bytes_to_support(support_to_bytes(support))
        assert torch.equal(back["x"], x) and torch.equal(back["y"], support["y"])
