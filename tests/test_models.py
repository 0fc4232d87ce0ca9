"""Unit tests of the ML core: the inner loop, the bases, data, checkpoints, evaluation."""

import base64
import io
import json

import pytest
import torch
from PIL import Image

from models import checkpoint, registry
from models.adapt import adapt, predict
from models.nets import SHIFTS, Conv4, SinusoidMLP, shifted_views
from models.preprocess import ImageError, decode_image
from models.research import evaluate, omniglot, sinusoid


@pytest.fixture(scope="module")
def ds():
    return omniglot.load()


@pytest.fixture
def conv4():
    torch.manual_seed(0)
    return Conv4(steps=5)


def episode(ds, n_way=5, k_shot=1, n_query=2, seed=0, split="train"):
    return omniglot.EpisodeSampler(ds, split).sample(n_way, k_shot, n_query, torch.Generator().manual_seed(seed))


def test_omniglot_counts(ds):
    assert len(ds.alphabets) == 8
    assert len(ds.char_names) == 242
    assert ds.images.shape == (4840, 1, 28, 28)
    assert torch.bincount(ds.char).eq(20).all()
    splits = [set(ds.chars_of(a)) for a in omniglot.SPLITS.values()]
    assert sum(map(len, splits)) == 242 and not (
        splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2]
    )


def test_the_final_recipe_trains_on_train_and_val(ds):
    both = omniglot.EpisodeSampler(ds, "train+val")
    assert set(both.alphabets) == set(omniglot.SPLITS["train"] + omniglot.SPLITS["val"]) and len(both.by_char) == 196
    assert not set(both.by_char) & set(omniglot.EpisodeSampler(ds, "test").by_char)
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        omniglot.EpisodeSampler(ds, "train+tset")


def test_served_png_is_preprocessed_exactly_as_in_training(ds):
    for i in (0, 1234, 4839):
        assert torch.equal(decode_image(omniglot.original_png(ds.files[i]), 10**6), ds.images[i])


def test_framing_centres_each_drawing_on_its_ink_and_never_cuts_a_stroke(ds):
    from models.preprocess import SIDE, frame_ink, square_gray

    img = Image.open(io.BytesIO(omniglot.original_png(ds.files[100]))).convert("L")
    ink = 255 - torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(105, 105).int()
    assert ink[:, :8].max() == 0 and ink[-5:].max() == 0  # the strokes stay on the canvas when moved
    moved = Image.new("L", img.size, 255)
    moved.paste(img, (-8, 5))
    ink28 = lambda im, framed=True: (
        255
        - torch.tensor(
            list(frame_ink([im])[0] if framed else im.resize((SIDE, SIDE), Image.Resampling.BOX).tobytes()),
            dtype=torch.int32,
        )
    )
    # moved by whole pixels: the same tensor, where plain resizing moves the strokes
    assert torch.equal(ink28(moved), ink28(img)) and (ink28(moved, False) - ink28(img, False)).abs().max() > 100
    # ink touching the canvas's edge is kept whole: the window moves off-centre instead
    corner = Image.new("L", img.size, 255)
    corner.paste(img.crop((8, 0, 105, 100)), (0, 5))
    assert (
        abs(ink28(corner).sum().item() * 16 - (255 - torch.tensor(list(corner.tobytes()))).sum().item())
        < 16 * 28 * 28 / 2
    )
    # drawings framed together come out as each alone, whatever their sizes
    big = img.resize((300, 300))
    blank = Image.new("L", (40, 40), 255)
    squares = [square_gray(im) for im in (img, big, moved, blank, corner)]
    assert frame_ink(squares) == [frame_ink([s])[0] for s in squares]
    assert frame_ink([square_gray(blank)]) == [bytes([255]) * SIDE * SIDE]
    with pytest.raises(ValueError, match="105x105"):
        frame_ink([big])  # only square_gray's canvas: a drawing of another size is never framed as it is
    # every training drawing's ink is centred to a fraction of a pixel, unless centring would cut a stroke
    x = ds.images[:, 0]
    mass, pos = x.sum((1, 2)), torch.arange(SIDE, dtype=torch.float32) + 0.5
    off = torch.stack([(x.sum(2) @ pos) / mass - SIDE / 2, (x.sum(1) @ pos) / mass - SIDE / 2]).abs().amax(0)
    edge = (x[:, 0].sum(1) + x[:, -1].sum(1) + x[:, :, 0].sum(1) + x[:, :, -1].sum(1)) > 0
    assert off.median() < 0.1 and (off[~edge] < 0.3).all() and edge.float().mean() < 0.05


def test_numpy_framing_equals_pil_framing_bit_for_bit(ds):
    """frame_ink's numpy windows and block means equal the PIL paste and `reduce` they replaced,
    on Omniglot drawings and on images made to hit the edges (noise, dots, blobs off the canvas,
    blanks, large and oblong images); dark_frame's partial sort equals np.median's verdict."""
    import numpy as np
    from PIL import ImageDraw

    from models.preprocess import REDUCE, WINDOW, _corners, dark_frame, frame_ink, square_gray

    def pil_framing(imgs):
        gray = np.stack([np.asarray(im) for im in imgs])
        out = []
        for im, (left, top) in zip(imgs, _corners(gray)):
            window = Image.new("L", (WINDOW, WINDOW), 255)
            window.paste(im, (-left, -top))
            out.append(window.reduce(REDUCE).tobytes())
        return out

    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    drawings = [
        Image.open(io.BytesIO(omniglot.original_png(ds.files[i]))) for i in torch.randperm(4840, generator=gen)[:300]
    ]
    made = []
    for k in range(400):
        if k % 4 == 0:
            im = Image.fromarray(rng.integers(0, 256, (105, 105), dtype=np.uint8))
        elif k % 4 == 3:
            h, w = rng.integers(1, 300, 2)
            im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        else:
            im = Image.new("L", (105, 105), 255)
            x, y, a, b = (int(v) for v in rng.integers(-30, 130, 4))
            ImageDraw.Draw(im).ellipse((x, y, x + abs(a) % 60, y + abs(b) % 60), fill=int(rng.integers(0, 255)))
        made.append(im)
    squares = [square_gray(im) for im in drawings + made + [Image.new("L", (40, 40), 255)]]
    assert all(s.shape == (105, 105) and s.dtype == np.uint8 for s in squares)
    assert frame_ink(squares) == pil_framing([Image.fromarray(s) for s in squares])
    for im in made:
        a = np.asarray(im.convert("L"))
        assert dark_frame(a) == (np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])) < 128)


def test_a_base_trained_on_other_preprocessing_is_refused(tmp_path):
    model, meta = checkpoint.load(checkpoint.CHECKPOINT_DIR / "omniglot-conv4")
    checkpoint.save(model, meta | {"data": meta["data"] | {"preprocessing": "box-resize"}}, tmp_path / "old")
    with pytest.raises(ValueError, match="prepared as box-resize"):
        checkpoint.load(tmp_path / "old")


def test_a_batch_of_pngs_decodes_as_each_alone(ds):
    from app.api.inputs import Limits, batch
    from app.api.schemas import ImageInput

    spec = registry.shipped().load("omniglot-conv4")[1]
    ids = [0, 777, 2500, 4839]
    values = [ImageInput(image=base64.b64encode(omniglot.original_png(ds.files[i])).decode()) for i in ids]
    assert torch.equal(
        batch(values, spec, Limits(10**6, 10**4, 10**9), [["inputs", i] for i in range(4)]), ds.images[ids]
    )


def test_episodes_with_flips_use_the_8_symmetries_as_classes(ds):
    img = ds.images[0]
    variants = [omniglot.symmetry(img, v) for v in range(8)]
    assert torch.equal(variants[4], img.flip(-1)) and torch.equal(variants[1], torch.rot90(img, 1, dims=(1, 2)))
    assert len({tuple(v.flatten().tolist()) for v in variants}) == 8  # an asymmetric drawing: 8 distinct classes
    sampler = omniglot.EpisodeSampler(ds, "train", rotations=True, flips=True)
    tagalog = len(sampler.alphabets["Tagalog"])  # 17 characters: 136 classes with the symmetries
    assert sampler.sample_ids(tagalog * 8, 1, 0, torch.Generator().manual_seed(0))[0]
    with pytest.raises(ValueError):
        omniglot.EpisodeSampler(ds, "train", rotations=True).sample_ids(47 * 4 + 1, 1, 0, torch.Generator())


def test_shear_jitter_warps_and_zero_shear_keeps_the_old_stream(ds):
    x = ds.images[:16]
    plain = omniglot.affine_jitter(x, torch.Generator().manual_seed(0))
    again = omniglot.affine_jitter(x, torch.Generator().manual_seed(0), shear=0.0)
    sheared = omniglot.affine_jitter(x, torch.Generator().manual_seed(0), shear=0.3)
    assert torch.equal(plain, again)
    assert not torch.allclose(plain, sheared) and sheared.min() >= 0 and sheared.max() <= 1


def test_any_size_jpeg_and_bad_images():
    img = Image.new("L", (300, 120), 255)
    img.paste(0, (140, 20, 160, 100))  # a dark vertical stroke on white
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    x = decode_image(buf.getvalue(), 10**6)
    assert x.shape == (1, 28, 28) and x.max() > 0.5 and x[0, :, :5].max() < 0.05  # ink is 1, paper 0
    with pytest.raises(ImageError) as e:
        decode_image(b"not an image", 10**6)
    assert e.value.code == "invalid_image"
    with pytest.raises(ImageError) as e:
        decode_image(buf.getvalue(), 1000)
    assert e.value.code == "image_too_large"


def test_adapt_lowers_support_loss(ds, conv4):
    sx, sy, _, _ = episode(ds, 5, 3)
    a = adapt(conv4, sx, sy, 5)
    assert a.loss_after.item() < a.loss_before.item()
    m = SinusoidMLP(steps=5)
    x, y, _, _ = sinusoid.sample_tasks(1, 10, 1, torch.Generator().manual_seed(0))
    a = adapt(m, x[0], y[0], 5)
    assert a.loss_after.item() < a.loss_before.item()


@pytest.mark.parametrize("first_order", [False, True])
def test_gradients_reach_theta_and_phi(ds, conv4, first_order):
    sx, sy, qx, qy = episode(ds, 5, 1, 3)
    a = adapt(conv4, sx, sy, 3, train=True, first_order=first_order)
    loss = conv4.loss(conv4.fast_forward(a.fast, conv4.embed(qx).unsqueeze(0)), qy.unsqueeze(0)).sum()
    loss.backward()
    assert conv4.body[0].weight.grad.abs().sum() > 0
    for alpha in conv4.step_sizes.values():
        assert alpha.grad[:3].abs().sum() > 0 and alpha.grad[3:].abs().sum() == 0  # only the steps taken


def test_second_order_terms_change_the_meta_gradient():
    m = SinusoidMLP(steps=2)
    x, y, qx, qy = sinusoid.sample_tasks(2, 5, 5, torch.Generator().manual_seed(1))
    grads = []
    for first_order in (False, True):
        m.zero_grad()
        a = adapt(m, x, y, 2, train=True, first_order=first_order)
        m.loss(m.fast_forward(a.fast, qx), qy).sum().backward()
        grads.append(m.net[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("n_way", [2, 3, 7, 13, 20])
def test_any_ways_unequal_shots(ds, conv4, n_way):
    gen = torch.Generator().manual_seed(n_way)
    sampler = omniglot.EpisodeSampler(ds, "train", rotations=True)
    sx, sy, qx, qy = sampler.sample(n_way, 3, 1, gen)
    keep = torch.ones(len(sy), dtype=torch.bool)
    keep[torch.arange(0, len(sy), 3)[::2] + 1] = False  # drop one shot from every other class
    keep[torch.arange(0, len(sy), 3)[::2] + 2] = False
    a = adapt(conv4, sx[keep], sy[keep])
    assert a.fast["weight"].shape == (1, n_way, conv4.dim)
    assert predict(conv4, a.fast, qx).shape == (n_way, n_way)


@pytest.mark.parametrize("mode", ["fast", "fine-tune"])
def test_predictions_do_not_depend_on_the_batch(ds, mode):
    model, _ = registry.shipped().load("omniglot-conv4")
    sx, sy, qx, _ = episode(ds, 20, 1, 1, split="val")
    fast = adapt(model, sx, sy, mode=mode).fast
    others = ds.images[:499]
    alone = predict(model, fast, qx[:1])
    among = predict(model, fast, torch.cat([qx[:1], others]))[:1]
    torch.testing.assert_close(alone, among, rtol=1e-4, atol=1e-4)
    assert alone.argmax() == among.argmax()


@pytest.mark.parametrize("channels", [64, 24])
def test_fast_embedding_computes_the_reference_network(ds, channels):
    """`Conv4.embed` rewrites the conv and pooling for speed; values and gradients
    must stay those of the plain nn.Sequential it is checked against, for any width."""
    torch.manual_seed(0)
    model = Conv4(channels=channels)
    dim = channels
    x = ds.images[:9]
    fast, ref = model.embed(x), model.body(x)
    assert fast.shape == (9, dim) and model.dim == dim
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), list(model.body.parameters()))
    g_ref = torch.autograd.grad(model.body(x).square().sum(), list(model.body.parameters()))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    with torch.inference_mode():  # the forward-only path that serving and evaluation take
        torch.testing.assert_close(model.embed_inference(x), ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.embed(x), ref.detach(), rtol=1e-5, atol=1e-5)


def test_shifted_views_move_the_drawing_one_pixel_with_paper_filling_in():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    views = shifted_views(x)
    assert views.shape == (len(SHIFTS), 1, 1, 4, 4) and torch.equal(views[SHIFTS.index((0, 0))], x)
    for (dx, dy), view in zip(SHIFTS, views):
        inside = view[0, 0, max(dy, 0) : 4 + min(dy, 0), max(dx, 0) : 4 + min(dx, 0)]
        torch.testing.assert_close(inside, x[0, 0, max(-dy, 0) : 4 + min(-dy, 0), max(-dx, 0) : 4 + min(-dx, 0)])
        assert (dx, dy) == (0, 0) or view.sum() < x.sum()  # the row or column moved out is gone, paper came in


def test_support_shifts_average_the_support_embedding_and_leave_predictions_alone(ds):
    """With `support_shifts` a support image embeds as the mean of its five views, which
    makes it less sensitive to a one-pixel move; queries embed as before."""
    torch.manual_seed(0)
    plain = Conv4()
    shifts = Conv4(support_shifts=True)
    shifts.load_state_dict(plain.state_dict())
    x = ds.images[:30]
    with torch.inference_mode():
        views = torch.stack([plain.embed(v) for v in shifted_views(x)])
        torch.testing.assert_close(shifts.embed_support(x), views.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shifts.embed(x), plain.embed(x))
        moved = torch.roll(x, 1, dims=-1)  # the drawings' edges are paper: a clean one-pixel move
        drift = lambda m, f: ((f(moved) - f(x)).norm(dim=1) / f(x).norm(dim=1)).mean()
        assert drift(shifts, shifts.embed_support) < 0.8 * drift(plain, plain.embed)
    sx, sy, qx, _ = episode(ds, 5, 1)
    assert not torch.equal(adapt(shifts, sx, sy).fast["weight"], adapt(plain, sx, sy).fast["weight"])


def test_the_committed_base_adapts_with_shifted_support():
    model, _ = registry.shipped().load("omniglot-conv4")
    assert model.support_shifts


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda x, y: (x[:0], y[:0]), "empty"),
        (lambda x, y: (x, torch.zeros_like(y)), "at least 2 classes"),
        (lambda x, y: (x[..., :20], y), "shape"),
        (lambda x, y: (x.clone().index_fill_(0, torch.tensor([0]), float("nan")), y), "NaN"),
        (lambda x, y: (x, y[:-1]), "labels"),
        (lambda x, y: (x, y.float()), "integer"),
    ],
)
def test_bad_support_raises_clear_errors(ds, conv4, bad, message):
    sx, sy, _, _ = episode(ds, 5, 1)
    x, y = bad(sx, sy)
    with pytest.raises(ValueError, match=message):
        adapt(conv4, x, y)


def test_divergence_guard_keeps_the_lowest_loss_weights():
    model, _ = registry.shipped().load("sinusoid-mlp")
    x = torch.tensor([[-4.0], [-2.0], [0.5], [2.0], [3.5]])
    odd = torch.tensor([[2.1], [-1.3], [-2.9], [-1.0], [2.2]])  # no sinusoid of the family fits these
    losses = [adapt(model, x, odd, k).loss_after.item() for k in range(model.default_steps + 1)]
    a = adapt(model, x, odd)
    assert a.stopped_early.item() and torch.isfinite(a.loss_after).all()
    assert a.loss_after.item() == pytest.approx(min(losses[: losses.index(max(losses))]))
    fine = adapt(model, x, 2 * torch.sin(x - 1))  # in the family: the guard stays out of the way
    assert not fine.stopped_early.item() and fine.loss_after.item() < 0.01


def test_steps_out_of_range(ds, conv4):
    sx, sy, _, _ = episode(ds, 5, 1)
    with pytest.raises(ValueError, match="steps"):
        adapt(conv4, sx, sy, conv4.max_steps + 1)


def test_checkpoint_round_trips_bit_for_bit(tmp_path):
    model, meta = checkpoint.load(checkpoint.CHECKPOINT_DIR / "omniglot-conv4")
    checkpoint.save(model, meta, tmp_path / "a" / "omniglot-conv4")
    again, meta2 = checkpoint.load(tmp_path / "a" / "omniglot-conv4")
    assert meta2 == meta
    assert list(model.state_dict()) == list(again.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    original = (checkpoint.CHECKPOINT_DIR / "omniglot-conv4.safetensors").read_bytes()
    assert (tmp_path / "a" / "omniglot-conv4.safetensors").read_bytes() == original


def test_registry_serves_the_committed_bases():
    assert registry.shipped().names() == ("omniglot-conv4", "sinusoid-mlp", "symbols-conv4")
    model, spec = registry.shipped().load("omniglot-conv4")
    assert spec["task"] == "classification" and spec["max_ways"] >= 20 and spec["input"]["shape"] == [1, 28, 28]
    assert not any(p.requires_grad for p in model.parameters())
    model, spec = registry.shipped().load("sinusoid-mlp")
    assert spec["task"] == "regression" and spec["input"]["shape"] == [1]
    for name in registry.shipped().names():
        assert (checkpoint.CHECKPOINT_DIR / f"{name}.safetensors").stat().st_size < 2 * 2**20


def test_evaluation_is_reproducible_from_a_seed(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint.save(
        SinusoidMLP(steps=2),
        {"architecture": "mlp", "architecture_kwargs": {"steps": 2}, "task": "regression", "algorithm": "metasgd"},
        tmp_path / "sinusoid-mlp",
    )
    checkpoint.save(
        SinusoidMLP(steps=2),
        {"architecture": "mlp", "architecture_kwargs": {"steps": 2}, "task": "regression", "algorithm": "transfer"},
        tmp_path / "sinusoid-transfer",
    )
    argv = ["sinusoid", "--episodes", "20", "--shots", "5", "--dir", str(tmp_path), "--seed", "3"]
    evaluate.main(argv)
    first = (tmp_path / "sinusoid-mlp-tasks-seed3.eval.json").read_text()
    evaluate.main(argv)
    assert (tmp_path / "sinusoid-mlp-tasks-seed3.eval.json").read_text() == first
    evaluate.main(argv[:-1] + ["4"])
    other = (tmp_path / "sinusoid-mlp-tasks-seed4.eval.json").read_text()
    assert json.loads(other)["results"] != json.loads(first)["results"]
    assert (tmp_path / "sinusoid-mlp-tasks-seed3.eval.png").exists()
    assert not (tmp_path / "sinusoid-mlp.eval.json").exists()  # only seed 0 writes what the API serves


def test_official_run_format_scores_the_base(tmp_path, ds, capsys):
    omniglot.make_runs(ds, "test", tmp_path, n_runs=2, seed=0)
    lines = (tmp_path / "run01" / "class_labels.txt").read_text().splitlines()
    assert len(lines) == 20 and lines[0].startswith("run01/test/item01.png run01/training/class")
    assert Image.open(tmp_path / "run01" / "training" / "class01.png").size == (105, 105)
    args = type("A", (), {"base": "omniglot-conv4", "runs": str(tmp_path), "dir": str(checkpoint.CHECKPOINT_DIR)})
    error = evaluate.omniglot_runs(args)
    assert 0.0 <= error < 0.3  # chance is 95% error
    assert "error rate over 2 runs" in capsys.readouterr().out


def test_training_writes_the_best_checkpoint_and_init_continues_from_it(tmp_path):
    from models.research import train

    common = [
        "sinusoid",
        "--iterations",
        "4",
        "--val-every",
        "2",
        "--val-tasks",
        "5",
        "--meta-batch",
        "2",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    train.main([*common, "--name", "first"])
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["algorithm"] == "metasgd" and (tmp_path / "first.safetensors").exists()
    assert first["validation"]["best"] == max(first["validation"]["curve"].values())
    train.main([*common, "--name", "second", "--init", "first"])
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["training"]["init_from"]["name"] == "first"
    assert second["validation"]["curve"]["0"] == first["validation"]["best"]  # it starts where the best left off
    assert second["validation"]["best"] >= first["validation"]["best"]
    with pytest.raises(SystemExit, match="architecture"):
        train.main([*common, "--name", "third", "--init", "first", "--steps", "3"])


# ---- the fine-tune mode --------------------------------------------------------


def glyph_task(k_shot: int, seed: int = 0):
    from models.research import glyphs

    return glyphs.EpisodeSampler(glyphs.load(), "val").sample(10, k_shot, 5, torch.Generator().manual_seed(seed))


def test_fine_tune_adapts_the_tail_and_moves_predictions_at_one_shot():
    """On glyphs unlike Omniglot, with one example per class: the augmented copies' loss
    falls, the tail moves from θ, the head is rebuilt from the new embedding, and
    predictions change; the fast mode's head steps leave them as they were."""
    model, _ = registry.shipped().load("omniglot-conv4")
    sx, sy, qx, _ = glyph_task(1)
    fast, tuned = adapt(model, sx, sy), adapt(model, sx, sy, mode="fine-tune")
    assert tuned.mode == "fine-tune" and tuned.steps == model.tune_steps
    assert tuned.loss_curve.shape == (1, model.tune_steps + 1)
    assert tuned.loss_after.item() < 0.5 * tuned.loss_before.item()
    theta = model.tail_params()
    assert all(not torch.equal(tuned.fast[n][0], theta[n]) for n in theta)
    zero = adapt(model, sx, sy, 0)
    assert torch.equal(predict(model, fast.fast, qx).argmax(-1), predict(model, zero.fast, qx).argmax(-1))
    assert not torch.equal(predict(model, tuned.fast, qx).argmax(-1), predict(model, zero.fast, qx).argmax(-1))


def test_fine_tune_is_deterministic_and_stores_compactly():
    model, _ = registry.shipped().load("omniglot-conv4")
    sx, sy, qx, _ = glyph_task(5, seed=1)
    a, b = adapt(model, sx, sy, mode="fine-tune"), adapt(model, sx, sy, mode="fine-tune")
    assert all(torch.equal(a.fast[n], b.fast[n]) for n in a.fast)  # a job run twice writes the same weights
    stored = model.to_stored(a.fast)
    assert stored["tail.conv.weight.q"].dtype == torch.int8
    from app.core.codecs import tensors_to_bytes

    assert len(tensors_to_bytes(stored)) < 45_000  # 10-way; a 20-way head adds 5 KB
    back = model.from_stored(stored)
    torch.testing.assert_close(predict(model, back, qx), predict(model, a.fast, qx), rtol=1e-3, atol=1e-3)
    assert torch.equal(predict(model, back, qx).argmax(-1), predict(model, a.fast, qx).argmax(-1))
    assert model.from_stored(model.to_stored(adapt(model, sx, sy).fast)).keys() == {"weight", "bias"}


def test_fine_tune_makes_the_base_s_views_fewer_for_large_support_sets(monkeypatch):
    """The committed base fine-tunes on 16 augmented copies of a small support set; a large one
    gets fewer (at most 2,000 augmented images a step) but never fewer than 4. Counted at the
    augmentation itself."""
    from models import adapt as adapt_module

    model, meta = checkpoint.load(checkpoint.CHECKPOINT_DIR / "omniglot-conv4")
    assert model.tune_views == meta["fine_tune"]["views"] == 16
    made = []
    real = adapt_module.support_views
    monkeypatch.setattr(adapt_module, "support_views", lambda x, gen, n: made.append(n) or real(x, gen, n))
    for n_support, views in ((10, 16), (125, 16), (200, 10), (500, 4), (900, 4)):
        x = torch.rand(n_support, 1, 28, 28).round()
        adapt(model, x, torch.arange(n_support) % 2, 1, mode="fine-tune")
        assert made.pop() == views, n_support


def test_fine_tune_step_sizes_get_a_meta_gradient_and_theta_none():
    model = checkpoint.build({"architecture": "conv4", "architecture_kwargs": {"tune_steps": 3}}).eval()
    model.requires_grad_(False)
    model.tune_step_sizes.requires_grad_(True)
    sx, sy, qx, qy = glyph_task(2)
    fast = adapt(model, sx, sy, mode="fine-tune", train=True).fast
    out = model.fast_forward(fast, model.embed_adapted(qx, fast).unsqueeze(0))[0]
    torch.nn.functional.cross_entropy(out, qy).backward()
    grads = [p.grad for p in model.tune_step_sizes.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("tune_step_sizes"))


def test_modes_and_the_auto_choice(ds):
    """auto reads the support set as the committed base sees it: drawn characters of alphabets
    it never saw go to the fast loop, typeset glyphs (bold or thin) to the fine-tune loop; a base
    without training statistics is fast."""
    from models.adapt import choose_mode, mode_steps
    from models.research import glyphs

    conv4, _ = registry.shipped().load("omniglot-conv4")
    mlp, _ = registry.shipped().load("sinusoid-mlp")
    assert mode_steps(conv4)["fine-tune"]["max_steps"] == conv4.tune_steps
    assert mode_steps(mlp)["fine-tune"] == mode_steps(mlp)["fast"]  # every weight adapts in both
    gen = torch.Generator().manual_seed(0)
    drawn = omniglot.EpisodeSampler(ds, "test")
    assert [choose_mode(conv4, *drawn.sample(20, 1, 1, gen)[:2]) for _ in range(20)] == ["fast"] * 20
    for thin in (False, True):
        typeset = glyphs.EpisodeSampler(glyphs.load(thin=thin), "val")
        chosen = [choose_mode(conv4, *typeset.sample(10, 5, 1, gen)[:2]) for _ in range(20)]
        assert chosen == ["fine-tune"] * 20, thin
    sx, sy, _, _ = glyph_task(1)
    plain = Conv4()
    plain.familiar = None
    assert choose_mode(plain, sx, sy) == "fast"
    with pytest.raises(ValueError, match="mode must be one of"):
        adapt(conv4, sx, sy, mode="slow")
    with pytest.raises(ValueError, match="for fine-tune"):
        adapt(conv4, sx, sy, conv4.tune_steps + 1, mode="fine-tune")


def test_auto_runs_the_plain_support_through_the_trunk_once(ds, monkeypatch):
    """adapt(mode="auto") gives bit for bit the weights and losses of the loop that `choose_mode`
    picks, run on its own, in both loops; and the trunk pass that the choice makes over the plain
    support is not made again (5 views of 20 drawings: 100 images through the trunk, not 120)."""
    from models.adapt import choose_mode
    from models.research import glyphs

    conv4, _ = registry.shipped().load("omniglot-conv4")
    gen = torch.Generator().manual_seed(3)
    drawn = omniglot.EpisodeSampler(ds, "test").sample(20, 1, 1, gen)[:2]
    typeset = glyphs.EpisodeSampler(glyphs.load(), "val").sample(10, 5, 1, gen)[:2]
    for (sx, sy), loop in ((drawn, "fast"), (typeset, "fine-tune")):
        assert choose_mode(conv4, sx, sy) == loop
        alone, auto = adapt(conv4, sx, sy, mode=loop), adapt(conv4, sx, sy, mode="auto")
        assert auto.mode == loop and alone.fast.keys() == auto.fast.keys()
        assert all(torch.equal(alone.fast[k], auto.fast[k]) for k in alone.fast)
        assert torch.equal(alone.loss_curve, auto.loss_curve)
    seen = []
    stages = conv4.stages
    monkeypatch.setattr(conv4, "stages", lambda x: seen.append(len(x)) or stages(x))
    adapt(conv4, *drawn, mode="auto")
    assert sum(seen) == 100
    seen.clear()
    adapt(conv4, *drawn, mode=choose_mode(conv4, *drawn))
    assert sum(seen) == 120
    with pytest.raises(ValueError, match="or auto, for one task"):  # batched tasks are resolved one by one first
        adapt(conv4, torch.stack([drawn[0]] * 2), torch.stack([drawn[1]] * 2), mode="auto")


def test_the_auto_record_is_the_training_images_own_statistics(ds, tmp_path):
    """`models.train auto` rewrites a base's `auto` from its training images and nothing else:
    the training images sit at the threshold's percentile, and the weights are untouched."""
    from models import familiarity
    from models.research import train

    for suffix in (".json", ".safetensors"):
        (tmp_path / f"base{suffix}").write_bytes((checkpoint.CHECKPOINT_DIR / f"omniglot-conv4{suffix}").read_bytes())
    meta = json.loads((tmp_path / "base.json").read_text())
    meta["auto"] = {}
    (tmp_path / "base.json").write_text(json.dumps(meta))
    train.main(["auto", "--name", "base", "--out", str(tmp_path)])
    model, written = checkpoint.load(tmp_path / "base")
    assert {k: v for k, v in written.items() if k != "auto"} == {k: v for k, v in meta.items() if k != "auto"}
    images = ds.images_of(written["data"]["trained_on"])
    beyond = (model.familiar.distances(model, images) > model.familiar.threshold).float().mean().item()
    assert abs(beyond - (1 - familiarity.PERCENTILE / 100)) < 0.01
    assert written["auto"] == json.loads((checkpoint.CHECKPOINT_DIR / "omniglot-conv4.json").read_text())["auto"]


def test_a_request_s_images_are_shrunk_one_at_a_time():
    """16 RGBA 2000x2000 PNGs (a few KB each, 16 MB each decoded): decoding all before reducing
    any held 256 MB at once. Measured in a fresh process by its peak resident memory."""
    import subprocess
    import sys

    script = """
import base64, io
from PIL import Image
from app.api.inputs import Limits, batch
from app.api.schemas import ImageInput
from models.preprocess import PREPROCESSING

def peak():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

def png(i):
    img = Image.new("RGBA", (2000, 2000), (255, 255, 255, 0))
    img.paste((0, 0, 0, 255), (100 * i, 100, 100 * i + 40, 1900))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return ImageInput(image=base64.b64encode(buf.getvalue()).decode())

values = [png(i) for i in range(16)]
spec = {"name": "t", "input": {"kind": "image", "preprocessing_kind": PREPROCESSING, "shape": [1, 28, 28]}}
before = peak()
x = batch(values, spec, Limits(4_000_000, 8192, 64_000_000), [["inputs", i] for i in range(16)])
assert tuple(x.shape) == (16, 1, 28, 28)
print(peak() - before)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.split()[-1]) < 100 * 2**20  # one image at a time: not 16 x 16 MB
