"""The steerable-sr command line: fit/validate/test (LightningCLI), DDP, evaluate, export, predict, errors.

Tiny: a 16^3 generated dataset (4^3 -> 16^3), narrow models, two epochs of four steps.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steerable_sr.checkpoint import load_module, read_checkpoint
from steerable_sr.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "default.yaml")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from steerable_sr.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("cli")
    generate_dataset(root / "tiny.h5", n=16, frames=16, spinup=0.5, splits=(0.5, 0.25, 0.25), progress=False)
    return root


def _common(work, save_dir, *extra):
    return ["--config", CONFIG, "--data.path", str(work / "tiny.h5"), "--data.crop", "null",
            "--data.batch_size", "2", "--data.crops_per_window", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
            "--trainer.logger.init_args.save_dir", str(save_dir), *extra]


def _fit(work, name, kind, overrides, epochs=2, *extra):
    save_dir = work / name
    rc = main(["fit", *_common(work, save_dir, "--model.kind", kind, "--model.model_overrides", overrides,
                               "--trainer.max_epochs", str(epochs), *extra)])
    assert rc == 0
    return save_dir / "default" / "version_0"


@pytest.fixture(scope="module")
def cnn_run(work):
    return _fit(work, "cnn_run", "cnn", '{"hidden": 2}')


@pytest.fixture(scope="module")
def relaxed_run(work):
    return _fit(work, "relaxed_run", "rsteer", '{"hidden": 1}', 1, "--model.penalty_weight", "0.01")


def _cli_cmd():
    exe = Path(sys.executable).with_name("steerable-sr")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "steerable_sr.cli"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ------------------------------------------------------------------------------------------------


def test_fit_writes_best_and_last_checkpoints_and_csv_log(cnn_run):
    ckpts = sorted(p.name for p in (cnn_run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert (cnn_run / "metrics.csv").is_file() and (cnn_run / "config.yaml").is_file()
    header = (cnn_run / "metrics.csv").read_text().splitlines()[0]
    for key in ("val/mae", "val/trilinear_mae", "val/div", "val/div_true", "val/spec_err", "val/equiv_err"):
        assert key in header


def test_validate_and_test_subcommands(work, cnn_run, capsys):
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    # the model section comes from the checkpoint (config default kind rsteer is not an explicit request)
    assert main(["validate", *_common(work, work / "val_logs"), "--ckpt_path", ckpt]) == 0
    assert main(["test", *_common(work, work / "test_logs"), "--ckpt_path", ckpt]) == 0
    out = capsys.readouterr().out
    assert "test/mae" in out and "test/trilinear_mae" in out and "test/equiv_err" in out


def test_resume_from_checkpoint_via_cli(work, cnn_run):
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    rc = main(["fit", *_common(work, work / "resume_logs", "--trainer.max_epochs", "3"), "--ckpt_path", ckpt])
    assert rc == 0
    state = read_checkpoint(work / "resume_logs" / "default" / "version_0" / "checkpoints" / "last.ckpt")
    assert state["epoch"] == 2 and state["hyper_parameters"]["kind"] == "cnn"


def test_ddp_two_processes_on_cpu(work):
    save_dir = work / "ddp"
    cmd = _cli_cmd() + ["fit", *_common(work, save_dir, "--model.kind", "cnn", "--model.model_overrides",
                                        '{"hidden": 2}', "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
                                        "--trainer.strategy", "ddp", "--trainer.devices", "2")]
    proc = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr and "All distributed processes registered" in proc.stderr
    assert "Starting with 2 processes" in proc.stderr
    ckpt = save_dir / "default" / "version_0" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(ckpt)
    assert state["global_step"] == 2  # 8 samples, batch 2, split over 2 processes


def test_evaluate_writes_report_with_symmetry(work, relaxed_run, capsys):
    out = work / "report"
    ckpt = str(relaxed_run / "checkpoints" / "last.ckpt")
    assert main(["evaluate", ckpt, "--data", str(work / "tiny.h5"), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert {"metrics.json", "metrics.md", "spectra.png", "slice.png", "symmetry.md"} <= set(names)
    data = json.loads((out / "metrics.json").read_text())
    assert data["info"]["kind"] == "rsteer"
    assert {"model", "trilinear", "truth"} <= set(data["metrics"])
    assert data["equivariance"]["elements"] == 48
    assert set(data["spectra"]) == {"truth", "prediction", "trilinear", "input"}
    assert (out / "spectra.png").read_bytes()[:4] == b"\x89PNG"
    assert "| MAE |" in (out / "metrics.md").read_text()
    # an existing report is not overwritten without --overwrite
    before = (out / "metrics.json").read_text()
    assert main(["evaluate", ckpt, "--data", str(work / "tiny.h5"), "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before


EXPORT_SUFFIXES = [".pt2", ".onnx", ".pt"]


@pytest.fixture(scope="module")
def relaxed_exports(work, relaxed_run):
    """The relaxed run's last checkpoint exported by the command line in every format, into ``work/export``."""
    ckpt = str(relaxed_run / "checkpoints" / "last.ckpt")
    for suffix in EXPORT_SUFFIXES:
        assert main(["export", ckpt, str(work / "export" / f"rsteer{suffix}")]) == 0
    return work / "export"


def test_export_writes_one_file_per_format_with_the_metadata_inside(work, relaxed_run, relaxed_exports):
    from steerable_sr.export import EXPORT_TOL, load_for_inference
    from steerable_sr.metrics import relative_l2

    # nothing beside the exports: no metadata file that two formats of one name could share
    assert sorted(p.name for p in relaxed_exports.iterdir()) == ["rsteer.onnx", "rsteer.pt", "rsteer.pt2"]
    module = load_module(relaxed_run / "checkpoints" / "last.ckpt")
    x = torch.randn(2, 9, 4, 4, 4)
    with torch.no_grad():
        expected = module(x)
    for suffix in EXPORT_SUFFIXES:
        model = load_for_inference(relaxed_exports / f"rsteer{suffix}")
        meta = model.meta
        assert meta["kind"] == "rsteer" and meta["frames"] == 3 and meta["upscale"] == 4 and meta["input_size"] == 4
        assert meta["datamodule"]["path"] == str(work / "tiny.h5") and meta["velocity_scale"] == module.velocity_scale
        with torch.no_grad():
            assert relative_l2(model.net(x), expected) < EXPORT_TOL


def test_export_to_an_unknown_suffix_is_one_line(work, relaxed_run, capsys):
    assert main(["export", str(relaxed_run / "checkpoints" / "last.ckpt"), str(work / "rsteer.h5")]) == 1
    assert capsys.readouterr().err == ("steerable-sr: error: " + str(work / "rsteer.h5") + ": unknown export format "
                                       "'.h5'; known: .pt2 (ExportedProgram), .onnx (ONNX), .pt (TorchScript)\n")
    assert not (work / "rsteer.h5").exists()


@pytest.fixture(scope="module")
def relaxed_report(work, relaxed_run):
    """The evaluation report of the relaxed run's last checkpoint on the test split."""
    out = work / "relaxed_report"
    assert main(["evaluate", str(relaxed_run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("suffix", EXPORT_SUFFIXES)
def test_evaluate_takes_every_export_format(work, relaxed_exports, relaxed_report, suffix):
    out = work / f"report{suffix.replace('.', '_')}"
    assert main(["evaluate", str(relaxed_exports / f"rsteer{suffix}"), "--out", str(out)]) == 0  # data recorded
    data = json.loads((out / "metrics.json").read_text())
    for name in ("model", "trilinear", "truth"):
        assert data["metrics"][name] == pytest.approx(relaxed_report["metrics"][name], rel=1e-5)
    assert data["equivariance"]["max"] == pytest.approx(relaxed_report["equivariance"]["max"], rel=1e-4, abs=1e-6)
    # an export holds no relaxed weights: no symmetry report, and the report says so
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "slice.png", "spectra.png"]
    assert "**symmetry**: not reported: an export holds no relaxed weights" in (out / "metrics.md").read_text()


@pytest.mark.parametrize("suffix", EXPORT_SUFFIXES)
def test_predict_takes_every_export_format(work, relaxed_run, relaxed_exports, suffix):
    from steerable_sr.data.dataset import downsample, load_generated
    from steerable_sr.export import EXPORT_TOL
    from steerable_sr.metrics import relative_l2

    d = work / f"predict{suffix.replace('.', '_')}"
    d.mkdir()
    torch.save(downsample(load_generated(work / "tiny.h5")["velocity"][:4]), d / "lr.pt")
    assert main(["predict", str(relaxed_run / "checkpoints" / "last.ckpt"), str(d / "lr.pt"), str(d / "a.pt")]) == 0
    assert main(["predict", str(relaxed_exports / f"rsteer{suffix}"), str(d / "lr.pt"), str(d / "b.pt")]) == 0
    a, b = torch.load(d / "a.pt"), torch.load(d / "b.pt")
    assert a.shape == (2, 3, 16, 16, 16)
    assert relative_l2(b, a) < EXPORT_TOL


def test_predict_jhtdb_file_with_checkpoint_and_export(work, cnn_run):
    import h5py

    from steerable_sr.data.dataset import downsample, load_generated
    from steerable_sr.data.jhtdb import read_jhtdb, save_jhtdb

    d = work / "predict"
    d.mkdir()
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    velocity = load_generated(work / "tiny.h5")["velocity"][:5]
    save_jhtdb(d / "hr.h5", velocity, start=7)
    save_jhtdb(d / "lr.h5", downsample(velocity), start=7)
    torch.save(downsample(velocity), d / "lr.pt")
    assert main(["export", ckpt, str(d / "cnn.pt")]) == 0

    assert main(["predict", ckpt, str(d / "hr.h5"), str(d / "a.h5"), "--downsample"]) == 0
    assert main(["predict", str(d / "cnn.pt"), str(d / "lr.h5"), str(d / "b.h5")]) == 0
    assert main(["predict", str(d / "cnn.pt"), str(d / "lr.pt"), str(d / "c.pt")]) == 0
    a, b = read_jhtdb(d / "a.h5"), read_jhtdb(d / "b.h5")
    assert a.velocity.shape == (3, 3, 16, 16, 16)  # 5 frames -> 3 windows, middle frames 8, 9, 10
    assert a.times == b.times == [8, 9, 10]
    torch.testing.assert_close(a.velocity, b.velocity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.load(d / "c.pt"), b.velocity, atol=1e-5, rtol=0)
    with h5py.File(d / "a.h5") as f:  # same layout as the input file
        assert sorted(f) == ["Velocity_0008", "Velocity_0009", "Velocity_0010", "xcoor", "ycoor", "zcoor"]
        assert f["Velocity_0008"].shape == (16, 16, 16, 3)
    with h5py.File(d / "hr.h5") as f:
        torch.testing.assert_close(torch.from_numpy(f["xcoor"][()]), torch.from_numpy(read_jhtdb(d / "a.h5").coords[0]).float())
    # the physical units come back: the prediction's scale is the data's, not the normalised one
    ratio = a.velocity.std() / velocity.std()
    assert 0.05 < ratio < 20


# ------------------------------------------------------------------------------------------------
# Bad input: one clear line, exit status != 0, nothing written or overwritten
# ------------------------------------------------------------------------------------------------


def test_bad_config_values(work, capsys):
    rc = main(["fit", *_common(work, work / "bad"), "--model.kind", "transformer"])
    assert rc == 2
    assert "model.kind" in capsys.readouterr().err
    rc = main(["fit", *_common(work, work / "bad"), "--model.lr", "-1"])
    assert rc == 1
    assert "lr must be > 0" in capsys.readouterr().err
    rc = main(["fit", *_common(work, work / "bad"), "--data.batch_size", "many"])
    assert rc == 2
    assert not (work / "bad").exists()


def test_missing_data_path(work, capsys):
    rc = main(["fit", *_common(work, work / "bad2"), "--data.path", str(work / "nope.h5")])
    assert rc == 1
    assert "data path not found" in capsys.readouterr().err
    assert not (work / "bad2").exists()


def test_checkpoint_of_another_kind(work, cnn_run, capsys):
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    rc = main(["test", *_common(work, work / "bad3"), "--model.kind", "gcnn", "--ckpt_path", ckpt])
    assert rc == 1
    assert "checkpoint has 'cnn'" in capsys.readouterr().err
    rc = main(["fit", *_common(work, work / "bad3"), "--ckpt_path", str(work / "missing.ckpt")])
    assert rc == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_predict_wrong_resolution_and_no_overwrite(work, cnn_run, capsys):
    from steerable_sr.data.dataset import load_generated
    from steerable_sr.data.jhtdb import save_jhtdb

    d = work / "bad_predict"
    d.mkdir()
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    save_jhtdb(d / "hr.h5", load_generated(work / "tiny.h5")["velocity"][:3])
    rc = main(["predict", ckpt, str(d / "hr.h5"), str(d / "out.h5")])  # 16^3 given, the model takes 4^3
    assert rc == 1
    assert "does not match the model's training input 4^3" in capsys.readouterr().err
    assert not (d / "out.h5").exists()
    (d / "out.h5").write_text("keep me")
    rc = main(["predict", ckpt, str(d / "hr.h5"), str(d / "out.h5"), "--downsample"])
    assert rc == 1
    assert "exists" in capsys.readouterr().err
    assert (d / "out.h5").read_text() == "keep me"
    rc = main(["predict", str(d / "nope.ckpt"), str(d / "hr.h5"), str(d / "o2.h5")])
    assert rc == 1 and "not found" in capsys.readouterr().err
    rc = main(["predict", ckpt, str(d / "missing.h5"), str(d / "o2.h5")])
    assert rc == 1 and "not found" in capsys.readouterr().err
    rc = main(["export", str(d / "hr.h5"), str(d / "m.pt")])
    assert rc == 1 and "not a" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["hr.h5", "out.h5"]


def test_info_and_help(capsys):
    assert main(["info", "--kind", "cnn", "--input-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "head" in out
    assert main(["info", "--kind", "nope"]) == 1
    assert "unknown model kind" in capsys.readouterr().err
    assert main([]) == 2
    assert "fit" in capsys.readouterr().out
    assert main(["generate", "--help"]) == 0
    assert "--forcing" in capsys.readouterr().out


def test_console_script_exit_status(work):
    proc = subprocess.run(_cli_cmd() + ["predict", "nope.ckpt", "in.h5", "out.h5"], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("steerable-sr: error:")


# ------------------------------------------------------------------------------------------------
# Faults: bad data, devices, outputs that must not replace what the user has
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_data(work):
    """The tiny dataset with a NaN velocity in frame 5 (the train split: fit reads it) and in frame 14
    (the test split: evaluate reads it; crops are read lazily, a frame never read is not seen), and
    the tiny dataset cut to half its bytes."""
    import h5py
    import numpy as np

    data = (work / "tiny.h5").read_bytes()
    (work / "nan.h5").write_bytes(data)
    with h5py.File(work / "nan.h5", "r+") as handle:
        handle["velocity"][5, 1, 2, 3, 4] = np.nan
        handle["velocity"][14, 1, 2, 3, 4] = np.nan
    (work / "cut.h5").write_bytes(data[: len(data) // 2])
    return {"nan": (work / "nan.h5", r"nan.h5:velocity\[(5|14)\]: 1 NaN or Inf value"),
            "truncated": (work / "cut.h5", "cut.h5: not a readable HDF5 file")}


@pytest.mark.parametrize("fault", ["nan", "truncated"])
def test_fit_on_bad_data_fails_with_one_line_and_leaves_no_run_directory(work, bad_data, capsys, fault):
    path, message = bad_data[fault]
    save_dir = work / f"fit_{fault}"
    assert main(["fit", *_common(work, save_dir), "--data.path", str(path)]) == 1
    err = capsys.readouterr().err
    assert re.search("steerable-sr: error: .*" + message, err) and "Traceback" not in err
    assert not save_dir.exists()


@pytest.mark.parametrize("fault", ["nan", "truncated"])
def test_evaluate_on_bad_data_fails_with_one_line(work, cnn_run, bad_data, capsys, fault):
    path, message = bad_data[fault]
    out = work / f"report_{fault}"
    assert main(["evaluate", str(cnn_run / "checkpoints" / "last.ckpt"), "--data", str(path), "--out", str(out)]) == 1
    assert re.search("steerable-sr: error: .*" + message, capsys.readouterr().err)
    assert not out.exists()


def test_diverging_fit_exits_1_and_leaves_no_run_directory(work, capsys):
    save_dir = work / "diverged"
    rc = main(["fit", *_common(work, save_dir, "--model.kind", "cnn", "--model.model_overrides", '{"hidden": 2}',
                               "--model.lr", "1e30")])
    assert rc == 1
    assert "steerable-sr: error: non-finite loss at training step 1" in capsys.readouterr().err
    assert not save_dir.exists()


def test_failed_fit_keeps_a_log_root_that_existed(work):
    save_dir = work / "existing_root"
    (save_dir / "default").mkdir(parents=True)
    assert main(["fit", *_common(work, save_dir), "--data.path", str(work / "nan.h5")]) == 1
    assert sorted(p.name for p in save_dir.iterdir()) == ["default"] and not any((save_dir / "default").iterdir())


def test_predict_refuses_a_tensor_with_nan(work, cnn_run, capsys):
    d = work / "nan_predict"
    d.mkdir()
    x = torch.zeros(5, 3, 4, 4, 4)
    x[2, 0, 1, 1, 1] = float("inf")
    torch.save(x, d / "x.pt")
    assert main(["predict", str(cnn_run / "checkpoints" / "last.ckpt"), str(d / "x.pt"), str(d / "y.pt")]) == 1
    assert "x.pt: 1 NaN or Inf value(s) (the first at index (2, 0, 1, 1, 1))" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == ["x.pt"]


def test_predict_shape_error_shows_the_accepted_tensor_shapes(work, cnn_run, capsys):
    torch.save(torch.zeros(2, 6, 4, 4, 4), work / "six_channels.pt")
    rc = main(["predict", str(cnn_run / "checkpoints" / "last.ckpt"), str(work / "six_channels.pt"),
               str(work / "six_channels_out.pt")])
    assert rc == 1
    assert ("input of shape (2, 6, 4, 4, 4): expected (T, 3, n, n, n) frames, (B, 3*frames, n, n, n) windows or "
            "one (3*frames, n, n, n) window, 3*frames = 9 for this model") in capsys.readouterr().err


def test_predict_never_overwrites_its_input(work, cnn_run, capsys):
    from steerable_sr.data.dataset import downsample, load_generated

    d = work / "same_file"
    d.mkdir()
    torch.save(downsample(load_generated(work / "tiny.h5")["velocity"][:3]), d / "lr.pt")
    before = (d / "lr.pt").read_bytes()
    rc = main(["predict", str(cnn_run / "checkpoints" / "last.ckpt"), str(d / "lr.pt"), str(d / "lr.pt"),
               "--overwrite"])
    assert rc == 1
    assert "is the input file" in capsys.readouterr().err
    assert (d / "lr.pt").read_bytes() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("model", ["last.ckpt", "export.pt"])
def test_cuda_device_without_a_gpu_is_one_line(work, cnn_run, capsys, model):
    ckpt = cnn_run / "checkpoints" / "last.ckpt"
    if model == "export.pt" and not (work / "export.pt").exists():
        assert main(["export", str(ckpt), str(work / "export.pt")]) == 0
    path = ckpt if model == "last.ckpt" else work / "export.pt"
    rc = main(["predict", str(path), str(work / "tiny.h5"), str(work / "cuda.h5"), "--device", "cuda"])
    assert rc == 1
    assert capsys.readouterr().err == ("steerable-sr: error: device 'cuda': CUDA is not available on this machine; "
                                       "use --device cpu\n")


def test_unknown_device_name_is_one_line(work, cnn_run, capsys):
    rc = main(["evaluate", str(cnn_run / "checkpoints" / "last.ckpt"), "--out", str(work / "r_dev"),
               "--device", "gpu7"])
    assert rc == 1
    assert capsys.readouterr().err == "steerable-sr: error: unknown device 'gpu7'; accepted: cpu, cuda, cuda:N, mps\n"


def test_checkpoint_mismatch_is_refused_when_the_request_equals_the_default(work, cnn_run, capsys):
    rc = main(["test", *_common(work, work / "bad_default"), "--model.kind", "rsteer",
               "--ckpt_path", str(cnn_run / "checkpoints" / "last.ckpt")])
    assert rc == 1
    assert "kind: checkpoint has 'cnn', the config asks for 'rsteer'" in capsys.readouterr().err


def test_yaml_syntax_error_names_the_file(work, capsys):
    (work / "broken.yaml").write_text("model:\n  kind: [cnn\n")
    rc = main(["fit", *_common(work, work / "bad_yaml"), "--config", str(work / "broken.yaml")])
    assert rc == 1
    assert re.search(r"steerable-sr: error: .*broken.yaml: not valid YAML at line 3, column 1",
                     capsys.readouterr().err)


@pytest.fixture(scope="module")
def cnn_report(work, cnn_run):
    out = work / "cnn_report"
    assert main(["evaluate", str(cnn_run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    return out


def test_evaluate_overwrite_replaces_only_the_report_files(work, cnn_run, cnn_report):
    (cnn_report / "notes.txt").write_text("mine")
    (cnn_report / "symmetry.md").write_text("from an earlier report of a relaxed model")
    (cnn_report / "metrics.md").write_text("stale")
    assert main(["evaluate", str(cnn_run / "checkpoints" / "last.ckpt"), "--out", str(cnn_report), "--overwrite"]) == 0
    assert sorted(p.name for p in cnn_report.iterdir()) == ["metrics.json", "metrics.md", "notes.txt", "slice.png",
                                                            "spectra.png"]
    assert (cnn_report / "notes.txt").read_text() == "mine" and "| MAE |" in (cnn_report / "metrics.md").read_text()


@pytest.mark.parametrize("target", ["folder", "file"])
def test_evaluate_overwrite_refuses_what_is_not_a_report(work, cnn_run, capsys, target):
    d = work / f"not_a_report_{target}"
    d.mkdir()
    (d / "data.txt").write_text("mine")
    out = d if target == "folder" else d / "data.txt"
    rc = main(["evaluate", str(cnn_run / "checkpoints" / "last.ckpt"), "--out", str(out), "--overwrite"])
    assert rc == 1
    assert ("is not a report directory" if target == "folder" else "is a file") in capsys.readouterr().err
    assert [(p.name, p.read_text()) for p in d.iterdir()] == [("data.txt", "mine")]


def test_commands_print_no_joblib_lines(work):
    proc = subprocess.run(_cli_cmd() + ["info", "--kind", "gcnn", "--input-size", "4"], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters" in proc.stdout and "[Memory]" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# A checkpoint is data: no command runs code from one (steerable_sr.checkpoint)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evil(work, cnn_run, code_in_pickle):
    """A genuine checkpoint plus one entry whose unpickling would create ``evil/created``."""
    d = work / "evil"
    d.mkdir()
    checkpoint = read_checkpoint(cnn_run / "checkpoints" / "last.ckpt")
    checkpoint["payload"] = code_in_pickle(d / "created")
    torch.save(checkpoint, d / "evil.ckpt")
    torch.save(torch.zeros(3, 3, 4, 4, 4), d / "frames.pt")
    return d


@pytest.mark.parametrize("command", ["fit", "validate", "test", "evaluate", "export", "predict", "info"])
def test_no_command_runs_code_from_a_checkpoint(work, evil, capsys, command):
    ckpt, out = str(evil / "evil.ckpt"), evil / f"out_{command}"
    argv = {"evaluate": ["evaluate", ckpt, "--data", str(work / "tiny.h5"), "--out", str(out)],
            "export": ["export", ckpt, str(out) + ".pt"],
            "predict": ["predict", ckpt, str(evil / "frames.pt"), str(out) + ".pt"],
            "info": ["info", "--ckpt", ckpt]}.get(command, [command, *_common(work, out), "--ckpt_path", ckpt])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"steerable-sr: error: {ckpt}: refused: the file holds io.open")
    assert err.rstrip().endswith("pass --trust-checkpoint")
    assert sorted(p.name for p in evil.iterdir()) == ["evil.ckpt", "frames.pt"]


def test_trust_checkpoint_reads_a_file_beyond_data_with_a_warning(work, cnn_run, capsys):
    import datetime

    checkpoint = read_checkpoint(cnn_run / "checkpoints" / "last.ckpt")
    checkpoint["written"] = datetime.date(2024, 7, 1)  # harmless, but not data
    path = work / "dated.ckpt"
    torch.save(checkpoint, path)
    assert main(["info", "--ckpt", str(path)]) == 1
    assert "refused: the file holds datetime.date" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="dated.ckpt: read with the full unpickler"):
        assert main(["info", "--ckpt", str(path), "--trust-checkpoint"]) == 0
    assert "parameters" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Outputs checked before any work; options that would be ignored are refused; one-line errors
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unwritable(work):
    """Output folders that cannot take a file: under a regular file, in /proc, and (not as root, who
    writes anywhere) a read-only folder."""
    (work / "afile").write_text("a regular file")
    folders = {"parent_is_a_file": work / "afile" / "sub", "proc": Path("/proc/steerable_sr_test")}
    if os.geteuid() != 0:
        (work / "read_only").mkdir()
        (work / "read_only").chmod(0o555)
        folders["read_only"] = work / "read_only"
    return folders


@pytest.mark.parametrize("where", ["parent_is_a_file", "proc", "read_only"])
@pytest.mark.parametrize("command", ["predict", "export", "evaluate", "generate", "fit", "compare", "discover"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(work, cnn_run, unwritable, capsys, command,
                                                                     where):
    if where not in unwritable:
        pytest.skip("root writes into read-only folders")
    ckpt, out = str(cnn_run / "checkpoints" / "last.ckpt"), unwritable[where] / "out"
    lr = work / "lr_frames.pt"
    torch.save(torch.zeros(3, 3, 4, 4, 4), lr)
    argv = {"predict": ["predict", ckpt, str(lr), f"{out}.pt"],
            "export": ["export", ckpt, f"{out}.pt"],
            "evaluate": ["evaluate", ckpt, "--out", str(out)],
            "generate": ["generate", f"{out}.h5", "--n", "8", "--frames", "13", "--no-progress"],
            "fit": ["fit", *_common(work, out)],
            "compare": ["compare", "--data", str(work / "tiny.h5"), "--out", str(out)],
            "discover": ["discover", str(work / "tiny.h5"), "--out", str(out)]}[command]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"steerable-sr: error: cannot write {out}"), err
    assert ".tmp" not in err
    if where == "parent_is_a_file":
        assert "afile is a file, not a folder" in err
        assert (work / "afile").read_text() == "a regular file"


@pytest.mark.parametrize("option, message", [
    (["--model.preset", "paper"], "preset: checkpoint has 'small', the config asks for 'paper'"),
    (["--model.model_overrides", '{"hidden": 3}'], "model_overrides: checkpoint has {'hidden': 2}, the config asks "
                                                  "for {'hidden': 3}"),
    (["--model.penalty_weight", "0.5"], "penalty_weight: checkpoint has 0.0001, the config asks for 0.5"),
])
def test_a_model_option_that_contradicts_the_checkpoint_is_refused(work, cnn_run, capsys, option, message):
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    assert main(["test", *_common(work, work / "contradicts"), *option, "--ckpt_path", ckpt]) == 1
    assert message in capsys.readouterr().err
    assert not (work / "contradicts").exists()


def test_model_options_that_agree_with_the_checkpoint_are_accepted(work, cnn_run):
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")
    assert main(["validate", *_common(work, work / "agrees"), "--model.kind", "cnn", "--model.model_overrides",
                 '{"hidden": 2}', "--model.preset", "small", "--ckpt_path", ckpt]) == 0


@pytest.mark.parametrize("option", [["--kind", "gcnn"], ["--preset", "paper"], ["--overrides", '{"hidden": 1}']])
def test_info_refuses_model_options_given_with_a_checkpoint(cnn_run, capsys, option):
    assert main(["info", "--ckpt", str(cnn_run / "checkpoints" / "last.ckpt"), *option]) == 2
    assert f"{option[0]} describes a model; with --ckpt the model is the checkpoint's" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--trainer.max_epochs", "0"], "--trainer.max_epochs 0 trains nothing"),
    (["--trainer.max_steps", "0"], "--trainer.max_steps 0 trains nothing"),
    (["--trainer.limit_train_batches", "0"], "--trainer.limit_train_batches 0 trains nothing"),
])
def test_a_fit_that_would_train_nothing_is_refused(work, capsys, option, message):
    assert main(["fit", *_common(work, work / "nothing"), *option]) == 1
    assert message in capsys.readouterr().err
    assert not (work / "nothing").exists()


def test_resuming_a_checkpoint_that_has_trained_every_epoch_asked_is_refused(work, cnn_run, capsys):
    ckpt = str(cnn_run / "checkpoints" / "last.ckpt")  # 2 epochs
    argv = ["fit", *_common(work, work / "resumed_nothing"), "--trainer.max_epochs", "2", "--ckpt_path", ckpt]
    assert main(argv) == 1
    assert "has trained 2 epochs; --trainer.max_epochs 2 trains nothing more" in capsys.readouterr().err
    assert not (work / "resumed_nothing").exists()


@pytest.mark.parametrize("content, message", [
    ("model:\n  kindd: cnn\n", r"typo.yaml: model.kindd: not an option of `steerable-sr fit` \(did you mean "
                               r"model.kind\?\)"),
    ("trainer:\n  max_epoch: 3\n", r"typo.yaml: trainer.max_epoch: not an option of `steerable-sr fit` \(did you "
                                   r"mean trainer.max_epochs\?\)"),
    ("model:\n  lr: fast\n", r"typo.yaml: model.lr: expected a float, got 'fast'"),
])
def test_a_config_typo_is_one_line_naming_the_file_and_the_key(work, capsys, content, message):
    (work / "typo.yaml").write_text(content)
    assert main(["fit", *_common(work, work / "typo_run"), "--config", str(work / "typo.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search("steerable-sr: error: .*" + message, err), err
    assert not (work / "typo_run").exists()


def test_an_option_typo_is_one_line(work, capsys):
    assert main(["fit", *_common(work, work / "typo_option"), "--model.kindd", "cnn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--model.kindd: not an option of `steerable-sr fit` (did you mean model.kind?)" in err


def test_a_truncated_export_is_reported_as_such(work, cnn_run, capsys):
    d = work / "truncated_export"
    d.mkdir()
    assert main(["export", str(cnn_run / "checkpoints" / "last.ckpt"), str(d / "full.pt")]) == 0
    data = (d / "full.pt").read_bytes()
    (d / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save(torch.zeros(3, 3, 4, 4, 4), d / "lr.pt")
    assert main(["predict", str(d / "cut.pt"), str(d / "lr.pt"), str(d / "y.pt")]) == 1
    assert "cut.pt: truncated or damaged file: the beginning of an exported module (TorchScript)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("command", [["info"], ["compare", "--out", "unused"]])
def test_bad_overrides_json_names_the_option(capsys, command):
    assert main([*command, "--overrides", "{hidden: 2}"]) == 2
    assert "argument --overrides: not valid JSON" in capsys.readouterr().err


def test_generate_onto_an_existing_file_suggests_the_option(work, capsys):
    (work / "existing.h5").write_text("keep me")
    assert main(["generate", str(work / "existing.h5"), "--n", "8", "--frames", "13", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "existing.h5 exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert (work / "existing.h5").read_text() == "keep me"


def test_training_prints_no_lightning_advertisement_or_deprecation(work):
    save_dir = work / "quiet"
    env = {k: v for k, v in _env().items() if k != "PYTHONWARNINGS"}
    argv = ["fit", *_common(work, save_dir, "--model.kind", "cnn", "--model.model_overrides", '{"hidden": 2}',
                            "--trainer.max_epochs", "1")]
    proc = subprocess.run(_cli_cmd() + argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "litlogger" not in output and "LeafSpec" not in output and "Warning" not in output, output
