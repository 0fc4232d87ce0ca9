"""The generalist symbol base (symbols-conv4): what it was trained on, and that it serves beside omniglot-conv4."""

import json
import random

import torch

from models import checkpoint, registry
from models.adapt import adapt, choose_mode, predict
from models.research import glyphs, omniglot, symbols, train

BASE = "symbols-conv4"


def meta() -> dict:
    return json.loads((checkpoint.CHECKPOINT_DIR / f"{BASE}.json").read_text())


def test_no_evaluation_family_is_drawn():
    """No group of the training set is a glyph val or test script, an Omniglot test alphabet or a script of
    Lake et al.'s evaluation alphabets, in the code and in what the committed base records."""
    excluded = {name for names in symbols.EXCLUDED.values() for name in names}
    groups = [name for scripts, _, _ in symbols.typeset_sets() for name in scripts]
    assert set(glyphs.SPLITS["train"]) <= set(groups) and len(groups) == len(set(groups)) > 60
    assert not excluded & set(groups)
    assert not excluded & {g for gs in meta()["data"]["sources"].values() for g in gs}
    assert set(meta()["data"]["sources"]["handwriting"]) == set(omniglot.alphabets_of("train+val"))


def test_a_script_s_letters_are_its_own():
    """A script's characters are letters named for it (a font also carries Latin, digits and marks)."""
    keep = symbols._named("KayahLi")
    assert keep(0xA90A) and not keep(ord("A")) and not keep(0xA926)  # KA; Latin A; a vowel sign (a mark)
    assert symbols._named("NKo")(0x07CA) and symbols._symbol(ord("→")) and not symbols._symbol(0x03B1)


def test_silhouettes_are_drawn_from_the_seed():
    """The same seed draws the same class and drawer; each drawer is another rendering of the class."""
    spec = lambda seed: symbols.shape(random.Random(seed), "blob")
    assert spec(1) == spec(1) and spec(1) != spec(2)
    draw = lambda seed: symbols.draw_shape(spec(1), random.Random(seed)).tobytes()
    assert draw(5) == draw(5) and draw(5) != draw(6)
    assert symbols.draw_shape(spec(1), random.Random(5)).size == (glyphs.CANVAS, glyphs.CANVAS)


def test_the_symbols_family_trains_a_servable_base(tmp_path):
    """Two iterations of `models.train symbols` write a base the registry serves: the set's checksum (the
    committed base's), its sources and exclusions, Omniglot's input, and `auto` statistics of its images."""
    train.main(
        ["symbols", "--name", "gen", "--iterations", "2", "--val-every", "2", "--val-tasks", "2"]
        + ["--threads", "1", "--out", str(tmp_path)]
    )
    written = json.loads((tmp_path / "gen.json").read_text())
    assert written["data"]["sha256"] == meta()["data"]["sha256"]  # the set renders the same from the seed
    assert written["data"]["excluded"] == meta()["data"]["excluded"]
    assert written["input"] == omniglot.input_record() and symbols.VERSION in written["auto"]["from"]
    assert written["validation"]["metric"] == "glyphs val 10-way 1-shot accuracy"
    model, spec = registry.load_path(tmp_path / "gen")
    assert spec["input"]["shape"] == [1, 28, 28] and model.familiar is not None


def test_both_image_bases_are_served_with_what_each_is_for():
    """symbols-conv4 is listed beside omniglot-conv4, takes the same images, says what it is for, and on
    typeset scripts it never saw its default request beats omniglot-conv4's (the evaluation's figures)."""
    _, omni = registry.shipped().load("omniglot-conv4")
    model, spec = registry.shipped().load(BASE)
    assert spec["input"] == omni["input"] and spec["max_ways"] == omni["max_ways"]
    assert "handwritten" in omni["use_for"] and "symbols" in spec["use_for"]
    gen = torch.Generator().manual_seed(0)
    sampler = glyphs.EpisodeSampler(glyphs.load(), "test")
    right = {"omniglot-conv4": [], BASE: []}
    for _ in range(10):
        sx, sy, qx, qy = sampler.sample(10, 1, 5, gen)
        for name in right:
            base, _ = registry.shipped().load(name)
            fast = adapt(base, sx, sy, mode=choose_mode(base, sx, sy)).fast
            right[name].append((predict(base, fast, qx).argmax(-1) == qy).float().mean().item())
    assert sum(right[BASE]) > sum(right["omniglot-conv4"])


def test_auto_fine_tunes_the_generalist_from_two_shots():
    """symbols-conv4 finds its training kinds familiar; its `auto` fine-tunes a support set once every class has
    `fine_tune_from_shots` examples (chosen on validation), and below that goes by familiarity."""
    model, _ = registry.shipped().load(BASE)
    n = model.familiar.from_shots
    assert n == meta()["auto"]["fine_tune_from_shots"] == 2
    gen = torch.Generator().manual_seed(0)
    sampler = glyphs.EpisodeSampler(glyphs.load(), "train")  # scripts it was trained on: familiar
    one = [sampler.sample(10, 1, 1, gen)[:2] for _ in range(10)]
    assert [choose_mode(model, x, y) for x, y in one] == ["fast"] * 10
    x, y, _, _ = sampler.sample(10, n, 1, gen)
    assert choose_mode(model, x, y) == "fine-tune"
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[(y == 0).nonzero()[0]] = False  # one class down to one example: the smallest class decides
    assert choose_mode(model, x[keep], y[keep]) == "fast"
    conv4, _ = registry.shipped().load("omniglot-conv4")
    assert conv4.familiar.from_shots is None  # the in-domain base keeps its familiarity rule alone
