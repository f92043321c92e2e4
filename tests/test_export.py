"""Exports (steerable_sr.export): the three formats run without escnn or steerable_sr and agree with
the network; their metadata travels inside the file; what cannot be exported or loaded is one line.

Tolerance: an export runs the same float32 operations as the network, in another runtime that may
sum in another order: ~1e-7 relative per operation over a few dozen layers, far below
``EXPORT_TOL`` = 1e-5 relative (the bar of the issue), while a wrong weight or layer differs by O(1).
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from steerable_sr import export
from steerable_sr.export import EXPORT_TOL, FORMATS, load_for_inference, write_export
from steerable_sr.io import to_json
from steerable_sr.metrics import relative_l2
from steerable_sr.training import SuperResolutionModule

pytestmark = pytest.mark.usefixtures("single_thread")

SUFFIXES = list(FORMATS)

#: Loads an export with torch / onnxruntime alone, in a process where importing escnn or
#: steerable_sr fails; runs it on the tensors of argv[2], saves the outputs to argv[3] and prints
#: the metadata found inside the file.
PLAIN_LOADER = textwrap.dedent("""
    import json, sys
    sys.modules["escnn"] = None          # any import of escnn or of steerable_sr now fails
    sys.modules["steerable_sr"] = None
    import torch

    path, inputs, outputs = sys.argv[1:4]
    xs = torch.load(inputs)
    if path.endswith(".pt2"):
        extra = {"metadata.json": ""}
        net = torch.export.load(path, extra_files=extra).module()
        run, meta = net, extra["metadata.json"]
    elif path.endswith(".onnx"):
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map["metadata.json"]
        run = lambda x: torch.from_numpy(session.run(None, {"low_res": x.numpy()})[0])
    else:
        extra = {"metadata.json": ""}
        run = torch.jit.load(path, _extra_files=extra)
        meta = extra["metadata.json"]
    with torch.no_grad():
        torch.save([run(x) for x in xs], outputs)
    print(json.dumps(json.loads(meta)))
""")


@pytest.fixture(scope="module")
def module():
    """A tiny relaxed steerable module (hidden 1) with batch-norm statistics from one training-mode
    pass, a training input size of 4 and a velocity scale of 2.5, in eval mode."""
    torch.manual_seed(0)
    module = SuperResolutionModule(kind="rsteer", model_overrides={"hidden": 1})
    with torch.no_grad():
        module.model(2 * torch.randn(2, 9, 4, 4, 4) + 1)
    module.train_input_size.fill_(4)
    module.velocity_scale.fill_(2.5)
    return module.eval()


@pytest.fixture(scope="module")
def exports(module, tmp_path_factory):
    """``{suffix: (path, metadata returned, warnings raised while writing)}`` for every format."""
    root = tmp_path_factory.mktemp("exports")
    written = {}
    for suffix in SUFFIXES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            meta = write_export(module, root / f"model{suffix}", source="tiny.ckpt",
                                datamodule={"path": "tiny.h5", "crop": None, "batch_size": 2})
        written[suffix] = (root / f"model{suffix}", meta, caught)
    return written


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_export_agrees_with_the_network_in_a_process_without_escnn_or_steerable_sr(module, exports, tmp_path,
                                                                                        suffix):
    path, meta, _ = exports[suffix]
    xs = [torch.randn(2, 9, 4, 4, 4), torch.randn(1, 9, 6, 6, 6)]  # the training size and another one
    torch.save(xs, tmp_path / "x.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOADER, str(path), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        for x, y in zip(xs, torch.load(tmp_path / "y.pt")):
            n = 4 * x.shape[-1]
            assert y.shape == (x.shape[0], 3, n, n, n)
            assert relative_l2(y, module.model(x)) < EXPORT_TOL
    assert json.loads(proc.stdout)["kind"] == "rsteer"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_metadata_round_trips_inside_the_file(exports, suffix):
    path, meta, _ = exports[suffix]
    loaded = load_for_inference(path)
    assert loaded.meta == json.loads(to_json(meta))
    assert (loaded.frames, loaded.upscale, loaded.input_size, loaded.velocity_scale) == (3, 4, 4, 2.5)
    assert loaded.meta["datamodule"] == {"path": "tiny.h5", "crop": None, "batch_size": 2}
    assert loaded.meta["file_format"] == loaded.source == FORMATS[suffix].name
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f"model{s}" for s in SUFFIXES)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_inference_in_physical_units_is_the_same_in_every_format(module, exports, suffix):
    windows = 2.5 * torch.randn(3, 9, 5, 5, 5)
    with torch.no_grad():
        expected = module.model(windows / 2.5) * 2.5
    assert relative_l2(load_for_inference(exports[suffix][0])(windows, batch_size=2), expected) < EXPORT_TOL


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_writing_and_loading_raise_no_deprecation_warning(exports, suffix):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_for_inference(exports[suffix][0]).net(torch.randn(1, 9, 4, 4, 4))
    deprecations = [str(w.message) for w in exports[suffix][2] + caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []


def test_an_unknown_suffix_is_refused_before_any_work(module, tmp_path):
    with pytest.raises(ValueError, match=r"model\.h5: unknown export format '\.h5'; known: \.pt2 \(ExportedProgram\), "
                                         r"\.onnx \(ONNX\), \.pt \(TorchScript\)"):
        write_export(module, tmp_path / "model.h5", source="tiny.ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_export_that_disagrees_with_the_network_is_not_written(module, tmp_path, monkeypatch, suffix):
    fmt = FORMATS[suffix]

    def load_perturbed(path, device):
        net, meta = fmt.load(path, device)
        return (lambda x: net(x) * (1 + 10 * EXPORT_TOL)), meta

    monkeypatch.setitem(FORMATS, suffix, dataclasses.replace(fmt, load=load_perturbed))
    with pytest.raises(ValueError, match=f"the {fmt.name} export disagrees with the network: relative difference "
                                         r"1\.0e-04 > 1e-05 on an input of shape \(1, 9, 5, 5, 5\); nothing written"):
        write_export(module, tmp_path / f"model{suffix}", source="tiny.ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix, message", [(".pt2", "truncated or damaged file: not a complete .pt2 archive"),
                                             (".onnx", "not a loadable ONNX model")])
def test_a_truncated_export_is_one_line(exports, tmp_path, suffix, message):
    data = exports[suffix][0].read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cut{suffix}: {message}") as info:
        load_for_inference(tmp_path / f"cut{suffix}")
    assert "\n" not in str(info.value)


def test_onnx_without_its_packages_is_one_line(module, exports, tmp_path, monkeypatch):
    find_spec = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else
                        find_spec(name))
    with pytest.raises(export.MissingPackageError, match=r"\.onnx needs the package\(s\) onnxruntime, not installed "
                                                         r"here: pip install 'steerable_sr\[export\]'"):
        write_export(module, tmp_path / "model.onnx", source="tiny.ckpt")
    with pytest.raises(export.MissingPackageError, match="onnxruntime, not installed"):
        load_for_inference(exports[".onnx"][0])
    assert list(tmp_path.iterdir()) == []
