"""The per-frame pipeline: normalisation, geometry (stretch/letterbox and back), products, boundary."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD, ClassTable
from liteseg_ros.engines.base import Engine, EngineInfo, EngineOutput
from liteseg_ros.pipeline import Geometry, Pipeline, PipelineConfig, Wants, free_space_boundary

CLASSES = ClassTable.cityscapes()
GROUPS = CLASSES.resolve_groups({"drivable": ["road"], "vehicles": ["car", "bus"]})


class DominantChannelEngine(Engine):
    """A transparent engine: label = index of the strongest RGB channel (0 road, 1 sidewalk, 2 building).

    Lets the geometry tests know the exact label every input pixel must get.
    """

    num_classes = 19
    info = EngineInfo("test", "cpu", "fp32")

    def infer(self, batch, want_confidence=True, want_logits=False):
        std = np.asarray(IMAGENET_STD, np.float32)[None, :, None, None]
        mean = np.asarray(IMAGENET_MEAN, np.float32)[None, :, None, None]
        rgb = batch * std + mean
        label = rgb.argmax(axis=1).astype(np.uint8)
        conf = np.full(label.shape, 200, np.uint8)
        return EngineOutput(label, conf if want_confidence else None)


def blocks(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A BGR image of three vertical bands (red, green, blue) and its exact expected label."""
    img = np.zeros((h, w, 3), np.uint8)
    label = np.zeros((h, w), np.uint8)
    cuts = [0, w // 3, 2 * w // 3, w]
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        img[:, a:b, 2 - k] = 230  # BGR: band 0 red, band 1 green, band 2 blue
        label[:, a:b] = k
    return img, label


def interior(label: np.ndarray, margin: int) -> np.ndarray:
    """Pixels at least `margin` away from a band edge (resampling blurs the edges themselves)."""
    w = label.shape[1]
    cols = np.ones(w, bool)
    for c in (0, w // 3, 2 * w // 3, w):
        cols[max(0, c - margin):c + margin] = False
    return np.broadcast_to(cols, label.shape)


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("size", [(480, 640), (719, 1281), (100, 50)])
def test_label_maps_back_to_the_input_exactly(mode, size):
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(96, 160), resize_mode=mode,
                                                                      mask_groups=GROUPS))
    img, expected = blocks(*size)
    seg = pipe(img)
    assert seg.label.shape == size and seg.label.dtype == np.uint8
    ok = interior(expected, margin=max(2, size[1] // 40))
    assert np.array_equal(seg.label[ok], expected[ok])


def test_letterbox_geometry_is_centred_and_inverts():
    g = Geometry.fit((480, 640), (360, 360), "letterbox")
    top, left, h, w = g.content
    assert (h, w) == (270, 360) and (top, left) == (45, 0)
    net = np.arange(360 * 360, dtype=np.int64).reshape(360, 360)
    assert g.crop(net).shape == (270, 360)
    assert g.output_size("network") == (270, 360)
    assert g.output_size("input") == (480, 640)


def test_letterbox_padding_is_the_mean_colour():
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(64, 64), resize_mode="letterbox"))
    img = np.full((16, 64, 3), 255, np.uint8)
    batch, (g,) = pipe.preprocess([img])
    t, left, h, w = g.content
    assert (h, w) == (16, 64)
    assert np.all(batch[0, :, :t] == 0) and np.all(batch[0, :, t + h:] == 0)


def test_normalisation_matches_the_model_contract():
    """RGB order, /255, ImageNet mean/std, NCHW: what the official network was trained on."""
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(8, 8)))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), np.uint8)
    batch, _ = pipe.preprocess([img], "bgr")
    rgb = img[:, :, ::-1].astype(np.float32) / 255.0
    want = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(batch[0], want, atol=1e-5)
    batch_rgb, _ = pipe.preprocess([np.ascontiguousarray(img[:, :, ::-1])], "rgb")
    np.testing.assert_allclose(batch_rgb, batch, atol=1e-6)


def test_products_are_consistent_with_the_label():
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(48, 64), mask_groups=GROUPS,
                                                                      overlay_alpha=0.5))
    img, _ = blocks(120, 160)
    seg = pipe(img)
    assert np.array_equal(seg.color, CLASSES.palette_lut()[seg.label])
    assert np.array_equal(seg.masks["drivable"] == 255, seg.label == 0)
    assert not seg.masks["vehicles"].any()
    palette_bgr = CLASSES.palette_lut(bgr=True)[seg.label]
    blend = (img.astype(np.float32) * 0.5 + palette_bgr * 0.5)
    assert np.abs(seg.overlay.astype(np.float32) - blend).max() <= 1.0
    assert seg.confidence.shape == seg.label.shape and (seg.confidence == 200).all()
    assert seg.boundary is not None and len(seg.boundary.row) == 160
    assert set(seg.timings) == {"preprocess", "infer", "postprocess"}


def test_wants_skip_unrequested_products_and_network_resolution():
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(48, 64), mask_groups=GROUPS,
                                                                      output_resolution="network"))
    img, _ = blocks(120, 160)
    seg = pipe(img, wants=Wants.only_label())
    assert seg.label.shape == (48, 64)
    assert seg.color is None and seg.overlay is None and seg.confidence is None and not seg.masks
    assert seg.boundary is None


def test_live_update_changes_threshold_and_groups():
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(48, 64), mask_groups=GROUPS))
    img, _ = blocks(48, 64)
    pipe.update(confidence_threshold=0.9)  # engine says 200/255 = 0.78 everywhere
    assert (pipe(img).label == 255).all()
    pipe.update(confidence_threshold=0.0, mask_groups=CLASSES.resolve_groups({"built": ["building"]}))
    seg = pipe(img)
    assert list(seg.masks) == ["built"] and seg.boundary is None
    with pytest.raises(ValueError, match="overlay_alpha"):
        pipe.update(overlay_alpha=2.0)


def test_free_space_boundary():
    m = np.zeros((6, 4), bool)
    m[3:, 0] = True          # drivable from row 3 down
    m[:, 1] = True           # all drivable
    m[1:3, 2] = True         # drivable but not touching the bottom
    m[5, 3] = True           # only the bottom row
    b = free_space_boundary(m)
    assert b.row.tolist() == [3, 0, -1, 5]
    assert b.drivable_fraction == pytest.approx(m.mean())


def test_batch_of_different_sizes():
    pipe = Pipeline(DominantChannelEngine(), CLASSES, PipelineConfig(network_size=(48, 64), mask_groups=GROUPS))
    imgs = [blocks(120, 160)[0], blocks(33, 77)[0], blocks(480, 640)[0]]
    segs = pipe.run(imgs)
    assert [s.label.shape for s in segs] == [(120, 160), (33, 77), (480, 640)]


def test_real_model_through_the_pipeline_equals_model_argmax():
    """Pipeline + the default engine on a real (random-weight) LiteSeg == argmax of the model's logits."""
    from liteseg_ros.engines import create_engine
    from liteseg_ros.model import LiteSeg

    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2", 19).eval()
    engine = create_engine(model, backend="pytorch", device="cpu", precision="fp32", input_size=(64, 96),
                           log=lambda s: None)
    pipe = Pipeline(engine, CLASSES, PipelineConfig(network_size=(64, 96), mask_groups=GROUPS))
    img = np.random.default_rng(1).integers(0, 256, (64, 96, 3), np.uint8)
    seg = pipe(img)
    x = torch.from_numpy(pipe.preprocess([img])[0])
    with torch.inference_mode():
        logits = model(x)
    want = logits.argmax(1)[0].numpy().astype(np.uint8)
    assert (seg.label == want).mean() >= 0.999
    conf = (torch.softmax(logits, 1).amax(1)[0].numpy() * 255)
    assert np.abs(seg.confidence.astype(np.float32) - conf).max() <= 1.5


# ------------------------------------------------------------------ exactness of the fast post-processing
def reference_postprocess(pipe, label, confidence, geom, image, color_order="bgr", wants=None, cfg=None):
    """The straightforward definition every fast path must reproduce bit for bit: upsample the label
    first, then colour, mask and scan it at output resolution (the pipeline as it was before it
    worked at network size)."""
    import cv2

    from liteseg_ros.pipeline import Segmentation

    cfg = cfg or pipe.config
    wants = wants or Wants()
    if cfg.confidence_threshold > 0.0 and confidence is not None:
        label = label.copy()
        label[confidence < round(cfg.confidence_threshold * 255)] = pipe.classes.ignore_label
    label = geom.crop(label)
    conf = geom.crop(confidence) if confidence is not None else None
    out_h, out_w = geom.output_size(cfg.output_resolution)
    if label.shape != (out_h, out_w):
        label = cv2.resize(label, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
        if conf is not None and wants.confidence:
            conf = cv2.resize(conf, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    label = np.ascontiguousarray(label)
    seg = Segmentation(label=label, geometry=geom)
    if wants.confidence and conf is not None:
        seg.confidence = np.ascontiguousarray(conf)
    palette_bgr = pipe.classes.palette_lut(bgr=True).reshape(256, 1, 3)
    if wants.color or wants.overlay:
        bgr = cv2.LUT(cv2.cvtColor(label, cv2.COLOR_GRAY2BGR), palette_bgr)
        if wants.color:
            seg.color = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if wants.overlay and image is not None:
            ih, iw = geom.input_size
            if bgr.shape[:2] != (ih, iw):
                bgr = cv2.resize(bgr, (iw, ih), interpolation=cv2.INTER_NEAREST)
            src = image if color_order == "bgr" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            seg.overlay = cv2.addWeighted(src, 1.0 - cfg.overlay_alpha, bgr, cfg.overlay_alpha, 0.0)
    groups = {g: pipe.classes.group_lut(ids) for g, ids in cfg.mask_groups.items()}
    names = groups.keys() if wants.masks is None else [g for g in groups if g in wants.masks]
    for g in names:
        seg.masks[g] = cv2.LUT(label, groups[g])
    if wants.boundary and "drivable" in groups:
        seg.boundary = free_space_boundary(cv2.LUT(label, groups["drivable"]))
    return seg


def scene_label(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Blobs of classes 0..18 (road at the bottom, some 255) so boundaries have runs and gaps."""
    import cv2

    coarse = rng.integers(0, 19, (max(2, h // 6), max(2, w // 6)), dtype=np.uint8)
    lab = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_NEAREST)
    lab[h * 2 // 3:][rng.random((h - h * 2 // 3, w)) < 0.7] = 0  # mostly road near the bottom
    lab[rng.random((h, w)) < 0.02] = 255
    return lab


def assert_same_products(got, want):
    assert np.array_equal(got.label, want.label)
    for name in ("confidence", "color", "overlay"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b), name
    assert list(got.masks) == list(want.masks)
    for g in want.masks:
        assert np.array_equal(got.masks[g], want.masks[g]), g
    assert (got.boundary is None) == (want.boundary is None)
    if want.boundary is not None:
        assert got.boundary.row.dtype == want.boundary.row.dtype
        assert np.array_equal(got.boundary.row, want.boundary.row)
        assert got.boundary.drivable_fraction == want.boundary.drivable_fraction  # bit-identical float


EXACT_CASES = [  # (network (h, w), input (h, w), resize mode, output resolution)
    ((36, 64), (108, 192), "stretch", "input"),      # integer 3x, as 360x640 -> 1080p
    ((36, 64), (72, 128), "stretch", "input"),       # 2x, as 720p
    ((36, 64), (102, 205), "stretch", "input"),      # 2048x1024-like non-integer
    ((36, 64), (37, 65), "stretch", "input"),        # barely larger
    ((36, 64), (20, 30), "stretch", "input"),        # a camera smaller than the network (downsample)
    ((36, 64), (719, 1281), "letterbox", "input"),
    ((48, 48), (90, 160), "letterbox", "network"),
    ((36, 64), (36, 64), "stretch", "input"),        # camera = network: nothing resampled
]


@pytest.mark.parametrize("net,size,mode,res", EXACT_CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_postprocess_is_bit_identical_to_the_full_resolution_definition(net, size, mode, res, threshold):
    rng = np.random.default_rng(hash((net, size, mode, res)) % 2**32)
    groups = CLASSES.resolve_groups({"drivable": ["road", "sidewalk"], "vehicles": ["car", "bus"]})
    cfg = PipelineConfig(network_size=net, resize_mode=mode, output_resolution=res, mask_groups=groups,
                         overlay_alpha=0.37, confidence_threshold=threshold)
    pipe = Pipeline(DominantChannelEngine(), CLASSES, cfg)
    geom = Geometry.fit(size, net, mode)
    label = scene_label(*net, rng)
    conf = rng.integers(0, 256, net, dtype=np.uint8)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for order in ("bgr", "rgb"):
        for wants in (Wants.all(), Wants(color=False, masks=frozenset()), Wants(overlay=False, confidence=False)):
            got = pipe.postprocess(label, conf, geom, img, order, wants)
            want = reference_postprocess(pipe, label, conf, geom, img, order, wants)
            assert_same_products(got, want)


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_camera_resolution_products_equal_the_reference_at_1080p(threshold):
    """The real sizes (360x640 network, 1920x1080 camera, every output, both colour orders): the fast
    path (column step, row copies, products made on several threads) gives the reference's bytes,
    and so does the same path on one thread."""
    import cv2

    rng = np.random.default_rng(1080)
    net, size = (360, 640), (1080, 1920)
    groups = CLASSES.resolve_groups({"drivable": ["road"], "walkable": ["sidewalk"], "dynamic": ["car", "person"]})
    cfg = PipelineConfig(network_size=net, mask_groups=groups, overlay_alpha=0.45, confidence_threshold=threshold)
    pipe = Pipeline(DominantChannelEngine(), CLASSES, cfg)
    geom = Geometry.fit(size, net, "stretch")
    label = scene_label(*net, rng)
    conf = rng.integers(0, 256, net, dtype=np.uint8)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    threads = cv2.getNumThreads()
    for order in ("bgr", "rgb"):
        want = reference_postprocess(pipe, label, conf, geom, img, order, Wants.all())
        assert want.label.shape == size and want.overlay.shape == (*size, 3) and len(want.masks) == 3
        assert_same_products(pipe.postprocess(label, conf, geom, img, order, Wants.all()), want)
        try:
            cv2.setNumThreads(1)
            assert_same_products(pipe.postprocess(label, conf, geom, img, order, Wants.all()), want)
        finally:
            cv2.setNumThreads(threads)
    target = Wants(confidence=False, color=False, masks=frozenset({"drivable"}), boundary=False)
    assert_same_products(pipe.postprocess(label, conf, geom, img, "bgr", target),
                         reference_postprocess(pipe, label, conf, geom, img, "bgr", target))


def test_a_failing_product_raises_after_every_running_job_has_finished():
    """Post-processing jobs run on several threads; an error in one reaches the caller, and only once
    no other job is still writing (nothing of the frame is being made after it returns)."""
    import time

    import cv2

    from liteseg_ros import pipeline

    started, finished = [], []

    def slow(i):
        started.append(i)
        time.sleep(0.1)
        finished.append(i)

    def bad():
        time.sleep(0.01)  # the slow jobs are under way on the other threads
        raise ValueError("broken job")

    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        with pytest.raises(ValueError, match="broken job"):
            pipeline._share_out([lambda: slow(0), lambda: slow(1), bad])
        assert len(started) >= 1 and sorted(finished) == sorted(started)
    finally:
        cv2.setNumThreads(threads)


@pytest.mark.parametrize("src,dst", [((36, 64), (108, 192)), ((360, 640), (1080, 1920)), ((360, 640), (1024, 2048)),
                                     ((45, 80), (31, 59)), ((7, 9), (7, 9)), ((360, 640), (721, 1283))])
def test_nearest_maps_reproduce_opencv_nearest_resize(src, dst):
    import cv2

    from liteseg_ros.pipeline import nearest_maps

    rows, cols = nearest_maps(src, dst)
    a = np.random.default_rng(0).integers(0, 256, src, dtype=np.uint8)
    assert np.array_equal(a[rows][:, cols], cv2.resize(a, dst[::-1], interpolation=cv2.INTER_NEAREST))
    four = np.random.default_rng(1).integers(0, 256, (*src, 4), dtype=np.uint8)  # the BGRA colour path
    assert np.array_equal(four[rows][:, cols], cv2.resize(four, dst[::-1], interpolation=cv2.INTER_NEAREST))


# ------------------------------------------------------------------ the torch stages (GPU path; here on the CPU)
class DominantChannelTorchEngine(DominantChannelEngine):
    """The transparent engine on torch tensors, so the torch stages run end to end on the CPU device."""

    tensor_device = torch.device("cpu")

    def infer_tensors(self, batch, want_confidence=True):
        out = self.infer(batch.numpy(), want_confidence)
        conf = torch.from_numpy(out.confidence) if out.confidence is not None else None
        return torch.from_numpy(out.label), conf


@pytest.mark.parametrize("net,size,mode,res", EXACT_CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_torch_postprocess_matches_the_numpy_path(net, size, mode, res, threshold):
    """Same network-size label/confidence in: label, colour, masks, boundary bit-identical; overlay
    and confidence within 1 (float blend / bilinear against OpenCV's fixed point)."""
    from liteseg_ros.pipeline_torch import TorchStages

    rng = np.random.default_rng(hash((net, size, mode, res, 1)) % 2**32)
    groups = CLASSES.resolve_groups({"drivable": ["road", "sidewalk"], "vehicles": ["car", "bus"]})
    cfg = PipelineConfig(network_size=net, resize_mode=mode, output_resolution=res, mask_groups=groups,
                         overlay_alpha=0.37, confidence_threshold=threshold)
    pipe = Pipeline(DominantChannelEngine(), CLASSES, cfg)
    stages = TorchStages("cpu", CLASSES)
    tst = stages.state(cfg, pipe.snapshot.scale, pipe.snapshot.bias)
    geom = Geometry.fit(size, net, mode)
    label, conf = scene_label(*net, rng), rng.integers(0, 256, net, dtype=np.uint8)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    for order in ("bgr", "rgb"):
        for wants in (Wants.all(), Wants(color=False, masks=frozenset()), Wants(overlay=False, confidence=False)):
            want = pipe.postprocess(label, conf, geom, img, order, wants)
            prod = stages.postprocess(torch.from_numpy(label), torch.from_numpy(conf), geom, torch.from_numpy(img),
                                      order, wants, cfg, tst, CLASSES.ignore_label)
            got = stages.segmentation(stages.download([prod])[0], geom, cfg)
            for name in ("overlay", "confidence"):
                a, b = getattr(got, name), getattr(want, name)
                assert (a is None) == (b is None)
                if a is not None:
                    assert a.shape == b.shape and a.dtype == b.dtype
                    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, name
                    setattr(got, name, b)  # within rounding: compare the rest exactly
            assert_same_products(got, want)


@pytest.mark.parametrize("size,mode", [((108, 192), "stretch"), ((72, 128), "stretch"), ((36, 64), "stretch"),
                                       ((72, 256), "letterbox")])
def test_torch_preprocess_matches_the_numpy_path(size, mode):
    """Integer scale factors and no resize: the normalised batch equals OpenCV's to float rounding
    (resized pixels may be 1 grey level apart where OpenCV's rounding differs)."""
    from liteseg_ros.pipeline_torch import TorchStages

    cfg = PipelineConfig(network_size=(36, 64), resize_mode=mode)
    pipe = Pipeline(DominantChannelEngine(), CLASSES, cfg)
    stages = TorchStages("cpu", CLASSES)
    tst = stages.state(cfg, pipe.snapshot.scale, pipe.snapshot.bias)
    img = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    for order in ("bgr", "rgb"):
        want, wg = pipe.preprocess([img], order)
        got, gg = stages.preprocess(stages.upload([img]), order, cfg, tst)
        assert gg == wg
        step = 1.0 / (255.0 * min(IMAGENET_STD)) + 1e-5  # one grey level after normalisation
        diff = np.abs(got.numpy() - want)
        assert diff.max() <= step
        if size == (36, 64):
            assert diff.max() <= 1e-6  # no resize: the same two float32 steps


def test_torch_backend_runs_the_whole_pipeline_and_is_chosen_only_on_cuda():
    img, expected = blocks(108, 192)
    groups = CLASSES.resolve_groups({"drivable": ["road"]})
    cfg = PipelineConfig(network_size=(36, 64), mask_groups=groups)
    assert Pipeline(DominantChannelTorchEngine(), CLASSES, cfg).backend == "numpy"  # auto: CPU tensors -> numpy
    tp = Pipeline(DominantChannelTorchEngine(), CLASSES, cfg, backend="torch")
    npp = Pipeline(DominantChannelEngine(), CLASSES, cfg)
    (a,), (b,) = tp.run([img]), npp.run([img])
    assert np.array_equal(a.label, b.label) and np.array_equal(a.color, b.color)
    assert np.array_equal(a.masks["drivable"], b.masks["drivable"])
    assert np.array_equal(a.boundary.row, b.boundary.row)
    assert set(a.timings) == {"preprocess", "infer", "postprocess"}
    only = tp(img, wants=Wants.only_label())
    assert only.color is None and only.overlay is None and not only.masks and only.boundary is None
    tp.update(mask_groups=CLASSES.resolve_groups({"built": ["building"]}))
    assert list(tp(img).masks) == ["built"]
    with pytest.raises(ValueError, match="torch tensors"):
        Pipeline(DominantChannelEngine(), CLASSES, cfg, backend="torch")


def test_real_model_torch_backend_on_cpu_equals_numpy_backend():
    """The PyTorch engine's infer_tensors through the torch stages == the numpy path (camera = network
    size: preprocessing identical too, so every product is)."""
    from liteseg_ros.engines import create_engine
    from liteseg_ros.model import LiteSeg

    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2", 19).eval()
    engine = create_engine(model, backend="pytorch", device="cpu", precision="fp32", input_size=(64, 96),
                           log=lambda s: None)
    assert engine.tensor_device == torch.device("cpu")
    cfg = PipelineConfig(network_size=(64, 96), mask_groups=GROUPS)
    img = np.random.default_rng(1).integers(0, 256, (64, 96, 3), np.uint8)
    a = Pipeline(engine, CLASSES, cfg, backend="torch")(img)
    b = Pipeline(engine, CLASSES, cfg, backend="numpy")(img)
    assert (a.label == b.label).mean() >= 0.999  # same input; conv kernels on NCHW vs numpy batch
    assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_stages_on_cuda_match_the_numpy_path():
    from liteseg_ros.pipeline_torch import TorchStages

    net, size = (360, 640), (1080, 1920)
    rng = np.random.default_rng(5)
    groups = CLASSES.resolve_groups({"drivable": ["road", "sidewalk"], "vehicles": ["car", "bus"]})
    cfg = PipelineConfig(network_size=net, mask_groups=groups, overlay_alpha=0.5)
    pipe = Pipeline(DominantChannelEngine(), CLASSES, cfg)
    stages = TorchStages("cuda", CLASSES)
    tst = stages.state(cfg, pipe.snapshot.scale, pipe.snapshot.bias)
    geom = Geometry.fit(size, net, "stretch")
    label, conf = scene_label(*net, rng), rng.integers(0, 256, net, dtype=np.uint8)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    want = pipe.postprocess(label, conf, geom, img)
    (frame,) = stages.upload([img])
    prod = stages.postprocess(torch.from_numpy(label).cuda(), torch.from_numpy(conf).cuda(), geom, frame,
                              "bgr", Wants(), cfg, tst, CLASSES.ignore_label)
    got = stages.segmentation(stages.download([prod])[0], geom, cfg)
    assert np.abs(got.overlay.astype(int) - want.overlay.astype(int)).max() <= 1
    assert np.abs(got.confidence.astype(int) - want.confidence.astype(int)).max() <= 1
    got.overlay, got.confidence = want.overlay, want.confidence
    assert_same_products(got, want)


# ------------------------------------------------------------------ live changes never meet a batch half-way
RACE_A = {"confidence_threshold": 0.0, "overlay_alpha": 0.2,
          "mask_groups": CLASSES.resolve_groups({"drivable": ["road"], "vehicles": ["car", "bus"]})}
RACE_B = {"confidence_threshold": 0.09, "overlay_alpha": 0.8,
          "mask_groups": CLASSES.resolve_groups({"built": ["building", "wall"]})}


def _race_setup(backend: str):
    """A real (random-weight) LiteSeg, four frames, and what each frame gives under config A and B alone."""
    from liteseg_ros.engines import create_engine
    from liteseg_ros.model import LiteSeg

    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2", 19).eval()
    engine = create_engine(model, backend="pytorch", device="cpu", precision="fp32", input_size=(32, 48),
                           log=lambda s: None)
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (64, 96, 3), np.uint8) for _ in range(4)]
    base = PipelineConfig(network_size=(32, 48), mask_groups={})
    expected = {}
    for name, cfg in (("A", RACE_A), ("B", RACE_B)):
        fixed = Pipeline(engine, CLASSES, base, backend=backend)
        fixed.update(**cfg)
        expected[name] = [_products(s) for s in fixed.run(frames)]
    for a, b in zip(expected["A"], expected["B"], strict=True):
        assert a != b  # every frame tells the two configs apart (threshold, overlay and masks all differ)
    pipe = Pipeline(engine, CLASSES, base, backend=backend)
    pipe.update(**RACE_A)
    return pipe, frames, expected


def _products(seg) -> tuple:
    return (seg.label.tobytes(), seg.overlay.tobytes(),
            tuple(sorted((g, m.tobytes()) for g, m in seg.masks.items())))


def _config_of(batch, expected) -> str:
    """'A' or 'B' when every frame of ``batch`` is exactly that config's output; fails otherwise."""
    got = [_products(s) for s in batch]
    matches = [name for name, want in expected.items() if got == want]
    per_frame = [[n for n, want in expected.items() if g == want[i]] for i, g in enumerate(got)]
    assert len(matches) == 1, f"a batch mixed configurations (frame -> matching configs: {per_frame})"
    return matches[0]


class _Updater(threading.Thread):
    """Applies the other config when asked and says when it is done: a real second thread, on cue."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.go, self.done, self.applied = pipe, threading.Event(), threading.Event(), []

    def run(self):
        while self.go.wait(10):
            self.go.clear()
            nxt = "B" if not self.applied or self.applied[-1] == "A" else "A"
            self.pipe.update(**(RACE_B if nxt == "B" else RACE_A))
            self.applied.append(nxt)
            self.done.set()

    def change_now(self):
        self.done.clear()
        self.go.set()
        assert self.done.wait(10), "the updater thread did not apply the change"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_live_change_mid_batch_never_mixes_two_configs(backend):
    """A change applied by another thread while a batch runs (between its frames on the numpy path,
    after run() began on the torch path) leaves the batch on the config it started with; the next
    batch gets the new one."""
    pipe, frames, expected = _race_setup(backend)
    updater = _Updater(pipe)
    updater.start()
    fired = []
    if backend == "numpy":
        original = pipe.postprocess

        def postprocess_then_change(*args, **kw):
            out = original(*args, **kw)
            if len(fired) < 1:  # after the first frame of the batch
                fired.append(1)
                updater.change_now()
            return out

        pipe.postprocess = postprocess_then_change
    else:
        original = pipe._run_torch

        def change_then_run(*args, **kw):
            if len(fired) < 1:  # run() has begun: the change lands before the torch stages read anything
                fired.append(1)
                updater.change_now()
            return original(*args, **kw)

        pipe._run_torch = change_then_run
    assert _config_of(pipe.run(frames, wants=Wants.all()), expected) == "A"
    assert fired and updater.applied == ["B"]
    assert _config_of(pipe.run(frames, wants=Wants.all()), expected) == "B"


def test_free_running_live_changes_keep_every_batch_consistent():
    """One thread flips between two configs as fast as it can while another runs batches."""
    pipe, frames, expected = _race_setup("numpy")
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            pipe.update(**RACE_B)
            pipe.update(**RACE_A)

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        seen = [_config_of(pipe.run(frames, wants=Wants.all()), expected) for _ in range(12)]
    finally:
        stop.set()
        t.join(10)
    assert set(seen) <= {"A", "B"}
