"""The steerable-sr command line: fit/validate/test (LightningCLI), DDP, evaluate, export, predict, errors.

Tiny: a 16^3 generated dataset (4^3 -> 16^3), narrow models, two epochs of four steps.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

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
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(save_dir),
            *extra]


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
    state = torch.load(work / "resume_logs" / "default" / "version_0" / "checkpoints" / "last.ckpt",
                       weights_only=False)
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
    state = torch.load(ckpt, weights_only=False)
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


def test_export_reloads_in_a_fresh_interpreter_without_escnn(work, relaxed_run):
    ckpt = str(relaxed_run / "checkpoints" / "last.ckpt")
    out = work / "export" / "rsteer.pt"
    assert main(["export", ckpt, str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["kind"] == "rsteer" and meta["frames"] == 3 and meta["upscale"] == 4 and meta["input_size"] == 4
    from steerable_sr.training import load_module

    module = load_module(ckpt)
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4, 4, 4)
    with torch.no_grad():
        expected = module(x)
    torch.save(x, work / "export" / "x.pt")
    torch.save(expected, work / "export" / "y.pt")
    script = textwrap.dedent("""
        import sys
        sys.modules["escnn"] = None          # any import of escnn (or of this package) now fails
        sys.modules["steerable_sr"] = None
        import torch
        extra = {"metadata.json": ""}
        m = torch.jit.load(sys.argv[1], _extra_files=extra)
        x, y = torch.load(sys.argv[2]), torch.load(sys.argv[3])
        with torch.no_grad():
            err = (m(x) - y).abs().max().item()
        assert b'"kind": "rsteer"' in extra["metadata.json"]
        print("max abs diff", err)
        assert err < 1e-5, err
        assert not any(k.startswith("escnn") and sys.modules[k] is not None for k in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(work / "export" / "x.pt"),
                           str(work / "export" / "y.pt")], cwd=work / "export", env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max abs diff" in proc.stdout


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
