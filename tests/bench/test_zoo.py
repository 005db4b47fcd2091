"""The benchmark zoo (bench/models.py, bench/data.py, bench/zoo.py): models run, data sets are
deterministic and well formed, a short training run learns and caches only where it is told."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import data, models, zoo


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_models_build_and_run(name: str) -> None:
    entry = zoo.ZOO[name]
    info = data.DATASETS[entry.dataset]
    model = zoo.build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(5, *info.input_shape))
    assert out.shape == (5, info.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "cls, kwargs, shape",
    [
        (models.PlainCNN, {"in_channels": 1, "width": 8}, (2, 1, 16, 16)),
        (models.ResidualCNN, {"width": 8, "stem_stride": 1}, (2, 3, 32, 32)),
        (models.DepthwiseCNN, {"width": 8, "stem_stride": 1}, (2, 3, 24, 24)),
        (models.TinyTransformer, {"seq_len": 16, "token_dim": 4, "dim": 32}, (2, 16, 4)),
    ],
)
def test_models_follow_their_arguments(cls, kwargs, shape) -> None:
    model = cls(num_classes=7, **kwargs).eval()
    assert model(torch.randn(shape)).shape == (2, 7)


def test_residual_cnn_has_resnet18_layout() -> None:
    model = models.ResidualCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 15  # stem + 6 blocks x 2 + two 1x1 projections
    assert model.layer3[0].downsample is not None and model.layer1[0].downsample is None


def test_incompatible_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match="digits_seq"):
        zoo.build_model("tiny_transformer", "shapes32")
    with pytest.raises(KeyError, match="choose from"):
        zoo.build_model("no_such_model")
    with pytest.raises(KeyError, match="choose from"):
        data.load("no_such_data")


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_datasets_are_deterministic_and_well_formed(name: str) -> None:
    info = data.DATASETS[name]
    a, b = data.load(name, seed=0), data.load(name, seed=0)
    for split_a, split_b in zip(a, b, strict=True):
        x, y = split_a.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == info.input_shape and x.shape[0] == y.shape[0]
        assert torch.isfinite(x).all()
        assert set(y.tolist()) == set(range(info.num_classes))  # every class in every split
        assert all(torch.equal(s, t) for s, t in zip(split_a.tensors, split_b.tensors, strict=True))
    assert len(a.train) <= 10_000 and len(a.calib) >= 256 and len(a.test) >= 450
    other = data.load(name, seed=1)
    assert not torch.equal(other.test.tensors[0], a.test.tensors[0])


def test_digits_splits_are_stratified_and_normalised() -> None:
    train, _, test = data.digits32()
    assert torch.bincount(test.tensors[1]).tolist() == [data.DIGITS_TEST_PER_CLASS] * 10
    x = train.tensors[0]
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to 3 channels
    # digits_seq uses the same test images (8x8 rows instead of 32x32 resampled)
    assert torch.equal(data.digits_seq().test.tensors[1], test.tensors[1])


def test_dihedral_maps_each_image_to_one_of_its_symmetries() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    x = x.repeat(16, 1, 1, 1)
    out = data.dihedral(x, torch.Generator().manual_seed(0))
    syms = []
    for t in (False, True):
        for fh in (False, True):
            for fv in (False, True):
                s = x.flip(-1) if fh else x
                s = s.flip(-2) if fv else s
                syms.append(s.transpose(-1, -2) if t else s)
    matches = torch.stack([(out == s).flatten(1).all(1) for s in syms])  # [8, N]
    assert matches.any(0).all()
    assert matches.any(1).sum() >= 4  # several different symmetries were drawn


def test_evaluate_accepts_tuples_and_restores_mode() -> None:
    model = torch.nn.Linear(3, 2).train()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [3.0, 0, 0], [0, 0, 1]])
    y = torch.tensor([0, 1, 1, 1])  # predictions: 0, 1, 0, 0 (a tie goes to class 0)
    assert zoo.evaluate(model, (x, y), batch_size=3) == 50.0
    assert model.training


def test_cache_path_tracks_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    path = zoo.cache_path("plain_cnn", cache_dir=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("plain_cnn-digits32-")
    assert zoo.cache_path("plain_cnn", "shapes32", tmp_path).name.startswith("plain_cnn-shapes32-")
    changed = dataclasses.replace(zoo.ZOO["plain_cnn"], lr=1e-3)
    monkeypatch.setitem(zoo.ZOO, "plain_cnn", changed)
    assert zoo.cache_path("plain_cnn", cache_dir=tmp_path) != path


def test_num_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    assert zoo.default_num_threads() in (1, 2)
    with zoo.num_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_short_training_learns_and_caches_in_the_given_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    entry = dataclasses.replace(zoo.ZOO["tiny_transformer"], epochs=1)
    monkeypatch.setitem(zoo.ZOO, "tiny_transformer", entry)
    rng_before = torch.get_rng_state()
    model, splits, acc = zoo.get_trained(
        "tiny_transformer", cache_dir=tmp_path, progress=False, threads=1
    )
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert acc > 40.0  # chance is 10 %
    assert not model.training
    assert acc == pytest.approx(zoo.evaluate(model, splits.test))
    (path,) = tmp_path.iterdir()
    assert path == zoo.cache_path("tiny_transformer", cache_dir=tmp_path)
    # the second call loads the cached weights instead of training
    monkeypatch.setattr(zoo, "train", lambda *a, **k: pytest.fail("retrained"))
    again, _, acc_again = zoo.get_trained("tiny_transformer", cache_dir=tmp_path)
    assert acc_again == acc
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


def test_train_on_a_small_subset_beats_chance() -> None:
    train, calib, test = data.digits32()
    subset = data.Splits(
        torch.utils.data.TensorDataset(*(t[:1024] for t in train.tensors)), calib, test
    )
    entry = dataclasses.replace(zoo.ZOO["plain_cnn"], epochs=1, lr=1e-2, batch_size=32)
    torch.manual_seed(0)
    model = zoo.build_model("plain_cnn")
    result = zoo.train(model, entry, subset, progress=False, threads=1)
    assert result.accuracy > 30.0 and result.threads == 1
    assert result.accuracy == pytest.approx(zoo.evaluate(model, test))
