"""Training sets saved with Hugging Face `datasets` (Dataset/DatasetDict.save_to_disk): columns,
class names from the ClassLabel feature, row order as the stable item index."""
import numpy as np
import pytest
from PIL import Image

from mucs.sources.data import is_hf_dataset, load_dataset
from mucs.errors import MucsError
from conftest import need

try:
    import datasets
except ImportError:
    need(False, "the datasets package is not installed")


def _rows(n=6, size=8, mode="L", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    arrays = [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(n)]
    return arrays, [Image.fromarray(a, mode) for a in arrays]


@pytest.fixture()
def hf_dir(tmp_path):
    """6 grayscale 8x8 images with a ClassLabel column, a second Image column and an int column."""
    arrays, ims = _rows()
    _, masks = _rows(seed=1)
    feats = datasets.Features({"id": datasets.Value("int64"), "mask": datasets.Image(), "img": datasets.Image(),
                               "fine": datasets.Value("int64"),
                               "label": datasets.ClassLabel(names=["shirt", "shoe", "bag"])})
    # the first Image feature is "mask": it is the default image column
    ds = datasets.Dataset.from_dict({"id": list(range(6)), "mask": ims, "img": masks, "fine": [5, 4, 3, 2, 1, 0],
                                     "label": [0, 1, 2, 0, 1, 2]}, features=feats)
    path = tmp_path / "hf"
    ds.save_to_disk(str(path))
    return str(path), arrays


def test_saved_dataset_loads_with_default_columns(hf_dir):
    path, arrays = hf_dir
    assert is_hf_dataset(path)
    d = load_dataset(path)
    assert d.images.shape == (6, 8, 8, 1) and d.images.dtype == np.uint8
    for i, a in enumerate(arrays):   # item index = row of the saved dataset
        assert np.array_equal(d.images[i, ..., 0], a)
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert d.class_names == ["shirt", "shoe", "bag"] and d.num_classes == 3
    assert d.class_name(1) == "shoe"
    assert load_dataset(path).fingerprint() == d.fingerprint()


def test_columns_can_be_chosen(hf_dir):
    path, _ = hf_dir
    other = _rows(seed=1)[0]
    d = load_dataset(path, image_column="img", label_column="fine")
    assert np.array_equal(d.images[0, ..., 0], other[0])
    assert d.labels.tolist() == [5, 4, 3, 2, 1, 0] and d.class_names is None
    with pytest.raises(MucsError, match="no column 'nope'"):
        load_dataset(path, image_column="nope")
    with pytest.raises(MucsError, match="no column 'nope'"):
        load_dataset(path, label_column="nope")


def test_dataset_dict_uses_train_split_and_rgb(tmp_path):
    arrays, ims = _rows(n=4, mode="RGB")
    train = datasets.Dataset.from_dict({"image": ims}, features=datasets.Features({"image": datasets.Image()}))
    test = datasets.Dataset.from_dict({"image": ims[:1]}, features=datasets.Features({"image": datasets.Image()}))
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    d = load_dataset(str(path))
    assert d.images.shape == (4, 8, 8, 3) and d.labels is None and d.num_classes is None
    assert np.array_equal(d.images[2], arrays[2])


def test_dataset_dict_without_train_split_is_a_clear_error(tmp_path):
    _, ims = _rows(n=2)
    one = datasets.Dataset.from_dict({"image": ims}, features=datasets.Features({"image": datasets.Image()}))
    path = tmp_path / "dd"
    datasets.DatasetDict({"a": one, "b": one}).save_to_disk(str(path))
    with pytest.raises(MucsError, match="none is 'train'"):
        load_dataset(str(path))


def test_no_image_feature_and_flags_on_other_sources(tmp_path, tiny_npz):
    path = tmp_path / "noimg"
    datasets.Dataset.from_dict({"x": [1, 2]}).save_to_disk(str(path))
    with pytest.raises(MucsError, match="no Image feature"):
        load_dataset(str(path))
    with pytest.raises(MucsError, match="Hugging Face datasets"):
        load_dataset(tiny_npz, image_column="img")


def test_cli_attribute_on_a_saved_dataset(tiny_model_dir, tiny_npz, tmp_path, monkeypatch):
    """The tiny model's own training set, as a Hugging Face dataset: the CLI gives the same top-k."""
    import json

    from mucs.__main__ import main
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("mucs.settings.Settings.null_batches", 2)
    monkeypatch.setattr("mucs.settings.Settings.null_batch_size", 16)
    with np.load(tiny_npz) as z:
        images, labels, names = z["images"], z["labels"], [str(s) for s in z["class_names"]]
    feats = datasets.Features({"picture": datasets.Image(), "cls": datasets.ClassLabel(names=names)})
    hf = tmp_path / "hf"
    datasets.Dataset.from_dict({"picture": [Image.fromarray(a) for a in images], "cls": labels.tolist()},
                               features=feats).save_to_disk(str(hf))
    query = tmp_path / "q.png"
    Image.fromarray(images[3]).save(query)
    fast = ["--noises", "4", "--max-steps", "2", "--batch-size", "16", "--top-k", "4", "--seed", "0",
            "--image", str(query), "--label", str(int(labels[3])), "--model", tiny_model_dir]
    assert main(["attribute", "--data", str(hf), "--out", str(tmp_path / "a")] + fast) == 0
    assert main(["attribute", "--data", tiny_npz, "--out", str(tmp_path / "b")] + fast) == 0
    a, b = (json.load(open(tmp_path / x / "result.json")) for x in "ab")
    assert a["top_k"] == b["top_k"]


@pytest.mark.parametrize("dtype,labels,expect", [("float64", [0, 1.5, 2, 0, 1, 2], "found 1.5")])
def test_float_or_huge_labels_are_refused_not_cast(dtype, labels, expect, tiny_model_dir, tmp_path, capsys):
    """Issue 21, point 6: a float label is not truncated to an integer: one error line, nothing written
    (uint64 labels above 2^63, which datasets cannot store: tests/test_reliability.py NPZ_BAD)."""
    from mucs.__main__ import main
    _, ims = _rows()
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.Value(dtype)})
    datasets.Dataset.from_dict({"img": ims, "label": np.array(labels, dtype)}, features=feats).save_to_disk(str(tmp_path / "hf"))
    ims[0].save(tmp_path / "q.png")
    out = tmp_path / "run"
    assert main(["attribute", "--model", tiny_model_dir, "--data", str(tmp_path / "hf"), "--label-column", "label",
                 "--image", str(tmp_path / "q.png"), "--label", "0", "--out", str(out), "--noises", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and expect in err[0] and "label column 'label'" in err[0], err
    assert not out.exists()
