"""IR labels: the CRF wrapper and the fg/bg/ignore combination."""
import numpy as np

from misc.crf import confident_labels, crf_inference_label


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (24, 31, 3), dtype=np.uint8)
    cams = np.zeros((2, 24, 31), np.float32)
    cams[0, 3:12, 4:15] = np.linspace(0.02, 1.0, 11)[None]
    cams[1, 14:22, 18:29] = np.linspace(1.0, 0.02, 11)[None]
    return img, cams, np.array([6, 14])


def test_crf_without_pairwise_keeps_the_labels():
    img, _, _ = _scene()
    labels = np.random.default_rng(1).integers(0, 3, (24, 31))
    out = crf_inference_label(img, labels, 3, gauss_compat=0, bi_compat=0)
    np.testing.assert_array_equal(out, labels)


def test_zero_pairwise_equals_thresholded_argmax():
    img, cams, keys = _scene()
    out = confident_labels(img, cams, keys, 0.30, 0.05, gauss_compat=0, bi_compat=0)
    top, arg = cams.max(0), keys[cams.argmax(0)] + 1
    expect = np.where(top > 0.30, arg, np.where(top > 0.05, 255, 0))
    np.testing.assert_array_equal(out, expect)
    assert {0, 7, 15, 255} == set(np.unique(out))


def test_label_set_with_crf():
    img, cams, keys = _scene(2)
    img.setflags(write=False)  # images read from disk may be read-only
    out = confident_labels(img, cams, keys, 0.30, 0.05)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 7, 15, 255}
    assert (out == 7).sum() > 20 and (out == 0).sum() > 100
